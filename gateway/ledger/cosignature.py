"""C2SP tlog-cosignature (cosignature/v1, Ed25519) and the tlog-witness add-checkpoint body.

Witness key: an Ed25519 key with a name. Its key ID is
SHA-256(name || "\\n" || 0x04 || 32-byte public key)[:4], and its vkey
``<name>+<key ID hex>+<base64(0x04 || public key)>`` (signature type 0x04).

A cosignature is a note signature line on a checkpoint:
``— <name> base64(key ID || u64 big-endian timestamp || Ed25519 signature)``, the signature over
``"cosignature/v1\\n" "time <timestamp>\\n"`` followed by the checkpoint's whole note text (its
lines up to and including the last newline, no signature lines).

add-checkpoint request body (C2SP tlog-witness)::

    old <size>\\n
    <base64 consistency proof hash>\\n      (0 to 63 lines)
    \\n
    <the signed checkpoint note>
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.ledger import note
from gateway.ledger.merkle import HASH_SIZE
from gateway.ledger.note import NoteError

SIG_TYPE_COSIGNATURE = 0x04
HEADER = "cosignature/v1\n"
MAX_PROOF_LINES = 63
MAX_TIMESTAMP = (1 << 63) - 1
MAX_REQUEST = 128 * 1024


class WitnessKey(NamedTuple):
    name: str
    key_id: bytes
    public: Ed25519PublicKey
    vkey: str


def key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([SIG_TYPE_COSIGNATURE])
                          + public_key).digest()[:4]


def format_witness_vkey(name: str, public_key: Ed25519PublicKey | bytes) -> str:
    raw = public_key if isinstance(public_key, bytes) else note.public_key_bytes(public_key)
    if len(raw) != 32:
        raise NoteError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    note.signature_line(name, b"\0" * 5)  # checks the name
    b64 = base64.b64encode(bytes([SIG_TYPE_COSIGNATURE]) + raw).decode()
    return f"{name}+{key_id(name, raw).hex()}+{b64}"


def parse_witness_vkey(vkey: str) -> WitnessKey:
    """A witness vkey (type 0x04); NoteError with the reason otherwise."""
    text = vkey.strip()
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise NoteError("a witness vkey has the form <name>+<8 hex digits>+<base64 key>",
                        "copy the last line printed by 'iot-anchor witness init'")
    name, kid_hex, b64 = parts
    note.signature_line(name, b"\0" * 5)
    if len(kid_hex) != 8 or any(c not in "0123456789abcdef" for c in kid_hex):
        raise NoteError(f"witness vkey key ID {kid_hex!r} is not 8 lowercase hex digits")
    try:
        blob = base64.b64decode(b64.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise NoteError("the witness vkey's key is not base64") from None
    if len(blob) != 33 or blob[0] != SIG_TYPE_COSIGNATURE:
        raise NoteError("the vkey is not a cosignature/v1 Ed25519 key (type 0x04, 32 bytes)",
                        "a witness vkey is printed by 'iot-anchor witness init'")
    if key_id(name, blob[1:]) != bytes.fromhex(kid_hex):
        raise NoteError("the witness vkey's key ID does not match its name and key")
    return WitnessKey(name, bytes.fromhex(kid_hex), Ed25519PublicKey.from_public_bytes(blob[1:]),
                      text)


def signed_message(text: str, timestamp: int) -> bytes:
    return f"{HEADER}time {timestamp}\n{text}".encode()


def cosign(text: str, name: str, private_key: Ed25519PrivateKey, timestamp: int) -> str:
    """The cosignature line on the checkpoint note text `text` (ending in "\\n")."""
    if not 0 < timestamp <= MAX_TIMESTAMP:
        raise NoteError(f"cosignature timestamp {timestamp} is not 1..2**63-1")
    raw = note.public_key_bytes(private_key)
    sig = private_key.sign(signed_message(text, timestamp))
    return note.signature_line(name, key_id(name, raw) + timestamp.to_bytes(8, "big") + sig)


def cosignatures(signed: str, witnesses: Iterable[WitnessKey]) -> dict[str, int]:
    """The valid cosignatures on a note, by witness vkey -> timestamp. Lines by other keys are
    ignored; a line that names a given witness and key ID but does not verify raises."""
    text, sigs = note.split_note(signed)
    by_id = {(w.name, w.key_id): w for w in witnesses}
    out: dict[str, int] = {}
    for name, blob in sigs:
        w = by_id.get((name, blob[:4]))
        if w is None:
            continue
        if len(blob) != 4 + 8 + 64:
            raise NoteError(f"the cosignature by {name} is {len(blob)} bytes, not 76")
        ts = int.from_bytes(blob[4:12], "big")
        try:
            w.public.verify(blob[12:], signed_message(text, ts))
        except InvalidSignature:
            raise NoteError(f"the cosignature by {name} does not verify",
                            "the checkpoint or the cosignature was altered") from None
        out[w.vkey] = ts
    return out


def cosignature_lines(signed: str, witnesses: Iterable[WitnessKey]) -> dict[str, str]:
    """The signature lines of `signed` that are valid cosignatures, by witness vkey."""
    ws = list(witnesses)
    text, sigs = note.split_note(signed)
    out: dict[str, str] = {}
    for name, blob in sigs:
        line = note.signature_line(name, blob)
        for w in ws:
            if (w.name, w.key_id) == (name, blob[:4]):
                cosignatures(text + "\n" + line, [w])  # raises if it does not verify
                out[w.vkey] = line
    return out


def check_quorum(signed: str, witness_vkeys: Sequence[str], quorum: int | None) -> list[str]:
    """Require `quorum` (default: all) valid cosignatures by the given witnesses; returns the
    vkeys that cosigned. NoteError names how many were found."""
    ws = [parse_witness_vkey(v) for v in witness_vkeys]
    need = len(ws) if quorum is None else quorum
    if not 1 <= need <= len(ws):
        raise NoteError(f"witness quorum {need} is not 1..{len(ws)} (the witness keys given)",
                        "give --witness-quorum between 1 and the number of --witness-key")
    got = cosignatures(signed, ws)
    if len(got) < need:
        raise NoteError(f"the checkpoint carries {len(got)} valid cosignature(s) of the "
                        f"{len(ws)} witness key(s) given, {need} are required",
                        "wait until the witnesses cosigned a later checkpoint, then fetch a "
                        "new receipt")
    return list(got)


# --------------------------------------------------------------------------- add-checkpoint


class AddCheckpoint(NamedTuple):
    old: int
    proof: list[bytes]
    checkpoint: str


def format_add_checkpoint(old: int, proof: Sequence[bytes], checkpoint: str) -> bytes:
    lines = [f"old {old}\n"] + [base64.b64encode(h).decode() + "\n" for h in proof]
    return ("".join(lines) + "\n" + checkpoint).encode()


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Strict parse; NoteError (an HTTP 400) for anything malformed."""
    if len(body) > MAX_REQUEST:
        raise NoteError(f"the request is {len(body)} bytes, more than {MAX_REQUEST}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("the request is not UTF-8") from None
    head, sep, cp = text.partition("\n\n")
    if not sep:
        raise NoteError("the request has no empty line before the checkpoint")
    lines = head.split("\n")
    first = lines[0]
    if not first.startswith("old "):
        raise NoteError("the request does not start with an 'old <size>' line")
    size_s = first[4:]
    if not size_s.isascii() or not size_s.isdigit() or (len(size_s) > 1 and size_s[0] == "0") \
            or len(size_s) > 19:
        raise NoteError(f"old size {size_s[:24]!r} is not a decimal number")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise NoteError(f"the request has {len(lines) - 1} proof lines, more than "
                        f"{MAX_PROOF_LINES}")
    proof = []
    for ln in lines[1:]:
        try:
            h = base64.b64decode(ln.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            raise NoteError("a consistency proof line is not base64") from None
        if len(h) != HASH_SIZE:
            raise NoteError(f"a consistency proof line is {len(h)} bytes, not {HASH_SIZE}")
        proof.append(h)
    return AddCheckpoint(int(size_s), proof, cp)
