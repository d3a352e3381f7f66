"""CPython cross-checks of the firmware's bytes against independent code.

Everything the firmware produces here is made by the MicroPython binary in one batch process
(firmware/tests/crosscheck.py); the checks use python-ecdsa, cryptography, pycose and cbor2,
which share no code with the firmware:

- signatures equal python-ecdsa's RFC 6979 `sign_deterministic` (SHA-256) after low-S
  normalisation, byte for byte, and `cryptography` verifies them;
- pycose decodes and verifies every whole message;
- cbor2 decodes the payload, the decoded Reading is the one we asked for, and cbor2's canonical
  re-encoding gives the same bytes (also for the protected header and the whole message);
- HMAC-SHA-256 equals Python's hmac; the CBOR encoder equals a bytewise-sorted reference built
  on cbor2 and the decoder reads cbor2's output.

The random inputs come from a seeded generator; the seed is in each assertion message.

cbor2's C extension (the default `cbor2.dumps`, 5.9 here) does not pick float16 for values from
32768 to 65504 (it encodes 65504.0 as fa477fe000; RFC 8949 appendix A says f97bff; cbor2 issue
#157, "Bug in pack_float16()"). Canonical re-encoding therefore uses cbor2's pure-Python encoder,
which follows the RFC.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import struct
from typing import Any

import cbor2
import pytest
from cbor2._encoder import dumps as cbor2_dumps  # pure Python: see the note above
from cbor2._types import CBORTag as PyCBORTag  # the tag type that encoder knows
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from ecdsa import NIST256p, SigningKey
from ecdsa.util import sigencode_strings
from mpbatch import batch, tag, untag
from pycose.algorithms import Es256
from pycose.headers import KID, Algorithm
from pycose.keys import EC2Key
from pycose.keys.curves import P256
from pycose.messages import CoseMessage

N = NIST256p.order
SEED = 20250101
CASES = 300
ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
NAMES = ["t", "temp", "hum", "pres", "co2", "pm2_5", "x" * 23, "y" * 24, "z" * 40,
         "\u00e9t\u00e9", "\u6c34\u6e29", "a b", "Temp", "temp2"]


def _float(rng: random.Random) -> float:
    kind = rng.randrange(6)
    if kind == 0:  # exact in float16
        return rng.randrange(-2048, 2048) / rng.choice([1, 2, 4, 8, 16, 1024])
    if kind == 1:  # exact in float32, not float16
        return struct.unpack(">f", struct.pack(">f", rng.uniform(-1e6, 1e6)))[0]
    if kind == 2:  # typical sensor decimals (float64)
        return round(rng.uniform(-40, 1100), rng.randrange(1, 4))
    if kind == 3:
        return rng.choice([0.0, -0.0, 2.0**-24, -(2.0**-14), 65504.0, 65520.0, 1e300, 5e-324,
                           3.4028234663852886e38, 1.0 / 3])
    if kind == 4:
        return struct.unpack(">d", rng.randbytes(8))[0] if rng.random() < 0.5 else rng.random()
    return float(rng.randrange(-(10**6), 10**6))


def _value(rng: random.Random) -> int | float:
    if rng.random() < 0.4:
        v = rng.choice([0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1,
                        -1, -24, -25, -(2**64), rng.randrange(-(10**9), 10**9)])
        return v
    f = _float(rng)
    while f != f or f in (float("inf"), float("-inf")):
        f = _float(rng)
    return f


def _cases(seed: int, count: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        secret = [1, N - 1][i] if i < 2 else rng.randrange(1, N)
        dev = "".join(rng.choice(ID_CHARS) for _ in range(rng.choice([1, 8, 16, 16, 23, 24, 64])))
        data = {}
        for _ in range(rng.randrange(0, 7)):
            data[rng.choice(NAMES)] = _value(rng)
        out.append({
            "secret": secret,
            "dev": dev,
            "seq": rng.choice([0, 1, 23, 24, 1000, 2**16, 2**32 - 1, 2**32, 2**63,
                               rng.randrange(0, 2**40)]),
            "prev": rng.randbytes(32) if i else bytes(32),
            "ts": rng.choice([None, 0, 1735689600, rng.randrange(0, 2**33)]),
            "data": data,
        })
    return out


def _request(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "op": "sign", "secret": c["secret"].to_bytes(32, "big").hex(), "dev": c["dev"],
        "seq": c["seq"], "prev": c["prev"].hex(), "ts": c["ts"],
        "data": [[k, tag(v)] for k, v in c["data"].items()],
    }


def _same(a: Any, b: Any) -> bool:
    """Equality that tells 0.0 from -0.0 and int from float."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return type(a) is type(b) and struct.pack(">d", a) == struct.pack(">d", b)
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def signed(micropython: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    cases = _cases(SEED, CASES)
    answers = batch(micropython, [_request(c) for c in cases])
    return list(zip(cases, answers, strict=True))


def test_enough_cases(signed: list[Any]) -> None:
    assert len(signed) >= 200
    assert sum(1 for c, _ in signed if c["ts"] is None) > 20
    assert sum(1 for c, _ in signed if any(isinstance(v, float) for v in c["data"].values())) > 100


def test_public_keys_match_cryptography(signed: list[Any]) -> None:
    for i, (c, a) in enumerate(signed):
        key = ec.derive_private_key(c["secret"], ec.SECP256R1())
        want = key.public_key().public_numbers()
        pub = bytes.fromhex(a["pub"])
        assert pub == b"\x04" + want.x.to_bytes(32, "big") + want.y.to_bytes(32, "big"), (SEED, i)


def test_payload_is_the_reading_in_canonical_cbor(signed: list[Any]) -> None:
    for i, (c, a) in enumerate(signed):
        payload = bytes.fromhex(a["payload"])
        want: dict[str, Any] = {"v": 1, "dev": c["dev"], "seq": c["seq"], "prev": c["prev"],
                                "data": c["data"]}
        if c["ts"] is not None:
            want["ts"] = c["ts"]
        got = cbor2.loads(payload)
        assert _same(got, want), (SEED, i, got, want)
        assert cbor2_dumps(got, canonical=True) == payload, (SEED, i)
        assert cbor2_dumps(want, canonical=True) == payload, (SEED, i)


def test_cbor2_c_extension_half_float_bug_is_still_there() -> None:
    # If this starts failing, cbor2's C encoder was fixed and the note above can go.
    assert cbor2.dumps(65504.0, canonical=True) == bytes.fromhex("fa477fe000")
    assert cbor2_dumps(65504.0, canonical=True) == bytes.fromhex("f97bff")


def test_message_structure_is_canonical_cose_sign1(signed: list[Any]) -> None:
    for i, (c, a) in enumerate(signed):
        msg = bytes.fromhex(a["msg"])
        obj = cbor2.loads(msg)
        assert isinstance(obj, cbor2.CBORTag) and obj.tag == 18, (SEED, i)
        prot, unprot, payload, sig = obj.value
        assert prot == cbor2_dumps({1: -7, 4: c["dev"].encode()}, canonical=True)
        assert unprot == {} and payload.hex() == a["payload"] and len(sig) == 64
        assert cbor2_dumps(PyCBORTag(18, obj.value), canonical=True) == msg, (SEED, i)


def _tbs(msg: bytes) -> tuple[bytes, bytes]:
    prot, _, payload, sig = cbor2.loads(msg).value
    return cbor2_dumps(["Signature1", prot, b"", payload]), sig


def test_signatures_equal_python_ecdsa_rfc6979_low_s(signed: list[Any]) -> None:
    high = 0
    for i, (c, a) in enumerate(signed):
        tbs, sig = _tbs(bytes.fromhex(a["msg"]))
        sk = SigningKey.from_secret_exponent(c["secret"], curve=NIST256p, hashfunc=hashlib.sha256)
        rb, sb = sk.sign_deterministic(tbs, hashfunc=hashlib.sha256, sigencode=sigencode_strings)
        s = int.from_bytes(sb, "big")
        if s > N // 2:
            s = N - s
            high += 1
        assert sig == rb + s.to_bytes(32, "big"), (SEED, i)
    assert high > 50  # about half of python-ecdsa's signatures needed normalising


def test_cryptography_verifies(signed: list[Any]) -> None:
    for i, (_, a) in enumerate(signed):
        tbs, sig = _tbs(bytes.fromhex(a["msg"]))
        r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        assert s <= N // 2, (SEED, i)
        pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(),
                                                           bytes.fromhex(a["pub"]))
        pub.verify(encode_dss_signature(r, s), tbs, ec.ECDSA(hashes.SHA256()))  # raises if bad


