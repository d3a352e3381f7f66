"""A batch of readings as the ledger stores it: its RFC 6962 tree cut into 16-leaf groups.

A batch stores its root and the roots of its consecutive GROUP-leaf groups (the last one
partial), so an inclusion proof needs at most GROUP readings plus the group roots. RFC 6962
trees are left-packed, so every full group is a perfect subtree and the partial tail is the
rightmost one: the batch root is `merkle.root(batch_nodes(leaves))`.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.ledger import merkle
from gateway.ledger.entry import batch_entry

GROUP = 16  # leaves per stored group root


def batch_nodes(leaves: Sequence[bytes]) -> list[bytes]:
    """Roots of consecutive GROUP-leaf groups of `leaves` (the last may be partial)."""
    return [merkle.root(leaves[i:i + GROUP]) for i in range(0, len(leaves), GROUP)]


def split_nodes(blob: bytes) -> list[bytes]:
    """The stored group roots (32 bytes each, concatenated) as a list."""
    return [blob[i:i + 32] for i in range(0, len(blob), 32)]


def make_batch_entry(size: int, last_hash: bytes, root: bytes, n: int, t: int) -> bytes:
    """The bytes of the batch entry appended at ledger size `size` after the entry whose hash
    is `last_hash`."""
    return batch_entry(size, last_hash, root, n, t)
