// Receipt verification in the browser (WebCrypto), the same steps as
// gateway/ledger/receipt.py: nothing here trusts the server that served the page.
//   1 checkpoint: the C2SP signed note verifies with the gateway vkey (Ed25519), its origin is
//     the vkey's name, and its tree size is entry.size
//   2 ledger entry: its CBOR decodes, i == entry.index, and it is included in the checkpoint's
//     tree (RFC 6962 / 9162 inclusion proof, SHA-256)
//   3 batch: reading.size == the entry's n, and the reading is included in the entry's root
//   4 reading: COSE_Sign1 (tag 18, ES256, kid == dev), dev and seq are the receipt's
//   5 device signature: ES256 over the Sig_structure with the device key (P-256), low-S
"use strict";

class StepError extends Error {
  constructor(step, message) { super(message); this.step = step; }
}
const STEPS = ["checkpoint signature", "ledger entry in the checkpoint's tree",
               "reading in the batch tree", "reading message", "device signature"];
const P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551n;
const enc = new TextEncoder();

function fromHex(s, what) {
  if (typeof s !== "string" || s.length % 2 || /[^0-9a-f]/.test(s))
    throw new Error(what + " is not lowercase hex");
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(2 * i, 2), 16);
  return out;
}
function toHex(b) { return Array.from(b, x => x.toString(16).padStart(2, "0")).join(""); }
function fromB64(s, what) {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4) throw new Error(what + " is not base64");
  const bin = atob(s);
  return Uint8Array.from(bin, c => c.charCodeAt(0));
}
function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let k = 0;
  for (const p of parts) { out.set(p, k); k += p.length; }
  return out;
}
function equal(a, b) { return a.length === b.length && a.every((x, i) => x === b[i]); }
async function sha256(data) { return new Uint8Array(await crypto.subtle.digest("SHA-256", data)); }

// --- CBOR (RFC 8949), decoding only what receipts hold; maps become Map objects
function cborDecode(buf) {
  let pos = 0;
  function need(n) { if (pos + n > buf.length) throw new Error("CBOR is truncated"); }
  function uint(info) {
    if (info < 24) return info;
    const n = {24: 1, 25: 2, 26: 4, 27: 8}[info];
    if (!n) throw new Error("CBOR uses an indefinite or reserved length");
    need(n);
    let v = 0n;
    for (let i = 0; i < n; i++) v = (v << 8n) | BigInt(buf[pos++]);
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  }
  function item(depth) {
    if (depth > 16) throw new Error("CBOR nests too deep");
    need(1);
    const ib = buf[pos++], major = ib >> 5, info = ib & 31;
    if (major === 7) {
      if (info === 20) return false;
      if (info === 21) return true;
      if (info === 22) return null;
      const view = new DataView(buf.buffer, buf.byteOffset);
      if (info === 25) { need(2); const h = view.getUint16(pos); pos += 2; return half(h); }
      if (info === 26) { need(4); const v = view.getFloat32(pos); pos += 4; return v; }
      if (info === 27) { need(8); const v = view.getFloat64(pos); pos += 8; return v; }
      throw new Error("CBOR simple value " + info + " is not allowed");
    }
    const n = uint(info);
    if (typeof n !== "number" && major !== 0 && major !== 1) throw new Error("CBOR length too large");
    switch (major) {
      case 0: return n;
      case 1: return typeof n === "number" ? -1 - n : -1n - n;
      case 2: need(n); pos += n; return buf.slice(pos - n, pos);
      case 3: need(n); pos += n; return new TextDecoder("utf-8", {fatal: true}).decode(buf.slice(pos - n, pos));
      case 4: { const a = []; for (let i = 0; i < n; i++) a.push(item(depth + 1)); return a; }
      case 5: {
        const m = new Map();
        for (let i = 0; i < n; i++) {
          const k = item(depth + 1);
          if (m.has(k)) throw new Error("CBOR map has a duplicate key");
          m.set(k, item(depth + 1));
        }
        return m;
      }
      case 6: return {tag: n, value: item(depth + 1)};
    }
    throw new Error("bad CBOR");
  }
  function half(h) {
    const e = (h >> 10) & 31, f = h & 1023, s = h & 32768 ? -1 : 1;
    if (e === 0) return s * f * 2 ** -24;
    if (e === 31) return f ? NaN : s * Infinity;
    return s * (1 + f / 1024) * 2 ** (e - 15);
  }
  const v = item(0);
  if (pos !== buf.length) throw new Error("CBOR has trailing bytes");
  return v;
}
function cborHead(major, n) {
  if (n < 24) return Uint8Array.of((major << 5) | n);
  if (n < 256) return Uint8Array.of((major << 5) | 24, n);
  if (n < 65536) return Uint8Array.of((major << 5) | 25, n >> 8, n & 255);
  return Uint8Array.of((major << 5) | 26, (n >>> 24) & 255, (n >> 16) & 255, (n >> 8) & 255, n & 255);
}

