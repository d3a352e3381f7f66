"""C2SP signed notes and tlog checkpoints with Ed25519; the gateway's key and its files.

Signed note (https://c2sp.org/signed-note):

    <text: one or more lines, each ending in "\\n">
    "\\n"
    "— <key name> <base64(key ID (4 bytes) || Ed25519 signature (64 bytes))>\\n"   (1 or more)

The em dash is U+2014 followed by one space. The signature covers the text exactly, including
its final newline. Key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]
(0x01 = the Ed25519 signature type). A verifier key ("vkey") is written
``<name>+<key ID, 8 lowercase hex digits>+<base64(0x01 || 32-byte public key)>``.

Checkpoint (https://c2sp.org/tlog-checkpoint), the text of a signed note:

    <origin>\\n
    <tree size, decimal, no leading zeros>\\n
    <base64 of the 32-byte root hash>\\n
    [extension lines, ignored by us; we never write any]

The gateway's identity:
- gateway key id = the first 8 bytes of SHA-256(32-byte raw Ed25519 public key), as 16
  lowercase hex digits (`gateway_key_id`). It depends on the public key only, so it can appear
  in the key's own name (the C2SP key ID cannot: it is computed from the name).
- origin = key name = ``iot-anchor/<gateway key id>`` (`gateway_origin`). A checkpoint verifies
  against a vkey only if its origin equals the vkey's name and that name matches the vkey's
  public key (`check_origin`).

The key file itself is gateway/storage/keyfile.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from gateway.errors import AnchorError
from gateway.ledger.merkle import HASH_SIZE

__all__ = [
    "NoteError",
    "Checkpoint",
    "ORIGIN_PREFIX",
    "SIG_TYPE_ED25519",
    "generate_key",
    "public_key_bytes",
    "gateway_key_id",
    "gateway_origin",
    "key_id",
    "format_vkey",
    "vkey_from_private",
    "parse_vkey",
    "check_origin",
    "sign_note",
    "verify_note",
    "split_note",
    "signature_line",
    "format_checkpoint",
    "parse_checkpoint",
    "sign_checkpoint",
    "verify_checkpoint",
]

ORIGIN_PREFIX = "iot-anchor/"
SIG_TYPE_ED25519 = 0x01
_DASH = "\u2014 "
_MAX_SIGNATURES = 100
MAX_NOTE_SIZE = 64 * 1024  # a checkpoint note is about 200 bytes


class NoteError(AnchorError):
    """A signed note, checkpoint or vkey is malformed or does not verify."""

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(
            what, hint or "check that the note and the gateway key (vkey) are the right ones"
        )


class Checkpoint(NamedTuple):
    origin: str
    size: int
    root: bytes


# --------------------------------------------------------------------------- keys


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32-byte raw Ed25519 public key."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def gateway_key_id(key: Ed25519PrivateKey | Ed25519PublicKey | bytes) -> str:
    """16 lowercase hex digits: SHA-256(raw 32-byte public key)[:8]."""
    raw = key if isinstance(key, bytes) else public_key_bytes(key)
    if len(raw) != 32:
        raise NoteError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    return hashlib.sha256(raw).digest()[:8].hex()


def gateway_origin(key: Ed25519PrivateKey | Ed25519PublicKey | bytes) -> str:
    """``iot-anchor/<gateway key id>``: the checkpoint origin and the key's note name."""
    return ORIGIN_PREFIX + gateway_key_id(key)


# \s in a str pattern is str.isspace(): both are CPython's Py_UNICODE_ISSPACE
_NAME_SPACE_RX = re.compile(r"[+\s]")
_NAME_CONTROL_RX = re.compile(r"[\x00-\x1f\x7f]")
_TEXT_CONTROL_RX = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # newline aside


def _check_name(name: str) -> None:
    if not name:
        raise NoteError("empty key name")
    if _NAME_SPACE_RX.search(name):
        raise NoteError(f"key name {name!r} contains '+' or white space, which notes forbid")
    if _NAME_CONTROL_RX.search(name):
        raise NoteError(f"key name {name!r} contains a control character")


def key_id(name: str, public_key: bytes) -> bytes:
    """C2SP key ID: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(
        name.encode() + b"\n" + bytes([SIG_TYPE_ED25519]) + public_key
    ).digest()[:4]


def format_vkey(name: str, public_key: Ed25519PublicKey | bytes) -> str:
    """``<name>+<keyid hex>+<base64(0x01 || pubkey)>``."""
    _check_name(name)
    raw = public_key if isinstance(public_key, bytes) else public_key_bytes(public_key)
    if len(raw) != 32:
        raise NoteError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    b64 = base64.b64encode(bytes([SIG_TYPE_ED25519]) + raw).decode()
    return f"{name}+{key_id(name, raw).hex()}+{b64}"


def vkey_from_private(private_key: Ed25519PrivateKey, name: str | None = None) -> str:
    """The vkey of a private key; the name defaults to the gateway origin."""
    return format_vkey(name or gateway_origin(private_key), private_key.public_key())


def _b64decode(text: str, what: str) -> bytes:
    """Strict standard base64: padded, no stray characters, canonical (re-encodes the same)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise NoteError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not in canonical base64")
    return raw


