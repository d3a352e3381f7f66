# The Reading and its COSE_Sign1 message (RFC 9052), algorithm ES256. docs/protocol.md is the
# specification; this is the code that produces it.
#
#   reading(dev, seq, prev, data, ts=None) -> bytes      the payload: deterministic CBOR map
#   protected_header(kid) -> bytes                       bstr .cbor {1: -7, 4: kid}
#   sig_structure(protected, payload, aad=b"") -> bytes  ["Signature1", protected, aad, payload]
#   sign1(secret, kid, payload) -> bytes                 18([protected, {}, payload, r||s])
#   message_hash(msg) -> bytes                           SHA-256 of a whole message (the "prev")
#   decode_sign1(msg) -> (protected, unprotected, payload, signature)
#   verify1(pub, msg, external_aad=b"") -> bool          any ES256 COSE_Sign1, tagged or not
#
# decode_sign1 and verify1 are in cosex.py (loaded on first use through __getattr__ below): the
# device only signs. The message is assembled from pre-encoded parts so no intermediate CBOR
# tree is built.

from hashlib import sha256

from micropython import const

from anchor import Error, cbor, p256

ALG_ES256 = const(-7)
TAG_SIGN1 = const(18)
READING_VERSION = const(1)
# The gateway refuses bigger messages (docs/protocol.md); refusing them here keeps a device from
# filling its outbox with readings that can never be anchored.
MAX_MESSAGE = const(2048)

_ZERO32 = bytes(32)


def _check_number(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Error("value of %r must be a number, not %s" % (name, type(v).__name__))
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise Error("value of %r must be finite" % (name,))
    elif not -(1 << 64) <= v < (1 << 64):
        raise Error("value of %r does not fit in 64 bits" % (name,))


def reading(dev, seq, prev, data, ts=None):
    """The Reading payload (deterministic CBOR) for device id dev (str).

    Requires: seq an int >= 0; prev 32 bytes; data a dict str -> int|float; ts None (clock
    unset, the key is left out) or int unix seconds >= 0.
    """
    if not isinstance(data, dict):
        raise Error("data must be a map of sensor name -> number")
    for k in data:
        if not isinstance(k, str) or not k:
            raise Error("sensor names must be non-empty strings")
        _check_number(k, data[k])
    if len(prev) != 32:
        raise Error("prev must be 32 bytes")
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


def __getattr__(name):
    # decode_sign1, verify1: not needed to sign, kept out of RAM until used (cosex.py)
    from anchor import cosex

    return getattr(cosex, name)
