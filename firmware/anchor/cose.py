# The Reading and its COSE_Sign1 message (RFC 9052), algorithm ES256. docs/protocol.md is the
# specification; this is the code that produces it.
#
#   reading(dev, seq, prev, data, ts=None) -> bytes      the payload: deterministic CBOR map
#   protected_header(kid) -> bytes                       bstr .cbor {1: -7, 4: kid}
#   sig_structure(protected, payload, aad=b"") -> bytes  ["Signature1", protected, aad, payload]
#   sign1(secret, kid, payload) -> bytes                 18([protected, {}, payload, r||s])
#   message_hash(msg) -> bytes                           SHA-256 of a whole message (the "prev")
#   cose_verify.decode_sign1(msg) -> (protected, unprotected, payload, signature)
#   cose_verify.verify1(pub, msg, external_aad=b"") -> bool   any ES256 COSE_Sign1, tagged or not
#
# decode_sign1 and verify1 are in cose_verify.py, a cold companion (COLD): the device only
# signs. The message is assembled from pre-encoded parts so no intermediate CBOR tree is built.

from hashlib import sha256

from micropython import const

from anchor import Error, cbor, p256

ALG_ES256 = const(-7)
TAG_SIGN1 = const(18)
READING_VERSION = const(1)
# The gateway refuses bigger messages (docs/protocol.md); refusing them here keeps a device from
# filling its outbox with readings that can never be anchored.
MAX_MESSAGE = const(2048)

COLD = ("cose_verify", "error_text")


def _bad(data, prev, ts):
    """True if reading() must refuse data, prev or ts (error_text.reading then says why: the
    messages are kept out of this module's RAM). A number is an int within 64 bits or a finite
    float, never a bool (type() is exact: bool is not int here)."""
    if not isinstance(data, dict) or len(prev) != 32 or (
            ts is not None and (type(ts) is not int or ts < 0)):
        return True
    for k in data:
        v = data[k]
        t = type(v)
        if type(k) is not str or not k or not (
                (t is int and -(1 << 64) <= v < (1 << 64))
                or (t is float and v - v == 0.0)):     # inf - inf and nan - nan are nan
            return True
    return False


def reading(dev, seq, prev, data, ts=None):
    """The Reading payload (deterministic CBOR) for device id dev (str).

    Requires: seq an int >= 0; prev 32 bytes; data a dict str -> int|float; ts None (clock
    unset, the key is left out) or int unix seconds >= 0. Error (saying what) otherwise.
    """
    if _bad(data, prev, ts):
        from anchor import error_text

        raise Error(error_text.reading(data, prev, ts))
    m = {"v": READING_VERSION, "dev": dev, "seq": seq, "prev": bytes(prev), "data": data}
    if ts is not None:
        m["ts"] = ts
    return cbor.encode(m)


def protected_header(kid):
    """bstr .cbor {1: -7, 4: kid}; kid is bytes."""
    return cbor.encode({1: ALG_ES256, 4: kid})


def sig_structure(protected, payload, external_aad=b""):
    buf = bytearray(b"\x84\x6aSignature1")
    cbor.encode_into(buf, protected)
    cbor.encode_into(buf, external_aad)
    cbor.encode_into(buf, payload)
    return bytes(buf)


def sign1(secret, kid, payload):
    """A tagged COSE_Sign1 message: 18([protected, {}, payload, signature])."""
    protected = protected_header(kid)
    sig = p256.sign(secret, sha256(sig_structure(protected, payload)).digest())
    buf = bytearray(b"\xd2\x84")  # tag 18, array of 4
    cbor.encode_into(buf, protected)
    buf.append(0xA0)  # unprotected = {}
    cbor.encode_into(buf, payload)
    cbor.encode_into(buf, sig)
    return bytes(buf)


def message_hash(msg):
    """SHA-256 of a complete COSE message: the next reading's prev."""
    return sha256(msg).digest()