def test_pycose_decodes_and_verifies(signed: list[Any]) -> None:
    for i, (c, a) in enumerate(signed):
        msg = CoseMessage.decode(bytes.fromhex(a["msg"]))
        pub = bytes.fromhex(a["pub"])
        msg.key = EC2Key(crv=P256, x=pub[1:33], y=pub[33:])
        assert msg.verify_signature(), (SEED, i)
        assert msg.get_attr(Algorithm) is Es256 and msg.get_attr(KID) == c["dev"].encode()
        assert msg.payload.hex() == a["payload"]


def test_hmac_matches_python(micropython: str) -> None:
    rng = random.Random(SEED + 1)
    reqs = []
    for n in [0, 1, 31, 32, 63, 64, 65, 127, 128, 200] * 5:
        reqs.append({"op": "hmac", "key": rng.randbytes(n).hex(),
                     "msg": rng.randbytes(rng.randrange(0, 300)).hex()})
    for req, ans in zip(reqs, batch(micropython, reqs), strict=True):
        want = hmac.new(bytes.fromhex(req["key"]), bytes.fromhex(req["msg"]), hashlib.sha256)
        assert ans["mac"] == want.hexdigest(), req


# ---- CBOR encoder and decoder against cbor2 ----


def ref_encode(obj: Any) -> bytes:
    """RFC 8949 section 4.2.1 deterministic encoding, built on cbor2 for the leaves.

    cbor2's canonical mode sorts map keys length-first (RFC 7049); RFC 8949 sorts them by their
    encoded bytes, so maps are assembled here.
    """
    if isinstance(obj, dict):
        items = sorted((ref_encode(k), ref_encode(v)) for k, v in obj.items())
        head = cbor2_dumps(len(items))  # an unsigned int head; switch major type 0 -> 5
        return bytes([head[0] | 0xA0]) + head[1:] + b"".join(k + v for k, v in items)
    if isinstance(obj, list):
        head = cbor2_dumps(len(obj))
        return bytes([head[0] | 0x80]) + head[1:] + b"".join(ref_encode(x) for x in obj)
    if isinstance(obj, cbor2.CBORTag):
        head = cbor2_dumps(obj.tag)
        return bytes([head[0] | 0xC0]) + head[1:] + ref_encode(obj.value)
    return cbor2_dumps(obj, canonical=True)


