"""ES256 verification (P-256, SHA-256, 64-byte r||s) in a thread pool.

`cryptography` releases the GIL while it verifies, so a pool of threads (one per core) verifies
in parallel; the Python around each call (splitting r||s, DER-encoding it for `cryptography`)
still holds the GIL, so the work is handed out in chunks of messages per task to keep the
per-task overhead small.

Policy (docs/gateway.md):
* r and s must be in 1..n-1 (else `bad_signature`);
* s must be at most n/2: the firmware emits low-S, so a high-S signature is the malleated twin of
  a valid one and is refused as `high_s` even though plain ECDSA would accept it;
* anything `cryptography` refuses is `bad_signature`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.errors import ConfigError

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
HALF_N = P256_N // 2
ES256 = ec.ECDSA(hashes.SHA256())
CHUNK = 256

PublicKey = ec.EllipticCurvePublicKey
T = TypeVar("T")
R = TypeVar("R")


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


def check_signature(key: PublicKey, to_be_signed: bytes, signature: bytes) -> str | None:
    """Verify one ES256 signature. Returns None when valid, else the rejection reason
    (`bad_signature_length`, `bad_signature` or `high_s`)."""
    if len(signature) != 64:
        return "bad_signature_length"
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < P256_N and 0 < s < P256_N):
        return "bad_signature"
    if s > HALF_N:
        return "high_s"
    try:
        key.verify(encode_dss_signature(r, s), to_be_signed, ES256)
    except InvalidSignature:
        return "bad_signature"
    return None


def chunked(items: Sequence[T], size: int = CHUNK) -> list[Sequence[T]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class VerifierPool:
    """A thread pool that maps a function over chunks of work, keeping the order.

    `workers` defaults to the number of cores. `map_chunks(fn, items)` splits items into chunks
    of `chunk` and returns the concatenated results of fn(chunk) in input order.
    """

    def __init__(self, workers: int | None = None, chunk: int = CHUNK) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.chunk = chunk
        self._pool: ThreadPoolExecutor | None = None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="verify")
        return self._pool

    def map_chunks(self, fn: Callable[[Sequence[T]], list[R]], items: Sequence[T]) -> list[R]:
        out: list[R] = []
        for part in self.iter_chunks(fn, items):
            out.extend(part)
        return out

    def iter_chunks(self, fn: Callable[[Sequence[T]], list[R]],
                    items: Sequence[T]) -> Iterator[list[R]]:
        """fn over chunks of items on the pool, started at once; the returned iterator yields
        each chunk's results in input order as soon as it is ready, so the caller can work on
        chunk k (or on anything else) while the pool verifies the rest."""
        if not items:
            return iter(())
        if self.workers == 1 or len(items) <= 16:
            # one worker, or too little work: a pool hop costs more than it saves (run lazily,
            # on the caller's thread, when the results are asked for)
            return (fn(part) for part in (items,))
        size = min(self.chunk, max(16, -(-len(items) // self.workers)))
        return self._executor().map(fn, chunked(items, size))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_all(pool: VerifierPool,
               work: Iterable[tuple[PublicKey, bytes, bytes]]) -> list[str | None]:
    """Verify (key, to_be_signed, signature) triples on the pool; reasons in input order."""
    items = list(work)

    def run(chunk: Sequence[tuple[PublicKey, bytes, bytes]]) -> list[str | None]:
        return [check_signature(k, m, s) for k, m, s in chunk]

    return pool.map_chunks(run, items)