def parse_vkey(vkey: str) -> tuple[str, bytes, Ed25519PublicKey]:
    """Split and check a vkey; returns (name, 4-byte key ID, public key).

    Raises NoteError when the form is wrong, the type is not Ed25519, or the key ID does not
    match the name and key.
    """
    vkey = vkey.strip()
    parts = vkey.split("+", 2)  # the base64 part may itself contain "+"
    if len(parts) != 3:
        raise NoteError(
            "a vkey has the form <name>+<8 hex digits>+<base64 key>",
            "copy the last line printed by 'iot-anchor init'",
        )
    name, kid_hex, b64 = parts
    _check_name(name)
    if len(kid_hex) != 8 or any(c not in "0123456789abcdef" for c in kid_hex):
        raise NoteError(f"vkey key ID {kid_hex!r} is not 8 lowercase hex digits")
    blob = _b64decode(b64, "the vkey's key")
    if len(blob) != 33 or blob[0] != SIG_TYPE_ED25519:
        raise NoteError("the vkey is not an Ed25519 key (type 0x01 and 32 bytes)")
    raw = blob[1:]
    kid = bytes.fromhex(kid_hex)
    if key_id(name, raw) != kid:
        raise NoteError("the vkey's key ID does not match its name and key")
    return name, kid, Ed25519PublicKey.from_public_bytes(raw)


def check_origin(origin: str, vkey: str) -> None:
    """Require origin == the vkey's name == ``iot-anchor/<gateway key id of its key>``."""
    name, _, pub = parse_vkey(vkey)
    if origin != name:
        raise NoteError(f"checkpoint origin {origin!r} is not the gateway key name {name!r}")
    if name != gateway_origin(pub):
        raise NoteError(
            f"vkey name {name!r} does not match its key (expected {gateway_origin(pub)!r})"
        )


# --------------------------------------------------------------------------- notes


def _check_text(text: str) -> None:
    if not text or not text.endswith("\n"):
        raise NoteError("note text must be non-empty and end with a newline")
    if "\n\n" in text or text.startswith("\n"):
        raise NoteError("note text must not contain empty lines")
    if _TEXT_CONTROL_RX.search(text):
        raise NoteError("note text contains a control character")


def sign_note(text: str, name: str, private_key: Ed25519PrivateKey,
              public_key: bytes | None = None) -> str:
    """text + "\\n" + one signature line. `text` must end in "\\n" with no empty line.
    `public_key`: the key's raw public key, if the caller has it (else derived here)."""
    _check_text(text)
    _check_name(name)
    kid = key_id(name, public_key if public_key is not None else public_key_bytes(private_key))
    sig = private_key.sign(text.encode())
    return f"{text}\n{_DASH}{name} {base64.b64encode(kid + sig).decode()}\n"


def _text_and_signature_lines(note: str) -> tuple[str, list[str]]:
    """A note ending in a newline -> (its text, its signature lines without their newlines);
    checks the empty line, the text and the number of signature lines. Raises NoteError."""
    cut = note.rfind("\n\n")
    if cut < 0:
        raise NoteError("the note has no signature block (no empty line before signatures)")
    text, block = note[: cut + 1], note[cut + 2 :]
    _check_text(text)
    lines = block.split("\n")[:-1]
    if not lines:
        raise NoteError("the note has no signature lines")
    if len(lines) > _MAX_SIGNATURES:
        raise NoteError(f"the note has {len(lines)} signature lines, more than {_MAX_SIGNATURES}")
    return text, lines


def split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """A signed note -> (its text, [(key name, signature blob = key ID || signature)]).

    Checks the form only (sizes, the empty line, each signature line); verifies nothing.
    """
    if not isinstance(note, str) or len(note) > MAX_NOTE_SIZE:
        raise NoteError(f"the note is longer than {MAX_NOTE_SIZE} characters")
    if not note.endswith("\n"):
        raise NoteError("a signed note must end with a newline")
    text, lines = _text_and_signature_lines(note)
    out = []
    for line in lines:
        if not line.startswith(_DASH):
            raise NoteError(f"malformed signature line {line[:40]!r}")
        fields = line[len(_DASH) :].split(" ")
        if len(fields) != 2 or not fields[0]:
            raise NoteError(f"malformed signature line {line[:40]!r}")
        blob = _b64decode(fields[1], "a signature")
        if len(blob) < 5:
            raise NoteError("a signature line is too short to hold a key ID")
        out.append((fields[0], blob))
    return text, out


