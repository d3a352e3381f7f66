"""ES256 (ECDSA over P-256 with SHA-256) with the gateway's policy: a 64-byte r||s signature,
0 < r, s < n, and low-S (s <= n/2: the firmware signs low-S only, so a high-S signature is the
malleated twin of a valid one, docs/security.md). One implementation for the pipeline, the
audit and the offline receipt check.

Reasons (docs/gateway.md): r or s outside 1..n-1, or anything `cryptography` refuses, is
`bad_signature`; s above n/2 is `high_s`, although plain ECDSA would accept it; a signature
that is not 64 bytes is `bad_signature_length`.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import ConfigError
from gateway.wire.cose import HALF_N, P256_N

PublicKey = ec.EllipticCurvePublicKey
ES256 = ec.ECDSA(hashes.SHA256())


def load_public_key(point: bytes) -> PublicKey:
    """A P-256 public key from its SEC1 encoding (65-byte uncompressed or 33-byte compressed)."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"not a P-256 public key ({len(point)} bytes): {e}",
            "give the device's 65-byte SEC1 point (130 hex characters, as `keygen` prints)",
        ) from None


def point_bytes(key: PublicKey) -> bytes:
    """The 65-byte uncompressed SEC1 encoding of a P-256 public key."""
    return key.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)


_N_BYTES = P256_N.to_bytes(32, "big")
_HALF_N_BYTES = HALF_N.to_bytes(32, "big")
_ZERO = bytes(32)


def _der_int(b: bytes) -> bytes:
    b = b.lstrip(b"\x00")
    return b"\x00" + b if b[0] & 0x80 else b


def check_signature(key: PublicKey, to_be_signed: bytes, signature: bytes) -> str | None:
    """Verify one ES256 signature. Returns None when valid, else the rejection reason
    (`bad_signature_length`, `bad_signature` or `high_s`). The range checks compare the 32-byte
    big-endian halves as bytes (the same order as the numbers) and the DER form `cryptography`
    wants is built directly: half the cost of converting to ints and back."""
    if len(signature) != 64:
        return "bad_signature_length"
    r, s = signature[:32], signature[32:]
    if not (_ZERO < r < _N_BYTES and _ZERO < s < _N_BYTES):
        return "bad_signature"
    if s > _HALF_N_BYTES:
        return "high_s"
    r, s = _der_int(r), _der_int(s)
    try:
        key.verify(b"\x30%c\x02%c%b\x02%c%b" % (len(r) + len(s) + 4, len(r), r, len(s), s),
                   to_be_signed, ES256)
    except InvalidSignature:
        return "bad_signature"
    return None
