"""Signing readings exactly as the firmware does, in CPython (the load engine, tests, benches).

The same key, seq, ts, prev and data give the same bytes as `firmware/main.py sign`: a tagged
COSE_Sign1 (ES256) over the deterministically encoded Reading (`gateway.wire.cbor`), signed with
RFC 6979 deterministic ECDSA (`cryptography`'s `deterministic_signing=True`) and normalised to
low-S. tests/unit/test_loadgen_firmware.py checks this byte for byte against the firmware.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.errors import ConfigError
from gateway.wire.cbor import append_head, encode
from gateway.wire.cose import ALG_ES256, P256_N, ZERO_PREV, sig_structure

__all__ = ["ZERO_PREV", "DeviceSigner", "protected_header", "reading_payload"]


def protected_header(kid: str) -> bytes:
    return encode({1: ALG_ES256, 4: kid.encode()})


def reading_payload(
    dev: str, seq: int, prev: bytes, data: Mapping[str, int | float], ts: int | None = None
) -> bytes:
    reading: dict[str, Any] = {"v": 1, "dev": dev, "seq": seq, "prev": prev, "data": dict(data)}
    if ts is not None:
        reading["ts"] = ts
    return encode(reading)


class DeviceSigner:
    """A device's P-256 key; signs readings exactly like the firmware."""

    def __init__(self, dev: str, secret: bytes) -> None:
        if len(secret) != 32:
            raise ConfigError(
                f"device secret for {dev} is {len(secret)} bytes", "give a 32-byte P-256 secret"
            )
        self.dev = dev
        self.secret = secret
        self._key = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256R1())
        self._protected = protected_header(dev)
        self._algo = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)

    @classmethod
    def generate(cls, dev: str) -> DeviceSigner:
        while True:
            secret = os.urandom(32)
            if 0 < int.from_bytes(secret, "big") < P256_N:
                return cls(dev, secret)

    @property
    def public_key(self) -> bytes:
        """65-byte uncompressed SEC1 point, as the firmware's keygen prints it (in hex)."""
        nums = self._key.public_key().public_numbers()
        return b"\x04" + nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")

    def sign_payload(self, payload: bytes) -> bytes:
        """The whole tagged COSE_Sign1 message for a given payload."""
        tbs = sig_structure(self._protected, payload)
        r, s = decode_dss_signature(self._key.sign(tbs, self._algo))
        if s > P256_N // 2:
            s = P256_N - s
        out = bytearray(b"\xd2\x84")  # tag 18, array of 4
        append_head(2, len(self._protected), out)
        out += self._protected
        out.append(0xA0)  # unprotected: {}
        append_head(2, len(payload), out)
        out += payload
        out += b"\x58\x40"
        out += r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return bytes(out)

    def sign(
        self, seq: int, prev: bytes, data: Mapping[str, int | float], ts: int | None = None
    ) -> bytes:
        return self.sign_payload(reading_payload(self.dev, seq, prev, data, ts))
