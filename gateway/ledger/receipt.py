"""Receipts: everything needed to check, offline, that one reading is anchored in the ledger.

Format (JSON object, version 1). All byte strings are lowercase hex; proofs are lists of
32-byte hashes in RFC 9162 order (leaf to root)::

    {
      "version": 1,
      "device": "<device id>",                 # informational: must equal the payload's dev
      "seq": 17,                               # informational: must equal the payload's seq
      "reading": {
        "cose":  "<hex of the reading's COSE_Sign1 message, exactly as received>",
        "index": 5,                            # the reading's leaf index in its batch tree
        "size":  4096,                         # number of readings in the batch
        "proof": ["<hex>", ...]                # inclusion proof in the batch tree
      },
      "entry": {
        "cbor":  "<hex of the batch's ledger entry bytes>",
        "index": 12,                           # the entry's index i in the ledger tree
        "size":  40,                           # ledger tree size = the checkpoint's size
        "proof": ["<hex>", ...]                # inclusion proof in the ledger tree
      },
      "checkpoint": "<the gateway's signed checkpoint note for that tree size>"
    }

Verification (`verify_receipt`), each failure a ReceiptError with a one-line reason:
1. the checkpoint note is signed by the gateway vkey, its origin is the vkey's name and matches
   the vkey's key (``iot-anchor/<gateway key id>``, see gateway.ledger.note), and its tree
   size equals entry.size;
2. the entry decodes strictly (gateway.ledger.entry), is a batch entry, its ``i`` equals
   entry.index, and leaf_hash(entry bytes) with entry.proof leads to the checkpoint's root;
3. leaf_hash(COSE bytes) with reading.proof at reading.index leads to the entry's ``root``, and
   reading.size equals the entry's ``n``;
4. the COSE message decodes strictly (tag 18, four elements, protected header exactly
   {1: -7, 4: kid}, empty unprotected map, 64-byte signature, payload a map whose dev == kid
   and == "device", whose seq == "seq");
5. given the device key (65-byte SEC1 point), the ES256 signature is valid and low-S.
Cost: one Ed25519 and one ECDSA verification plus about 2·log2(n) hashes, well under 2 ms.

The receipt of a ledger entry of any kind (`iot-anchor receipt --entry N`: an action, a rule
set, a dataset, a device change) is the same object without "device", "seq" and "reading",
with the entry's kind::

    {"version": 1, "kind": "<entry kind>", "entry": {...as above}, "checkpoint": "..."}

`verify_entry_receipt` checks steps 1 and 2 for it (any kind) and that "kind" is the entry's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from gateway.errors import AnchorError, ConfigError, ReceiptError
from gateway.ledger import merkle, note
from gateway.ledger.entry import BatchEntry, Entry, EntryError, decode_entry
from gateway.wire.es256 import check_signature, load_public_key

__all__ = [
    "RECEIPT_VERSION",
    "VerifiedReceipt",
    "build_receipt",
    "receipt_to_json",
    "parse_receipt",
    "verify_receipt",
    "build_entry_receipt",
    "verify_entry_receipt",
    "VerifiedEntry",
]

RECEIPT_VERSION = 1
MAX_COSE_SIZE = 64 * 1024  # a receipt may come from anywhere: bound what we decode
_MAX_PROOF = 64
_HINT = (
    "the receipt does not prove this reading: it was altered, or comes from another gateway; "
    "ask the gateway for a fresh one with 'iot-anchor receipt DEVICE SEQ'"
)


def _fail(what: str, hint: str = _HINT) -> ReceiptError:
    """A ReceiptError with the default hint (what to do next) unless one is given."""
    return ReceiptError(what, hint)


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    """What a verified receipt proves (returned by `verify_receipt`)."""

    device: str
    seq: int
    entry_index: int
    tree_size: int
    root: bytes
    device_signature_checked: bool


def build_receipt(
    *,
    cose: bytes,
    reading_index: int,
    batch_size: int,
    reading_proof: Sequence[bytes],
    entry: bytes,
    entry_index: int,
    tree_size: int,
    entry_proof: Sequence[bytes],
    checkpoint: str,
) -> dict[str, Any]:
    """Assemble a version-1 receipt dict from stored data (no verification, no I/O).

    `device` and `seq` are read from the COSE payload; raises ReceiptError if it cannot be
    decoded (the store would hold a message that the pipeline never accepted).
    """
    dev, seq = _payload_ident(bytes(cose))
    return {
        "version": RECEIPT_VERSION,
        "device": dev,
        "seq": seq,
        "reading": {
            "cose": bytes(cose).hex(),
            "index": reading_index,
            "size": batch_size,
            "proof": [bytes(h).hex() for h in reading_proof],
        },
        "entry": _entry_part(entry, entry_index, tree_size, entry_proof),
        "checkpoint": checkpoint,
    }


def _entry_part(entry: bytes, index: int, size: int, proof: Sequence[bytes]) -> dict[str, Any]:
    return {"cbor": bytes(entry).hex(), "index": index, "size": size,
            "proof": [bytes(h).hex() for h in proof]}


def receipt_to_json(receipt: Mapping[str, Any]) -> str:
    """The receipt as indented JSON text ending in a newline."""
    return json.dumps(receipt, indent=2) + "\n"


def parse_receipt(text: str | bytes) -> dict[str, Any]:
    """JSON text to a receipt dict; raises ReceiptError if it is not a JSON object."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise _fail(
            f"receipt is not valid JSON ({e})", "pass the file written by 'iot-anchor receipt'"
        ) from None
    if not isinstance(obj, dict):
        raise _fail(
            "receipt is not a JSON object", "pass the file written by 'iot-anchor receipt'"
        )
    return obj


