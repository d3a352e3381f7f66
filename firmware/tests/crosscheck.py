# Batch driver for the CPython cross-checks (tests/firmware/test_crosscheck.py and
# test_cose_vectors.py): reads one JSON request per line on stdin, writes one JSON answer per
# line on stdout, so hundreds of cases cost one MicroPython process.
#
# Values that JSON cannot carry exactly travel tagged: ["i", "123"] int, ["f", "<16 hex>"]
# float64 bits, ["s", "text"], ["b", "<hex>"], ["l", [...]], ["m", [[k, v], ...]],
# ["T"] true, ["F"] false, ["N"] null, ["t", tag, value].
#
# Requests:
#   {"op": "sign", "secret": hex, "dev": str, "seq": int, "prev": hex, "ts": int|null,
#    "data": [[name, tagged number], ...]}
#       -> {"pub": hex, "payload": hex, "msg": hex}
#   {"op": "hmac", "key": hex, "msg": hex}                  -> {"mac": hex}
#   {"op": "encode", "obj": tagged}                         -> {"cbor": hex} | {"error": str}
#   {"op": "decode", "cbor": hex}                           -> {"obj": tagged} | {"error": str}
#   {"op": "verify1", "pub": hex, "msg": hex, "aad": hex}   -> {"ok": bool}
#   {"op": "verify", "pub": hex, "digest": hex, "sig": hex} -> {"ok": bool}

import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, _here + "/..")

import json
import struct
from binascii import hexlify, unhexlify

from anchor import Error, cbor, cose
from anchor.cbor_decode import decode
from anchor.cbor_types import Tag
from anchor.cose_verify import verify1
from anchor.p256 import hmac_sha256
from anchor.p256_keys import public_key, secret_from_bytes
from anchor.p256_verify import verify


def _hex(b):
    return hexlify(b).decode()


def untag(t):
    k = t[0]
    if k == "i":
        return int(t[1])
    if k == "f":
        return struct.unpack(">d", unhexlify(t[1]))[0]
    if k == "s":
        return t[1]
    if k == "b":
        return unhexlify(t[1])
    if k == "l":
        return [untag(x) for x in t[1]]
    if k == "m":
        return {untag(a): untag(b) for a, b in t[1]}
    if k == "t":
        return Tag(t[1], untag(t[2]))
    return {"T": True, "F": False, "N": None}[k]


def tag(v):
    if v is True:
        return ["T"]
    if v is False:
        return ["F"]
    if v is None:
        return ["N"]
    if isinstance(v, int):
        return ["i", str(v)]
    if isinstance(v, float):
        return ["f", _hex(struct.pack(">d", v))]
    if isinstance(v, str):
        return ["s", v]
    if isinstance(v, bytes):
        return ["b", _hex(v)]
    if isinstance(v, list):
        return ["l", [tag(x) for x in v]]
    if isinstance(v, dict):
        return ["m", [[tag(a), tag(v[a])] for a in v]]
    if isinstance(v, Tag):
        return ["t", v.tag, tag(v.value)]
    raise TypeError(type(v))


def handle(req):
    op = req["op"]
    if op == "sign":
        d = secret_from_bytes(unhexlify(req["secret"]))
        data = {}
        for name, v in req["data"]:
            data[name] = untag(v)
        payload = cose.reading(req["dev"], req["seq"], unhexlify(req["prev"]), data, req["ts"])
        msg = cose.sign1(d, req["dev"].encode(), payload)
        return {"pub": _hex(public_key(d)), "payload": _hex(payload), "msg": _hex(msg)}
    if op == "hmac":
        return {"mac": _hex(hmac_sha256(unhexlify(req["key"]), unhexlify(req["msg"])))}
    if op == "encode":
        try:
            return {"cbor": _hex(cbor.encode(untag(req["obj"])))}
        except Error as e:
            return {"error": str(e)}
    if op == "decode":
        try:
            return {"obj": tag(decode(unhexlify(req["cbor"])))}
        except Error as e:
            return {"error": str(e)}
    if op == "verify1":
        return {"ok": verify1(unhexlify(req["pub"]), unhexlify(req["msg"]),
                                   unhexlify(req.get("aad", "")))}
    if op == "verify":
        return {"ok": verify(unhexlify(req["pub"]), unhexlify(req["digest"]),
                                  unhexlify(req["sig"]))}
    raise ValueError("unknown op %r" % op)


def main():
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if line:
            print(json.dumps(handle(json.loads(line))))


main()
