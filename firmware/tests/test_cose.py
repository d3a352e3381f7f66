# COSE_Sign1 / Reading tests under MicroPython: the exact bytes of the payload, the protected
# header, the Sig_structure and the message frame, written out by hand from RFC 9052 section 4
# and docs/protocol.md (not produced by the code under test); then signing, verification and
# tampering. The COSE working group's ES256 examples are run by
# tests/firmware/test_cose_vectors.py through firmware/tests/crosscheck.py.
# Run: micropython firmware/tests/test_cose.py [test_name ...]

import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, _here + "/..")
sys.path.insert(0, _here)

from hashlib import sha256

import runner
from runner import h, raises

from anchor import Error, cbor, cose, p256
from anchor.cbor_decode import decode
from anchor.cbor_types import CBORError, Tag
from anchor.cose_verify import decode_sign1, verify1
from anchor.p256_keys import public_key

SECRET = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721  # RFC 6979 A.2.5
ZERO = bytes(32)


def test_reading_bytes_without_ts():
    got = cose.reading("d1", 0, ZERO, {"t": 1})
    want = h("a5"
             "6176 01"              # "v": 1
             "63646576 626431"      # "dev": "d1"
             "63736571 00"          # "seq": 0
             "6464617461 a1 6174 01"  # "data": {"t": 1}
             "6470726576 5820" + "00" * 32)  # "prev": 32 zero bytes
    assert got == want, got.hex()


def test_reading_bytes_with_ts_and_floats():
    prev = bytes(range(32))
    got = cose.reading("dev-01", 70000, prev, {"temp": 21.5, "hum": 48.25, "p": 1013.25},
                       ts=1735689600)
    want = h("a6"
             "6176 01"
             "627473 1a67748580"                   # "ts": 1735689600
             "63646576 66 6465762d3031"            # "dev": "dev-01"
             "63736571 1a00011170"                 # "seq": 70000
             "6464617461 a3"                       # "data": 3 pairs, keys sorted bytewise:
             "6170 fa447d5000"                     #   "p": 1013.25 (float32)
             "6368756d f95208"                     #   "hum": 48.25 (float16: 0 10100 1000001000)
             "6474656d70 f94d60"                   #   "temp": 21.5 (float16)
             "6470726576 5820" + prev.hex())
    assert got == want, got.hex()


def test_protected_header_and_sig_structure():
    assert cose.protected_header(b"d1") == h("a2 01 26 04 42 6431")  # {1: -7, 4: h'6431'}
    tbs = cose.sig_structure(h("a201260442 6431"), b"\xa0")
    # ["Signature1", h'a2012604426431', h'', h'a0']
    assert tbs == h("84 6a5369676e617475726531 47a2012604426431 40 41a0")
    assert cose.sig_structure(b"", b"", b"\x01") == h("84 6a5369676e617475726531 40 4101 40")


def test_sign1_frame_and_signature():
    payload = cose.reading("d1", 0, ZERO, {"t": 1})
    msg = cose.sign1(SECRET, b"d1", payload)
    prot = h("a2012604426431")
    # 18([h'a2012604426431', {}, payload, sig64])
    head = h("d2 84 47") + prot + h("a0 58") + bytes([len(payload)]) + payload + h("5840")
    assert msg[: len(head)] == head
    assert len(msg) == len(head) + 64
    sig = msg[-64:]
    tbs = cose.sig_structure(prot, payload)
    assert sig == p256.sign(SECRET, sha256(tbs).digest())
    assert verify1(public_key(SECRET), msg)


def test_decode_sign1():
    payload = cose.reading("d1", 5, ZERO, {"t": -1.5})
    msg = cose.sign1(SECRET, b"d1", payload)
    prot, unprot, pl, sig = decode_sign1(msg)
    assert decode(prot) == {1: -7, 4: b"d1"}
    assert unprot == {}
    assert pl == payload
    assert len(sig) == 64
    r = decode(pl)
    assert r == {"v": 1, "dev": "d1", "seq": 5, "prev": ZERO, "data": {"t": -1.5}}
    assert decode_sign1(msg[1:])[2] == payload  # untagged array is accepted
    assert raises(CBORError, decode_sign1, b"\xd3" + msg[1:])  # tag 19
    assert raises(CBORError, decode_sign1, h("d28340a040"))  # 3 items
    assert raises(CBORError, decode_sign1, msg[:-1])  # truncated


def test_verify1_rejects_tampering():
    pub = public_key(SECRET)
    msg = cose.sign1(SECRET, b"d1", cose.reading("d1", 1, ZERO, {"t": 2}))
    assert verify1(pub, msg)
    # Flip one bit in every byte position in turn: nothing may still verify.
    for i in range(0, len(msg), 7):
        bad = bytearray(msg)
        bad[i] ^= 0x01
        assert not verify1(pub, bytes(bad)), i
    assert not verify1(public_key(SECRET + 1), msg)
    assert not verify1(pub, msg, external_aad=b"x")


def test_verify1_requires_es256():
    payload = b"hello"
    prot = cbor.encode({1: -35})  # ES384
    tbs = cose.sig_structure(prot, payload)
    sig = p256.sign(SECRET, sha256(tbs).digest())
    msg = cbor.encode(Tag(18, [prot, {}, payload, sig]))
    assert not verify1(public_key(SECRET), msg)
    # alg in the unprotected header only is accepted (RFC 9052 allows it).
    tbs = cose.sig_structure(b"", payload)
    sig = p256.sign(SECRET, sha256(tbs).digest())
    msg = cbor.encode(Tag(18, [b"", {1: -7}, payload, sig]))
    assert verify1(public_key(SECRET), msg)


def test_reading_validation():
    assert raises(Error, cose.reading, "d", 0, ZERO, {"a": True})
    assert raises(Error, cose.reading, "d", 0, ZERO, {"a": "1"})
    assert raises(Error, cose.reading, "d", 0, ZERO, {"a": float("nan")})
    assert raises(Error, cose.reading, "d", 0, ZERO, {"a": float("inf")})
    assert raises(Error, cose.reading, "d", 0, ZERO, {"a": 1 << 64})
    assert raises(Error, cose.reading, "d", 0, ZERO, {1: 1})
    assert raises(Error, cose.reading, "d", 0, ZERO, {"": 1})
    assert raises(Error, cose.reading, "d", 0, ZERO, [1])
    assert raises(Error, cose.reading, "d", 0, b"\x00" * 31, {})
    assert cose.reading("d", 0, ZERO, {"a": -(1 << 64)})  # the CBOR minimum is fine
    assert cose.reading("d", 0, ZERO, {})  # no sensors is a valid reading


def test_message_hash():
    assert cose.message_hash(b"abc") == h(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")  # FIPS 180-2


runner.main(globals())