# --------------------------------------------------------------------------- field access


def _get(obj: Mapping[str, Any], key: str, typ: type, where: str) -> Any:
    if not isinstance(obj, Mapping) or key not in obj:
        raise _fail(f"receipt field {where}{key} is missing", "the receipt is incomplete")
    v = obj[key]
    if typ is int:
        if type(v) is not int or v < 0:
            raise _fail(f"receipt field {where}{key} must be a non-negative integer")
    elif not isinstance(v, typ):
        kinds: dict[type, str] = {dict: "JSON object", list: "list", str: "string"}
        kind = kinds.get(typ, typ.__name__)
        raise _fail(f"receipt field {where}{key} must be a {kind}")
    return v


def _hex(obj: Mapping[str, Any], key: str, where: str) -> bytes:
    s = _get(obj, key, str, where)
    try:
        return bytes.fromhex(s)
    except ValueError:
        raise _fail(f"receipt field {where}{key} is not hex") from None


def _proof(obj: Mapping[str, Any], where: str) -> list[bytes]:
    items = _get(obj, "proof", list, where)
    if len(items) > _MAX_PROOF:
        raise _fail(f"receipt field {where}proof has {len(items)} elements (max 64)")
    out = []
    for i, s in enumerate(items):
        if not isinstance(s, str) or len(s) != 64:
            raise _fail(f"receipt field {where}proof[{i}] is not a 64-digit hex hash")
        try:
            out.append(bytes.fromhex(s))
        except ValueError:
            raise _fail(f"receipt field {where}proof[{i}] is not hex") from None
    return out


# --------------------------------------------------------------------------- COSE (strict)


@dataclass(frozen=True, slots=True)
class _Cose:
    protected: bytes
    payload: bytes
    signature: bytes
    kid: bytes
    dev: str
    seq: int


