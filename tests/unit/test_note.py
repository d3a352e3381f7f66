"""C2SP signed notes, checkpoints, vkeys and key files.

Oracles:
- the C2SP signed-note rules recomputed by hand in the test: the key ID is the first 4 bytes of
  SHA-256(name || 0x0A || 0x01 || public key), the signature line is an em dash, the name and
  base64(key ID || Ed25519 signature); Ed25519 is deterministic (RFC 8032), so a note built
  here byte by byte from a fixed seed must equal what our signer writes;
- hashlib and `cryptography` used directly in the test to recompute key IDs and to check the
  signature bytes that our code wrote.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ledger import note
from gateway.ledger.note import NoteError

SEED = bytes(range(32))


def fixed_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(SEED)


OUR_VKEY = note.vkey_from_private(fixed_key(), "example.org/log")


def raw_pub(k: Ed25519PrivateKey) -> bytes:
    return k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --------------------------------------------------------------------------- known answers


def hand_made_note(text: str, name: str, k: Ed25519PrivateKey) -> tuple[str, str]:
    """A signed note and its vkey, assembled from the C2SP rules without gateway.ledger.note."""
    pub = raw_pub(k)
    kid = hashlib.sha256(name.encode() + b"\n\x01" + pub).digest()[:4]
    vkey = name + "+" + kid.hex() + "+" + base64.b64encode(b"\x01" + pub).decode()
    sig = k.sign(text.encode())
    line = "\u2014 " + name + " " + base64.b64encode(kid + sig).decode() + "\n"
    return text + "\n" + line, vkey


def test_hand_made_note_is_reproduced_and_verified() -> None:
    k = fixed_key()
    text = "a log\n42\n" + base64.b64encode(bytes(32)).decode() + "\n"
    want, vkey = hand_made_note(text, "example.org/log", k)
    assert note.vkey_from_private(k, "example.org/log") == vkey
    assert note.sign_note(text, "example.org/log", k) == want
    assert note.verify_note(want, vkey) == text
    cp = note.parse_checkpoint(note.verify_note(want, vkey))
    assert (cp.origin, cp.size, cp.root) == ("a log", 42, bytes(32))
    with pytest.raises(NoteError, match="does not match"):
        note.verify_note(want.replace("\n42\n", "\n43\n"), vkey)


def test_note_with_two_signers_verifies_for_each() -> None:
    k, other = fixed_key(), Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    text = "shared text\n"
    first, vkey1 = hand_made_note(text, "first.example", k)
    second, vkey2 = hand_made_note(text, "second.example", other)
    both = first + second[len(text) + 1 :]
    assert note.verify_note(both, vkey1) == text
    assert note.verify_note(both, vkey2) == text
    third = note.vkey_from_private(Ed25519PrivateKey.from_private_bytes(bytes(32)), "third")
    with pytest.raises(NoteError, match="no signature by"):
        note.verify_note(both, third)


def test_key_id_and_vkey_computed_independently() -> None:
    k = fixed_key()
    pub = raw_pub(k)
    kid = hashlib.sha256(b"example.org/log\n\x01" + pub).digest()[:4]
    assert note.key_id("example.org/log", pub) == kid
    want = "example.org/log+" + kid.hex() + "+" + base64.b64encode(b"\x01" + pub).decode()
    assert note.format_vkey("example.org/log", pub) == want


def test_gateway_identity_definition() -> None:
    k = fixed_key()
    pub = raw_pub(k)
    gkid = hashlib.sha256(pub).hexdigest()[:16]
    assert note.gateway_key_id(k) == gkid
    assert note.gateway_key_id(k.public_key()) == gkid
    assert note.gateway_key_id(pub) == gkid
    assert note.gateway_origin(k) == "iot-anchor/" + gkid
    vkey = note.vkey_from_private(k)
    assert vkey.startswith("iot-anchor/" + gkid + "+")
    note.check_origin("iot-anchor/" + gkid, vkey)


def test_signature_bytes_checked_with_cryptography_directly() -> None:
    k = fixed_key()
    text = "iot-anchor/x\n3\n" + base64.b64encode(bytes(32)).decode() + "\n"
    signed = note.sign_note(text, "some.name", k)
    body, sig_line = signed.split("\n\n")
    assert body + "\n" == text
    assert sig_line.startswith("\u2014 some.name ") and sig_line.endswith("\n")
    blob = base64.b64decode(sig_line[len("\u2014 some.name ") :])
    assert blob[:4] == hashlib.sha256(b"some.name\n\x01" + raw_pub(k)).digest()[:4]
    k.public_key().verify(blob[4:], text.encode())  # raises if wrong
    assert len(blob) == 68


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_and_text() -> None:
    k = fixed_key()
    root = hashlib.sha256(b"root").digest()
    origin = note.gateway_origin(k)
    body = note.format_checkpoint(origin, 1234, root)
    assert body == f"{origin}\n1234\n{base64.b64encode(root).decode()}\n"
    assert note.parse_checkpoint(body) == (origin, 1234, root)
    signed = note.sign_checkpoint(1234, root, k)
    assert signed.startswith(body + "\n\u2014 " + origin + " ")
    cp = note.verify_checkpoint(signed, note.vkey_from_private(k))
    assert (cp.origin, cp.size, cp.root) == (origin, 1234, root)
    # extension lines are allowed by tlog-checkpoint and ignored
    assert note.parse_checkpoint(body + "ext line\n").size == 1234


@pytest.mark.parametrize(
    "body",
    [
        "",
        "origin\n12\n",
        "origin\n12\nAAAA\n",  # root too short
        "origin\n012\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "origin\n-1\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "origin\n1e3\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "origin\n12\n" + base64.b64encode(bytes(32)).decode(),  # no final newline
        "\n12\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "origin\n12\n" + base64.b64encode(bytes(32)).decode() + "\n\n",
        "origin\n12\n" + "*" * 44 + "\n",
        "origin\n\u0661\u0662\n" + base64.b64encode(bytes(32)).decode() + "\n",  # Arabic digits
    ],
)
def test_parse_checkpoint_rejects(body: str) -> None:
    with pytest.raises(NoteError):
        note.parse_checkpoint(body)


def test_checkpoint_from_another_key_or_origin_is_refused() -> None:
    k, other = fixed_key(), Ed25519PrivateKey.generate()
    vkey = note.vkey_from_private(k)
    root = bytes(32)
    with pytest.raises(NoteError, match="no signature by"):
        note.verify_checkpoint(note.sign_checkpoint(5, root, other), vkey)
    # signed by the right key, but under an origin that is not the key's
    body = note.format_checkpoint("iot-anchor/0000000000000000", 5, root)
    forged = note.sign_note(body, note.gateway_origin(k), k)
    with pytest.raises(NoteError, match="origin"):
        note.verify_checkpoint(forged, vkey)
    # a vkey whose name is not iot-anchor/<its own gateway key id>
    odd = note.format_vkey("iot-anchor/ffffffffffffffff", k.public_key())
    signed = note.sign_note(
        note.format_checkpoint("iot-anchor/ffffffffffffffff", 5, root),
        "iot-anchor/ffffffffffffffff",
        k,
    )
    with pytest.raises(NoteError, match="does not match its key"):
        note.verify_checkpoint(signed, odd)


# --------------------------------------------------------------------------- verify_note


def test_verify_note_tampering() -> None:
    k = fixed_key()
    vkey = note.vkey_from_private(k)
    signed = note.sign_checkpoint(7, bytes(32), k)
    assert note.verify_note(signed, vkey).endswith("\n")
    body, sigs = signed.split("\n\n")
    # every single-character change in the text is caught
    for i in range(len(body)):
        c = body[i]
        repl = "x" if c != "x" else "y"
        if c == "\n":
            continue
        with pytest.raises(NoteError):
            note.verify_note(body[:i] + repl + body[i + 1 :] + "\n\n" + sigs, vkey)
    with pytest.raises(NoteError, match="newline"):
        note.verify_note(signed[:-1], vkey)
    with pytest.raises(NoteError, match="no signature block"):
        note.verify_note(body + "\n", vkey)
    with pytest.raises(NoteError, match="malformed"):
        note.verify_note(signed.replace("\u2014", "-"), vkey)
    # a flipped bit in the signature
    blob = bytearray(base64.b64decode(sigs.split(" ")[2]))
    blob[10] ^= 1
    bad = body + "\n\n\u2014 " + note.gateway_origin(k) + " " + base64.b64encode(blob).decode()
    with pytest.raises(NoteError, match="does not match"):
        note.verify_note(bad + "\n", vkey)


def test_verify_note_ignores_other_signers_but_needs_ours() -> None:
    k, other = fixed_key(), Ed25519PrivateKey.generate()
    vkey = note.vkey_from_private(k)
    text = "hello\n"
    ours = note.sign_note(text, note.gateway_origin(k), k)
    theirs = note.sign_note(text, "witness.example", other)
    both = ours + theirs.split("\n\n")[1]
    assert note.verify_note(both, vkey) == text
    assert note.verify_note(both, note.vkey_from_private(other, "witness.example")) == text
    with pytest.raises(NoteError, match="no signature by"):
        note.verify_note(theirs, vkey)


def test_sign_note_rejects_bad_text_and_names() -> None:
    k = fixed_key()
    for text in ("", "no newline", "a\n\nb\n", "\nx\n", "tab\there\n"):
        with pytest.raises(NoteError):
            note.sign_note(text, "n", k)
    for name in ("", "a+b", "a b", "a\u00a0b"):
        with pytest.raises(NoteError):
            note.sign_note("x\n", name, k)


_NAME, _KID, _B64 = OUR_VKEY.split("+", 2)


@pytest.mark.parametrize(
    "vkey",
    [
        "",
        _NAME,
        _NAME + "+" + _KID,
        _NAME + "+" + "%08x" % (int(_KID, 16) ^ 1) + "+" + _B64,  # wrong key ID
        _NAME + "+" + _KID.upper() + "+" + _B64,  # upper-case hex (when it has letters)
        _NAME.upper() + "+" + _KID + "+" + _B64,  # other name
        _NAME + "+" + _KID + "+" + _B64[1:],  # bad base64
        _NAME + "+" + _KID + "+" + "Ag" + _B64[2:],  # unknown signature type
        _NAME + "+" + _KID + "+" + _B64[:-4],  # short key
    ],
)
def test_parse_vkey_rejects(vkey: str) -> None:
    with pytest.raises(NoteError):
        note.parse_vkey(vkey)


def test_vkey_with_plus_in_base64() -> None:
    # Keys whose base64 contains '+' must still parse: search for one deterministically.
    for i in range(200):
        k = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"%d" % i).digest())
        v = note.vkey_from_private(k)
        if "+" in v.split("+", 2)[2]:
            assert note.parse_vkey(v)[0] == note.gateway_origin(k)
            return
    pytest.fail("no key with '+' in its base64 among 200 seeds")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_verify_note_never_crashes(text: str) -> None:
    try:
        note.verify_note(text, OUR_VKEY)
    except NoteError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_parse_checkpoint_never_crashes(text: str) -> None:
    try:
        note.parse_checkpoint(text)
    except NoteError:
        pass


def test_non_canonical_base64_and_oversized_notes_are_refused() -> None:
    k = fixed_key()
    root = hashlib.sha256(b"r").digest()
    body = note.format_checkpoint("o", 1, root)
    b64 = base64.b64encode(root).decode()  # 44 chars, one '=': the last digit has 2 spare bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = b64[:-2] + alphabet[alphabet.index(b64[-2]) ^ 1] + "="
    assert base64.b64decode(twin) == root  # same bytes, different text
    with pytest.raises(NoteError, match="canonical"):
        note.parse_checkpoint(body.replace(b64, twin))
    vkey = note.vkey_from_private(k)
    huge = "x\n" * 40_000 + "\n\u2014 a AAAA\n"
    with pytest.raises(NoteError, match="more than"):
        note.verify_note(huge, vkey)



def test_names_and_texts_refuse_exactly_the_characters_notes_forbid() -> None:
    """Over every code point: a key name refuses '+', white space (str.isspace) and control
    characters; a note's text refuses control characters other than the newline. All the
    allowed ones go through in one name and one text; each refused one alone is refused."""
    key = Ed25519PrivateKey.generate()
    chars = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]

    def control(c: str) -> bool:
        return ord(c) < 0x20 or ord(c) == 0x7F

    name_bad = [c for c in chars if c == "+" or c.isspace() or control(c)]
    text_bad = [c for c in chars if control(c) and c != "\n"]
    name_ok = "".join(c for c in chars if c not in set(name_bad))
    text_ok = "".join(c for c in chars if not control(c))
    note.sign_note("x\n", name_ok, key)
    note.sign_note(text_ok + "\n", "n", key)
    assert len(name_bad) > 33 and len(text_bad) == 32
    for c in name_bad:
        with pytest.raises(NoteError, match="key name"):
            note.sign_note("x\n", "a" + c, key)
    for c in text_bad:
        with pytest.raises(NoteError, match="control character"):
            note.sign_note("a" + c + "\n", "n", key)
