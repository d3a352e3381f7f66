"""Check the output of firmware/selftest.py from CPython, against independent code: the `ecdsa`
package (RFC 6979 deterministic ECDSA, then low-S), hashlib/hmac, cbor2 (canonical encoding),
pycose (the whole COSE_Sign1 message). `float32` says the board's floats are single precision
(the qemu port, ESP32, RP2): its float values are then the float32 nearest the literal."""

from __future__ import annotations

import hashlib
import hmac
import struct

import cbor2
from ecdsa import NIST256p, SigningKey
from ecdsa.util import sigencode_strings

N = NIST256p.order
RFC6979_KEY = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
# RFC 6979 A.2.5, SHA-256 (r, s as published; the firmware emits low-S)
RFC6979 = {
    "sample": (0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716,
               0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8),
    "test": (0xF1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367,
             0x019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083),
}


def f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def low_s(sig: bytes) -> bytes:
    s = int.from_bytes(sig[32:], "big")
    return sig[:32] + (N - s if s > N // 2 else s).to_bytes(32, "big")


def ecdsa_sign(d: int, msg: bytes) -> bytes:
    sk = SigningKey.from_secret_exponent(d, curve=NIST256p, hashfunc=hashlib.sha256)
    r, s = sk.sign_deterministic(msg, hashfunc=hashlib.sha256, sigencode=sigencode_strings)
    return low_s(r + s)


def ecdsa_pub(d: int) -> bytes:
    vk = SigningKey.from_secret_exponent(d, curve=NIST256p).get_verifying_key()
    return b"\x04" + vk.to_string()


def secret(i: int) -> int:
    h = hashlib.sha256(b"iot-anchor selftest %d" % i).digest()
    return int.from_bytes(h, "big") % (N - 1) + 1


def parse(stdout: str) -> dict[str, str]:
    out: dict[str, str] = {}
    lines = [ln.strip() for ln in stdout.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("selftest done "), stdout[-2000:]
    for ln in lines[:-1]:
        name, _, value = ln.partition(" ")
        out[name] = value
    assert len(out) == int(lines[-1].split()[-1]), "one line per result, none repeated"
    return out


def check(stdout: str, float32: bool) -> dict[str, str]:
    """Assert every self-test line; returns the parsed lines."""
    r = parse(stdout)
    fl = f32 if float32 else float
    h = bytes.fromhex
    assert h(r["sha256-abc"]) == hashlib.sha256(b"abc").digest()
    assert h(r["hmac-rfc4231-2"]) == hmac.new(b"Jefe", b"what do ya want for nothing?",
                                               hashlib.sha256).digest()
    assert h(r["rfc6979-pub"]) == ecdsa_pub(RFC6979_KEY)
    for m, (rr, ss) in RFC6979.items():
        sig = h(r[f"rfc6979-sig-{m}"])
        assert sig == ecdsa_sign(RFC6979_KEY, m.encode())
        assert sig == low_s(rr.to_bytes(32, "big") + ss.to_bytes(32, "big"))
    n_keys = sum(1 for k in r if k.endswith("-secret"))
    assert n_keys >= 1
    for i in range(n_keys):
        d = secret(i)
        assert int(r[f"key{i}-secret"], 16) == d
        assert h(r[f"key{i}-pub"]) == ecdsa_pub(d)
        msg = b"reading %d from the emulated board" % i
        assert h(r[f"key{i}-sig"]) == ecdsa_sign(d, msg), f"key {i}"
    ints = [0, 23, 24, 255, 256, 65535, 65536, -1, -24, -25, 1 << 40]
    assert h(r["cbor-ints"]) == cbor2.dumps(ints, canonical=True)
    floats = [fl(x) for x in (1.5, 21.5, -3.25, 0.1, 21.37, 1013.25, 100000.0)]
    assert h(r["cbor-floats"]) == cbor2.dumps(floats, canonical=True)
    m = {"temp": 1, "b": 2, "aa": 3, "dev": "x", "data": {"z": 1, "y": 2}}
    assert h(r["cbor-map"]) == cbor2.dumps(m, canonical=True)
    payload = h(r["reading-payload"])
    reading = cbor2.loads(payload)
    assert reading == {"v": 1, "dev": "qemu-selftest-01", "seq": 7, "prev": bytes(range(32)),
                       "ts": 1764072000, "data": {"temp": fl(21.37), "hum": 48.5,
                                                  "press": 1013.25, "mcu_temp": 41}}
    assert cbor2.dumps(reading, canonical=True) == payload
    verify_cose(h(r["reading-cose"]), ecdsa_pub(secret(0)), payload)
    assert r["reading-verify"] == "ok"
    return r


def verify_cose(msg: bytes, pub: bytes, payload: bytes) -> None:
    from pycose.keys.curves import P256
    from pycose.keys.ec2 import EC2Key
    from pycose.messages import Sign1Message

    decoded = Sign1Message.decode(msg)
    decoded.key = EC2Key(crv=P256, x=pub[1:33], y=pub[33:])
    assert decoded.verify_signature(), "pycose rejects the board's COSE_Sign1"
    assert decoded.payload == payload
    assert cbor2.loads(msg).tag == 18