def _decode_cose(data: bytes) -> _Cose:
    """Strict COSE_Sign1/ES256 decoding of one reading (the rules of the gateway pipeline)."""
    if len(data) > MAX_COSE_SIZE:
        raise _fail(f"reading is {len(data)} bytes, larger than {MAX_COSE_SIZE}")
    try:
        msg = cbor2.loads(data)
    except Exception as e:  # cbor2 raises several types on hostile input
        raise _fail(f"reading is not valid CBOR ({type(e).__name__})") from None
    if not isinstance(msg, cbor2.CBORTag) or msg.tag != 18:
        raise _fail("reading is not a COSE_Sign1 message (CBOR tag 18)")
    v = msg.value
    if not isinstance(v, list) or len(v) != 4:
        raise _fail("reading COSE_Sign1 does not have exactly four elements")
    protected, unprotected, payload, sig = v
    if not isinstance(protected, bytes) or not isinstance(payload, bytes):
        raise _fail("reading protected header or payload is not a byte string")
    if unprotected != {}:
        raise _fail("reading unprotected header is not empty")
    if not isinstance(sig, bytes) or len(sig) != 64:
        raise _fail("reading signature is not exactly 64 bytes")
    try:
        hdr = cbor2.loads(protected)
    except Exception:
        raise _fail("reading protected header is not valid CBOR") from None
    if not isinstance(hdr, dict) or set(hdr) != {1, 4} or hdr[1] != -7:
        raise _fail("reading protected header is not {1: -7 (ES256), 4: kid}")
    kid = hdr[4]
    if not isinstance(kid, bytes):
        raise _fail("reading kid is not a byte string")
    dev, seq = _payload_fields(payload)
    if dev.encode() != kid:
        raise _fail(f"reading payload dev {dev!r} is not the kid {kid!r}")
    return _Cose(protected, payload, sig, kid, dev, seq)


def _payload_fields(payload: bytes) -> tuple[str, int]:
    try:
        p = cbor2.loads(payload)
    except Exception:
        raise _fail("reading payload is not valid CBOR") from None
    if not isinstance(p, dict):
        raise _fail("reading payload is not a CBOR map")
    dev, seq = p.get("dev"), p.get("seq")
    if not isinstance(dev, str) or type(seq) is not int or seq < 0:
        raise _fail("reading payload lacks a text 'dev' or an unsigned 'seq'")
    return dev, seq


def _payload_ident(cose: bytes) -> tuple[str, int]:
    c = _decode_cose(cose)
    return c.dev, c.seq


_SIGNATURE_FAILURES = {
    "bad_signature_length": ("reading signature is not 64 bytes", _HINT),
    "high_s": ("reading signature is high-S, which the gateway never accepts", _HINT),
    "bad_signature": ("the device signature does not verify with the given device key",
                      "check that the key is the one registered for this device at the time"),
}


def _verify_es256(device_key: bytes, message: bytes, signature: bytes) -> None:
    """ES256 with the gateway's policy (gateway.wire.es256), as a ReceiptError."""
    try:
        pub = load_public_key(bytes(device_key))
    except ConfigError:
        raise _fail(
            "the device key is not a valid P-256 point",
            "pass the 65-byte uncompressed key as 130 hex digits",
        ) from None
    why = check_signature(pub, message, signature)
    if why is not None:
        raise _fail(*_SIGNATURE_FAILURES[why])


def _check_es256(c: _Cose, device_key: bytes) -> None:
    tbs = cbor2.dumps(["Signature1", c.protected, b"", c.payload])
    _verify_es256(device_key, tbs, c.signature)


# --------------------------------------------------------------------------- verify


def _proven_entry(ent: Mapping[str, Any], cp_text: str, gateway_vkey: str
                  ) -> tuple[Entry, note.Checkpoint]:
    """Steps 1-2: the checkpoint verifies with the gateway key, and the entry decodes strictly,
    names its index, and is in the checkpoint's tree."""
    try:
        cp = note.verify_checkpoint(cp_text, gateway_vkey)
    except AnchorError as e:
        raise _fail(f"checkpoint: {e.what}", e.hint) from None
    tree_size = _get(ent, "size", int, "entry.")
    if tree_size != cp.size:
        raise _fail(
            f"receipt entry.size {tree_size} is not the checkpoint's tree size {cp.size}"
        )
    entry_bytes = _hex(ent, "cbor", "entry.")
    entry_index = _get(ent, "index", int, "entry.")
    try:
        entry = decode_entry(entry_bytes)
    except EntryError as e:
        raise _fail(f"ledger entry: {e.what}", "the receipt was altered") from None
    if entry.i != entry_index:
        raise _fail(f"ledger entry says i={entry.i} but entry.index is {entry_index}")
    _included(entry_bytes, entry_index, tree_size, _proof(ent, "entry."), cp.root,
              "ledger entry not in the checkpoint")
    return entry, cp


