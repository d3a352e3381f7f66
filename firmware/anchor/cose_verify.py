# Reading COSE_Sign1 messages back: decoding and verification (tests, tools, a device checking
# a message). A cold companion of cose.py (cose.COLD): the device loop only signs, so it does
# not keep this code in RAM.

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
