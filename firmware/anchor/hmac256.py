# HMAC-SHA-256 (RFC 2104) on hashlib.sha256. micropython-lib's hmac is not installable on the
# devices, and this is all RFC 6979 needs.
#
#   Hmac256(key).digest(*parts) -> 32 bytes   the MAC of the concatenated parts
#   hmac_sha256(key, msg) -> 32 bytes
#
# The implementation is p256.hmac_sha256 (multi-part): RFC 6979 in p256.py is its one user on a
# device, and a module of its own would cost the device loop RAM. This module keeps the API.

from anchor.p256 import hmac_sha256 as _mac


class Hmac256:
    def __init__(self, key):
        self._key = key

    def digest(self, *parts):
        return _mac(self._key, *parts)


def hmac_sha256(key, msg):
    return _mac(key, msg)