def _included(data: bytes, index: int, size: int, proof: list[bytes], root: bytes,
              failure: str) -> None:
    try:
        merkle.verify_inclusion(merkle.leaf_hash(data), index, size, proof, root)
    except merkle.ProofError as e:
        raise _fail(f"{failure}: {e.what}") from None


def build_entry_receipt(*, entry: bytes, entry_index: int, tree_size: int,
                        entry_proof: Sequence[bytes], checkpoint: str) -> dict[str, Any]:
    """The receipt of one ledger entry of any kind (an action, a rule set, a dataset, ...):
    the version-1 format without "reading", "device" and "seq", with the entry's "kind"."""
    kind = decode_entry(bytes(entry)).kind
    return {
        "version": RECEIPT_VERSION,
        "kind": kind,
        "entry": _entry_part(entry, entry_index, tree_size, entry_proof),
        "checkpoint": checkpoint,
    }


def _check_envelope(receipt: Any) -> None:
    """A receipt is a JSON object of this module's RECEIPT_VERSION; raises ReceiptError."""
    if not isinstance(receipt, Mapping):
        raise _fail("receipt is not a JSON object")
    version = receipt.get("version")
    if version != RECEIPT_VERSION:
        raise _fail(
            f"receipt version {version!r} is not supported (expected {RECEIPT_VERSION})",
            "use an iot-anchor release that writes this version",
        )


@dataclass(frozen=True)
class VerifiedEntry:
    entry: Entry
    tree_size: int
    root: bytes


def verify_entry_receipt(receipt: Mapping[str, Any], gateway_vkey: str) -> VerifiedEntry:
    """Check the receipt of a ledger entry offline: the checkpoint's signature and the entry's
    inclusion in its tree (steps 1-2 of the module docstring), and that "kind" names the
    entry's kind. Raises ReceiptError on the first failure."""
    _check_envelope(receipt)
    entry, cp = _proven_entry(_get(receipt, "entry", dict, ""),
                              _get(receipt, "checkpoint", str, ""), gateway_vkey)
    kind = _get(receipt, "kind", str, "")
    if kind != entry.kind:
        raise _fail(f"receipt says kind {kind!r}, the entry is a {entry.kind} entry")
    return VerifiedEntry(entry, cp.size, cp.root)


def verify_receipt(
    receipt: Mapping[str, Any], gateway_vkey: str, device_key: bytes | None = None
) -> VerifiedReceipt:
    """Check a receipt offline (see the module doc for the steps).

    Raises ReceiptError with a one-line reason on the first failure; returns what was proven.
    """
    _check_envelope(receipt)
    if "reading" not in receipt:
        raise _fail("receipt has no 'reading': it is the receipt of a ledger entry",
                    "check it with verify_entry_receipt ('iot-anchor verify-receipt' does)")
    reading = _get(receipt, "reading", dict, "")
    ent = _get(receipt, "entry", dict, "")
    cp_text = _get(receipt, "checkpoint", str, "")
    device = _get(receipt, "device", str, "")
    seq = _get(receipt, "seq", int, "")

    entry, cp = _proven_entry(ent, cp_text, gateway_vkey)
    if not isinstance(entry, BatchEntry):
        raise _fail(f"ledger entry {entry.i} is a {entry.kind} entry, not a batch entry")
    entry_index = entry.i

    # 3. reading in the batch tree
    cose = _hex(reading, "cose", "reading.")
    r_index = _get(reading, "index", int, "reading.")
    r_size = _get(reading, "size", int, "reading.")
    if r_size != entry.n:
        raise _fail(f"reading.size {r_size} is not the batch size n={entry.n}")
    _included(cose, r_index, r_size, _proof(reading, "reading."), entry.root,
              "reading not in the batch")

    # 4. the reading itself
    c = _decode_cose(cose)
    if c.dev != device or c.seq != seq:
        raise _fail(
            f"receipt names device {device!r} seq {seq}, the reading is {c.dev!r} seq {c.seq}"
        )

    # 5. the device signature
    if device_key is not None:
        _check_es256(c, device_key)

    return VerifiedReceipt(
        device=c.dev,
        seq=c.seq,
        entry_index=entry_index,
        tree_size=cp.size,
        root=cp.root,
        device_signature_checked=device_key is not None,
    )
