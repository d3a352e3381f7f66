# HMAC-SHA-256 (RFC 2104) on hashlib.sha256. micropython-lib's hmac is not installable on the
# devices, and this is all RFC 6979 needs.
#
#   Hmac256(key).digest(*parts) -> 32 bytes   the MAC of the concatenated parts
#   hmac_sha256(key, msg) -> 32 bytes
#
# MicroPython's sha256 objects have no copy(), so the padded keys are kept and hashed again per
# message (one 64-byte block each): 2 compressions of overhead per MAC.

from hashlib import sha256

_BLOCK = 64


class Hmac256:
    def __init__(self, key):
        if len(key) > _BLOCK:
            key = sha256(key).digest()
        k = bytearray(_BLOCK)
        k[: len(key)] = key
        for i in range(_BLOCK):
            k[i] ^= 0x36
        self._ipad = bytes(k)
        for i in range(_BLOCK):
            k[i] ^= 0x36 ^ 0x5C
        self._opad = bytes(k)

    def digest(self, *parts):
        h = sha256(self._ipad)
        for part in parts:
            h.update(part)
        h2 = sha256(self._opad)
        h2.update(h.digest())
        return h2.digest()


def hmac_sha256(key, msg):
    return Hmac256(key).digest(msg)