// --- RFC 6962 hashing and the RFC 9162 inclusion check
async function leafHash(data) { return sha256(concat(Uint8Array.of(0), data)); }
async function nodeHash(l, r) { return sha256(concat(Uint8Array.of(1), l, r)); }
async function verifyInclusion(leaf, index, size, proof, root) {
  if (!Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0 || index >= size)
    throw new Error(`index ${index} is not inside a tree of size ${size}`);
  let fn = index, sn = size - 1, r = leaf;
  for (const p of proof) {
    if (sn === 0) throw new Error("the proof is longer than the tree is deep");
    if (fn % 2 === 1 || fn === sn) {
      r = await nodeHash(p, r);
      if (fn % 2 === 0) while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
    } else {
      r = await nodeHash(r, p);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  if (sn !== 0) throw new Error("the proof is shorter than the tree is deep");
  if (!equal(r, root)) throw new Error("the proof leads to another root hash");
}
function proofOf(part, where) {
  if (!Array.isArray(part.proof) || part.proof.length > 64) throw new Error(where + "proof is not a list of hashes");
  return part.proof.map((h, k) => {
    const b = fromHex(h, `${where}proof[${k}]`);
    if (b.length !== 32) throw new Error(`${where}proof[${k}] is not 32 bytes`);
    return b;
  });
}

// --- C2SP signed note and checkpoint, Ed25519
async function parseVkey(vkey) {
  const parts = vkey.trim().split("+");
  if (parts.length < 3) throw new Error("the vkey has the form <name>+<8 hex digits>+<base64 key>");
  const name = parts[0], kid = parts[1], blob = fromB64(parts.slice(2).join("+"), "the vkey's key");
  if (!/^[0-9a-f]{8}$/.test(kid)) throw new Error("the vkey's key ID is not 8 hex digits");
  if (blob.length !== 33 || blob[0] !== 1) throw new Error("the vkey is not an Ed25519 key");
  const pub = blob.slice(1);
  const want = (await sha256(concat(enc.encode(name + "\n"), Uint8Array.of(1), pub))).slice(0, 4);
  if (toHex(want) !== kid) throw new Error("the vkey's key ID does not match its name and key");
  const id = toHex((await sha256(pub)).slice(0, 8));
  if (name !== "iot-anchor/" + id) throw new Error(`vkey name ${name} does not match its key`);
  return {name, kid: fromHex(kid, "key ID"), pub};
}
async function verifyCheckpoint(note, vkey) {
  const k = await parseVkey(vkey);
  if (typeof note !== "string" || !note.endsWith("\n")) throw new Error("the checkpoint note does not end with a newline");
  const cut = note.lastIndexOf("\n\n");
  if (cut < 0) throw new Error("the checkpoint note has no signature block");
  const text = note.slice(0, cut + 1), lines = note.slice(cut + 2, -1).split("\n");
  const key = await crypto.subtle.importKey("raw", k.pub, {name: "Ed25519"}, false, ["verify"]);
  let found = false;
  for (const line of lines) {
    if (!line.startsWith("\u2014 ")) throw new Error("malformed signature line");
    const [sname, b64] = line.slice(2).split(" ");
    const blob = fromB64(b64 || "", "a signature");
    if (sname !== k.name || !equal(blob.slice(0, 4), k.kid)) continue;  // a witness's
    if (blob.length !== 68) throw new Error("the gateway's signature is not 64 bytes");
    if (!await crypto.subtle.verify({name: "Ed25519"}, key, blob.slice(4), enc.encode(text)))
      throw new Error("the gateway's signature does not match the checkpoint text");
    found = true;
  }
  if (!found) throw new Error("the checkpoint carries no signature by this vkey");
  const body = text.slice(0, -1).split("\n");
  if (body.length < 3 || !/^(0|[1-9][0-9]*)$/.test(body[1])) throw new Error("the checkpoint text is malformed");
  if (body[0] !== k.name) throw new Error(`checkpoint origin ${body[0]} is not the vkey's name ${k.name}`);
  const root = fromB64(body[2], "the checkpoint root");
  if (root.length !== 32) throw new Error("the checkpoint root is not 32 bytes");
  return {size: Number(body[1]), root, signatures: lines.length};
}

// --- COSE_Sign1 / ES256
function decodeCose(bytes) {
  const m = cborDecode(bytes);
  if (!m || m.tag !== 18) throw new Error("the reading is not a COSE_Sign1 (tag 18)");
  const a = m.value;
  if (!Array.isArray(a) || a.length !== 4) throw new Error("COSE_Sign1 is not an array of four");
  const [prot, unprot, payload, sig] = a;
  if (!(prot instanceof Uint8Array) || !(payload instanceof Uint8Array) || !(sig instanceof Uint8Array))
    throw new Error("COSE_Sign1 elements have the wrong types");
  const h = cborDecode(prot);
  if (!(h instanceof Map) || h.size !== 2 || h.get(1) !== -7 || typeof h.get(4) !== "object")
    throw new Error("the protected header is not {1: -7 (ES256), 4: kid}");
  if (!(unprot instanceof Map) || unprot.size) throw new Error("the unprotected header is not empty");
  if (sig.length !== 64) throw new Error("the signature is not 64 bytes");
  const kid = new TextDecoder("utf-8", {fatal: true}).decode(h.get(4));
  const p = cborDecode(payload);
  if (!(p instanceof Map)) throw new Error("the payload is not a map");
  if (p.get("dev") !== kid) throw new Error("the payload's dev is not the kid");
  return {prot, payload, sig, dev: p.get("dev"), seq: p.get("seq"), data: p.get("data")};
}
async function verifyES256(c, keyHex) {
  const raw = fromHex(keyHex.trim().toLowerCase(), "the device key");
  if (raw.length !== 65 || raw[0] !== 4) throw new Error("the device key is not a 65-byte SEC1 point (04 || x || y)");
  const s = BigInt("0x" + toHex(c.sig.slice(32)));
  if (s > P256_N / 2n) throw new Error("the signature is not low-S");
  const tbs = concat(Uint8Array.of(0x84), cborHead(3, 10), enc.encode("Signature1"),
                     cborHead(2, c.prot.length), c.prot, Uint8Array.of(0x40),
                     cborHead(2, c.payload.length), c.payload);
  const key = await crypto.subtle.importKey("raw", raw, {name: "ECDSA", namedCurve: "P-256"}, false, ["verify"]);
  if (!await crypto.subtle.verify({name: "ECDSA", hash: "SHA-256"}, key, c.sig, tbs))
    throw new Error("the ES256 signature does not verify with this device key");
}

async function step(n, fn) {
  try { return await fn(); } catch (e) { throw new StepError(n, e.message || String(e)); }
}

// Returns {ok: true, steps, ...} or {ok: false, step, stepName, reason, steps}.
async function verifyReceipt(text, vkey, deviceKey) {
  const done = [];
  try {
    const r = await step(0, async () => {
      const o = JSON.parse(text);
      if (!o || typeof o !== "object" || o.version !== 1) throw new Error("not a version 1 receipt");
      return o;
    }).catch(e => { throw new StepError(0, "the receipt is not JSON of version 1: " + e.message); });
    if (!vkey.trim()) throw new StepError(1, "enter the gateway's vkey");
    const cp = await step(1, async () => {
      const v = await verifyCheckpoint(r.checkpoint, vkey);
      if (!r.entry || r.entry.size !== v.size) throw new Error(`entry.size ${r.entry && r.entry.size} is not the checkpoint's tree size ${v.size}`);
      return v;
    });
    done.push(1);
    const entry = await step(2, async () => {
      const bytes = fromHex(r.entry.cbor, "entry.cbor");
      const e = cborDecode(bytes);
      if (!(e instanceof Map)) throw new Error("the entry is not a CBOR map");
      if (e.get("i") !== r.entry.index) throw new Error(`the entry says i=${e.get("i")} but entry.index is ${r.entry.index}`);
      await verifyInclusion(await leafHash(bytes), r.entry.index, r.entry.size, proofOf(r.entry, "entry."), cp.root);
      return e;
    });
    done.push(2);
    if (!("reading" in r)) {
      if (r.kind !== entry.get("kind")) throw new StepError(2, `the receipt says kind ${r.kind}, the entry is ${entry.get("kind")}`);
      return {ok: true, steps: done, kind: r.kind, entry: r.entry.index, size: cp.size};
    }
    await step(3, async () => {
      if (entry.get("kind") !== "batch") throw new Error(`entry ${r.entry.index} is a ${entry.get("kind")} entry, not a batch`);
      if (r.reading.size !== entry.get("n")) throw new Error(`reading.size ${r.reading.size} is not the batch size ${entry.get("n")}`);
      const cose = fromHex(r.reading.cose, "reading.cose");
      await verifyInclusion(await leafHash(cose), r.reading.index, r.reading.size, proofOf(r.reading, "reading."), entry.get("root"));
    });
    done.push(3);
    const c = await step(4, async () => {
      const c = decodeCose(fromHex(r.reading.cose, "reading.cose"));
      if (c.dev !== r.device || c.seq !== r.seq) throw new Error(`the receipt names ${r.device} seq ${r.seq}, the reading is ${c.dev} seq ${c.seq}`);
      return c;
    });
    done.push(4);
    let signed = false;
    if (deviceKey && deviceKey.trim()) {
      await step(5, () => verifyES256(c, deviceKey));
      done.push(5);
      signed = true;
    }
    return {ok: true, steps: done, device: c.dev, seq: c.seq, data: c.data, entry: r.entry.index,
            size: cp.size, signed};
  } catch (e) {
    if (!(e instanceof StepError)) throw e;
    return {ok: false, step: e.step, stepName: e.step ? STEPS[e.step - 1] : "receipt format",
            reason: e.message, steps: done};
  }
}