def signature_line(name: str, blob: bytes) -> str:
    """``— <name> <base64(blob)>\n``: one signature line."""
    _check_name(name)
    return f"{_DASH}{name} {base64.b64encode(blob).decode()}\n"


def verify_note(note: str, vkey: str) -> str:
    """Verify the note's signature by `vkey`; return the signed text (ending in "\\n").

    Signature lines by other keys are allowed and ignored; at least one by `vkey` must exist and
    every signature by `vkey` must be valid. Raises NoteError with the reason.
    """
    name, kid, pub = parse_vkey(vkey)
    if isinstance(note, str) and len(note) > MAX_NOTE_SIZE:
        raise NoteError(f"the note is {len(note)} characters long, more than {MAX_NOTE_SIZE}")
    if not isinstance(note, str) or not note.endswith("\n"):
        raise NoteError("a signed note must end with a newline")
    text, lines = _text_and_signature_lines(note)
    found = False
    for line in lines:
        if not line.startswith(_DASH):
            raise NoteError(f"malformed signature line {line[:40]!r}")
        fields = line[len(_DASH) :].split(" ")
        if len(fields) != 2:
            raise NoteError(f"malformed signature line {line[:40]!r}")
        sname, b64 = fields
        blob = _b64decode(b64, "a signature")
        if len(blob) < 5:
            raise NoteError("a signature line is too short to hold a key ID")
        if sname != name or blob[:4] != kid:
            continue
        if len(blob) != 4 + 64:
            raise NoteError(f"signature by {name} is {len(blob) - 4} bytes, not 64")
        try:
            pub.verify(blob[4:], text.encode())
        except InvalidSignature:
            raise NoteError(
                f"the signature by {name} does not match the note text",
                "the note was altered after signing, or signed by another key",
            ) from None
        found = True
    if not found:
        raise NoteError(f"the note carries no signature by {name}+{kid.hex()}")
    return text


# --------------------------------------------------------------------------- checkpoints


def format_checkpoint(origin: str, size: int, root: bytes) -> str:
    """The checkpoint text: origin, decimal size and base64 root, each line ending in "\\n"."""
    if not origin or "\n" in origin:
        raise NoteError("checkpoint origin must be one non-empty line")
    if size < 0:
        raise NoteError(f"negative tree size {size}")
    if len(root) != HASH_SIZE:
        raise NoteError(f"root hash is {len(root)} bytes, not {HASH_SIZE}")
    return f"{origin}\n{size}\n{base64.b64encode(bytes(root)).decode()}\n"


def parse_checkpoint(body: str) -> Checkpoint:
    """Parse checkpoint text (the verified body of a note). Extension lines are ignored."""
    if not body.endswith("\n"):
        raise NoteError("checkpoint text must end with a newline")
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError(f"checkpoint has {len(lines)} lines, needs origin, size and root")
    origin, size_s, root_s = lines[0], lines[1], lines[2]
    if not origin:
        raise NoteError("checkpoint origin is empty")
    if not size_s.isascii() or not size_s.isdigit() or (size_s != "0" and size_s[0] == "0"):
        raise NoteError(f"checkpoint tree size {size_s[:30]!r} is not a decimal number")
    if len(size_s) > 20:
        raise NoteError("checkpoint tree size is too large")
    root = _b64decode(root_s, "the checkpoint root")
    if len(root) != HASH_SIZE:
        raise NoteError(f"checkpoint root is {len(root)} bytes, not {HASH_SIZE}")
    if any(not extra for extra in lines[3:]):
        raise NoteError("checkpoint has an empty extension line")
    return Checkpoint(origin, int(size_s), root)


def sign_checkpoint(size: int, root: bytes, private_key: Ed25519PrivateKey) -> str:
    """The gateway's signed checkpoint: origin = key name = `gateway_origin(private_key)`."""
    pub = public_key_bytes(private_key)
    origin = gateway_origin(pub)
    return sign_note(format_checkpoint(origin, size, root), origin, private_key, pub)


def verify_checkpoint(note: str, vkey: str) -> Checkpoint:
    """Verify a signed checkpoint against the gateway vkey, check its origin, parse it."""
    cp = parse_checkpoint(verify_note(note, vkey))
    check_origin(cp.origin, vkey)
    return cp
