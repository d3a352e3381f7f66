# Reading COSE_Sign1 messages back: decoding and verification (tests, tools, a device checking
# a message), and what is wrong with a refused reading. The device loop only signs, so this is
# kept out of cose.py and out of its RAM; cose.decode_sign1 and cose.verify1 still work (cose.py
# forwards them here).

from hashlib import sha256

from anchor.cbor_decode import decode
from anchor.cbor_types import CBORError, Tag
from anchor.cose import ALG_ES256, TAG_SIGN1, sig_structure


def decode_sign1(msg):
    """(protected bytes, unprotected dict, payload bytes, signature bytes) of a COSE_Sign1.

    Accepts tag 18 or an untagged array; raises CBORError on anything else.
    """
    obj = decode(msg)
    if isinstance(obj, Tag):
        if obj.tag != TAG_SIGN1:
            raise CBORError("CBOR tag %d is not COSE_Sign1 (18)" % obj.tag)
        obj = obj.value
    if not isinstance(obj, list) or len(obj) != 4:
        raise CBORError("COSE_Sign1 is an array of 4 items")
    protected, unprotected, payload, sig = obj
    if not isinstance(protected, bytes) or not isinstance(unprotected, dict):
        raise CBORError("bad COSE_Sign1 headers")
    if not isinstance(payload, bytes) or not isinstance(sig, bytes):
        raise CBORError("COSE_Sign1 payload and signature are byte strings")
    return protected, unprotected, payload, sig


def verify1(pub, msg, external_aad=b""):
    """True if msg is a COSE_Sign1 with alg ES256 whose signature verifies under pub.

    pub: 65-byte SEC1 point. The algorithm is taken from the protected header, else from the
    unprotected one; anything other than ES256 (-7) fails. High-S signatures verify (plain
    ECDSA); the gateway's stricter policy is its own.
    """
    try:
        protected, unprotected, payload, sig = decode_sign1(msg)
        ph = decode(protected) if protected else {}
    except CBORError:
        return False
    if not isinstance(ph, dict):
        return False
    alg = ph[1] if 1 in ph else unprotected.get(1)
    if alg != ALG_ES256:
        return False
    # RFC 9052 section 4.4: with no protected attributes the Sig_structure carries a zero-length
    # bstr, also when the message sent an encoded empty map (the COSE examples' sign-pass-01).
    tbs = sig_structure(protected if ph else b"", payload, external_aad)
    from anchor.p256_verify import verify

    return verify(pub, sha256(tbs).digest(), sig)


def reading_error(data, prev, ts=None):
    """Why cose.reading refused data, prev or ts (it calls this only then)."""
    if ts is not None and (type(ts) is not int or ts < 0):
        return "ts must be a non-negative integer (unix seconds)"
    if not isinstance(data, dict):
        return "data must be a map of sensor name -> number"
    for k in data:
        if not isinstance(k, str) or not k:
            return "sensor names must be non-empty strings"
        v = data[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return "value of %r must be a number, not %s" % (k, type(v).__name__)
        if isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                return "value of %r must be finite" % (k,)
        elif not -(1 << 64) <= v < (1 << 64):
            return "value of %r does not fit in 64 bits" % (k,)
    return "prev must be 32 bytes"


def size_error(n):
    """state.Device.next_reading's message for a signed reading over cose.MAX_MESSAGE."""
    from anchor.cose import MAX_MESSAGE

    return ("reading is %d bytes, over the %d-byte limit; send fewer or shorter sensor values"
            % (n, MAX_MESSAGE))