def _random_obj(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "float", "text", "bytes", "bool", "none"]
    if depth < 3:
        kinds += ["list", "map", "map", "tag"]
    k = rng.choice(kinds)
    if k == "int":
        return rng.choice([rng.randrange(-30, 30), rng.randrange(-(2**64), 2**64),
                           rng.randrange(-70000, 70000), 2**64 - 1, -(2**64)])
    if k == "float":
        return _float(rng)
    if k == "text":
        n = rng.choice([0, 1, 5, 23, 24, 300])
        return "".join(rng.choice("ab\u00e9\u6c34z") for _ in range(n))
    if k == "bytes":
        return rng.randbytes(rng.choice([0, 1, 23, 24, 255, 256]))
    if k == "bool":
        return rng.random() < 0.5
    if k == "none":
        return None
    if k == "list":
        return [_random_obj(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    if k == "tag":
        t = rng.choice([0, 1, 18, 24, 255, 256, 65536])
        return cbor2.CBORTag(t, _random_obj(rng, depth + 1))
    m: dict[Any, Any] = {}
    for _ in range(rng.randrange(0, 6)):
        key = rng.choice([rng.randrange(-300, 300), "".join(rng.choice("abz\u00e9") for _ in
                         range(rng.randrange(0, 30))), rng.randbytes(rng.randrange(0, 3))])
        m[key] = _random_obj(rng, depth + 1)
    return m


def test_cbor_encoder_matches_reference(micropython: str) -> None:
    rng = random.Random(SEED + 2)
    objs = [_random_obj(rng) for _ in range(400)]
    answers = batch(micropython, [{"op": "encode", "obj": tag(o)} for o in objs])
    for i, (o, a) in enumerate(zip(objs, answers, strict=True)):
        assert "cbor" in a, (i, o, a)
        got = bytes.fromhex(a["cbor"])
        assert got == ref_encode(o), (SEED + 2, i, o, got.hex(), ref_encode(o).hex())


def test_cbor_decoder_reads_cbor2_output(micropython: str) -> None:
    rng = random.Random(SEED + 3)
    objs = [_random_obj(rng) for _ in range(300)]
    # Any valid encoding will do for the decoder: cbor2's own (C) encoder, canonical or not.
    encoded = [cbor2.dumps(o, canonical=bool(i % 2)) for i, o in enumerate(objs)]
    answers = batch(micropython, [{"op": "decode", "cbor": e.hex()} for e in encoded])
    for i, (o, a) in enumerate(zip(objs, answers, strict=True)):
        assert "obj" in a, (i, o, a)
        got = untag(a["obj"])
        assert ref_encode(got) == ref_encode(o), (SEED + 3, i, o, got)


def test_cbor_decoder_rejects_hostile_input(micropython: str) -> None:
    bad = ["", "ff", "1c", "5f4100ff", "9fff", "a1", "5bffffffffffffffff", "9b0000000100000000",
           "81" * 1000 + "01", "62c328", "a2010101" + "02", "c0" * 100 + "01"]
    rng = random.Random(SEED + 4)
    good = cbor2.dumps({"upto": 5, "seqs": [7, 8], "entry": 3})
    bad += [good[: rng.randrange(0, len(good))].hex() for _ in range(20)]
    answers = batch(micropython, [{"op": "decode", "cbor": b} for b in bad])
    for b, a in zip(bad, answers, strict=True):
        assert "error" in a, (b, a)
