# Signing and encoding self-test for any MicroPython board, run with `mpremote run`:
#   mpremote connect PORT run firmware/selftest.py
# It needs the anchor package importable on the board (flash, or the emulated board's ROMFS).
# No file system writes, no clock, no os.urandom, no network: it runs on the QEMU board too.
# Fixed inputs in, hex out, one "name value" line each; tests/boards/ checks every line from
# CPython against independent code (the `ecdsa` package, cbor2, pycose). The last line is
# "selftest done N" with N the number of result lines.
import gc
import sys
from binascii import hexlify
from hashlib import sha256

from anchor import cbor, cose, p256
from anchor.cose_verify import verify1
from anchor.p256_keys import public_key

_n = 0


def out(name, value):
    global _n
    _n += 1
    print(name, value if isinstance(value, (str, int)) else hexlify(value).decode())


def secret(i):
    # fixed, reproducible secrets: SHA-256("iot-anchor selftest <i>") reduced into [1, n-1]
    return int.from_bytes(sha256(b"iot-anchor selftest %d" % i).digest(), "big") % (p256.N - 1) + 1


out("platform", sys.platform)
# the .mpy format the port loads: documented, its underscore as PEP 421 names a port's own fields;
# absent from a port built without .mpy loading
out("mpy", getattr(sys.implementation, "_mpy", 0))
out("sha256-abc", sha256(b"abc").digest())
out("hmac-rfc4231-2", p256.hmac_sha256(b"Jefe", b"what do ya want for nothing?"))

# RFC 6979 A.2.5 key, messages "sample" and "test"
d = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
out("rfc6979-pub", public_key(d))
for m in (b"sample", b"test"):
    out("rfc6979-sig-" + m.decode(), p256.sign(d, sha256(m).digest()))

N_KEYS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
for i in range(N_KEYS):
    s = secret(i)
    msg = b"reading %d from the emulated board" % i
    out("key%d-secret" % i, s.to_bytes(32, "big"))
    out("key%d-pub" % i, public_key(s))
    out("key%d-sig" % i, p256.sign(s, sha256(msg).digest()))

# CBOR: deterministic encodings, including floats in their shortest exact form
for name, obj in (("cbor-ints", [0, 23, 24, 255, 256, 65535, 65536, -1, -24, -25, 1 << 40]),
                  ("cbor-floats", [1.5, 21.5, -3.25, 0.1, 21.37, 1013.25, 100000.0]),
                  ("cbor-map", {"temp": 1, "b": 2, "aa": 3, "dev": "x", "data": {"z": 1, "y": 2}})):
    out(name, cbor.encode(obj))

# A whole reading message, from the firmware's own COSE code
s = secret(0)
data = {"temp": 21.37, "hum": 48.5, "press": 1013.25, "mcu_temp": 41}
payload = cose.reading("qemu-selftest-01", 7, bytes(range(32)), data, 1764072000)
out("reading-payload", payload)
msg = cose.sign1(s, b"qemu-selftest-01", payload)
out("reading-cose", msg)
out("reading-verify", "ok" if verify1(public_key(s), msg) else "bad")
gc.collect()
out("mem-free", gc.mem_free())
print("selftest done", _n)
