"""Valid signed readings made in CPython, for the gateway's tests and benches.

Built independently of the firmware and of gateway/loadgen.py: the Reading and the protected
header are encoded with cbor2 (canonical=True, RFC 8949 deterministic encoding), the signature
with `cryptography`. The signing function is pluggable (`sign=`): the default is
`cryptography`'s ECDSA (deterministic RFC 6979 where the installed version offers it, random
nonces otherwise), always normalised to low-S; pass any `(key, to_be_signed) -> r||s` to swap it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.wire.cose import sig_structure

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ZERO = bytes(32)

SignFn = Callable[[ec.EllipticCurvePrivateKey, bytes], bytes]


def _ecdsa_alg() -> ec.ECDSA:
    try:
        return ec.ECDSA(hashes.SHA256(), deterministic_signing=True)  # type: ignore[call-arg]
    except TypeError:  # cryptography < 44: random nonces, still a valid signature
        return ec.ECDSA(hashes.SHA256())


_ALG = _ecdsa_alg()


def sign_low_s(key: ec.EllipticCurvePrivateKey, tbs: bytes) -> bytes:
    """ES256 signature r||s (64 bytes) with s <= n/2."""
    r, s = decode_dss_signature(key.sign(tbs, _ALG))
    if s > N // 2:
        s = N - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def high_s_twin(message: bytes) -> bytes:
    """The same message with s replaced by n - s: valid ECDSA, refused by policy."""
    sig = message[-64:]
    s = int.from_bytes(sig[32:], "big")
    return message[:-32] + (N - s).to_bytes(32, "big")


def cose_sign1(protected: bytes, payload: bytes, signature: bytes,
               unprotected: dict[Any, Any] | None = None) -> bytes:
    return cbor2.dumps(
        cbor2.CBORTag(18, [protected, unprotected or {}, payload, signature]), canonical=True
    )


@dataclass
class Device:
    """A device with its own key, seq and prev chain."""

    id: str
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    seq: int = 0
    prev: bytes = ZERO
    sign: SignFn = sign_low_s

    @property
    def public_hex(self) -> str:
        return self.public_bytes.hex()

    @property
    def public_bytes(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def message(self, seq: int, prev: bytes, data: dict[str, Any] | None = None,
                ts: int | None = 1_700_000_000, *, dev: str | None = None,
                alg: int = -7, kid: str | None = None, extra: dict[str, Any] | None = None,
                ) -> bytes:
        """One signed reading with explicit fields (no state change). Overrides make
        deliberately wrong messages that are still correctly signed."""
        reading: dict[str, Any] = {"v": 1, "dev": dev or self.id, "seq": seq, "prev": prev,
                                   "data": data if data is not None else {"t": 21.5}}
        if ts is not None:
            reading["ts"] = ts
        if extra:
            reading.update(extra)
        payload = cbor2.dumps(reading, canonical=True)
        protected = cbor2.dumps({1: alg, 4: (kid or self.id).encode()}, canonical=True)
        sig = self.sign(self.key, sig_structure(protected, payload))
        return cose_sign1(protected, payload, sig)

    def next(self, data: dict[str, Any] | None = None, ts: int | None = 1_700_000_000) -> bytes:
        """The device's next reading: seq and prev advance like the firmware's."""
        msg = self.message(self.seq, self.prev, data, ts)
        self.seq += 1
        self.prev = hashlib.sha256(msg).digest()
        return msg

    def readings(self, n: int) -> list[bytes]:
        return [self.next({"t": 20 + (self.seq % 50) / 4, "h": self.seq % 100}) for _ in range(n)]
