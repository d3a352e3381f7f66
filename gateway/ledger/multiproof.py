"""Inclusion of many leaves in one RFC 6962 tree with one shared proof (a multi-leaf proof).

A proof for the sorted leaf indices I of a tree of `size` leaves is the list of the roots of
the maximal subtrees (in the RFC 6962 split, RFC 9162 §2.1.1) that hold no leaf of I, in
depth-first, left-to-right order. A subtree whose leaves are all in I contributes nothing: the
verifier computes it from the leaves. So proving every leaf of a tree costs no hash at all,
and proving k scattered leaves costs about k·log2(size/k) hashes instead of k·log2(size).

`multiproof(range_root, indices, size)` builds one from a `merkle.RangeRoot` callable;
`root_from_multiproof(leaves, indices, size, proof)` recomputes the root from the leaf hashes
of those indices (in index order) and the proof, raising `merkle.ProofError` on a malformed
proof. Both recurse only along the subtrees that hold a leaf of I (depth <= log2(size)).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from gateway.ledger import merkle

__all__ = ["multiproof", "root_from_multiproof", "check_indices"]


def _split(n: int) -> int:
    """The largest power of two below n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def check_indices(indices: Sequence[int], size: int) -> None:
    """Raise ProofError unless indices are strictly increasing, each in [0, size)."""
    last = -1
    for i in indices:
        if type(i) is not int or not last < i < size:
            raise merkle.ProofError(f"leaf index {i!r} is not above {last} and below {size}")
        last = i


def multiproof(range_root: merkle.RangeRoot, indices: Sequence[int], size: int) -> list[bytes]:
    """The shared proof of leaves `indices` (strictly increasing) in a tree of `size` leaves;
    `range_root(lo, hi)` gives MTH of leaves [lo, hi)."""
    check_indices(indices, size)
    out: list[bytes] = []

    def walk(lo: int, hi: int, a: int, b: int) -> None:
        if a == b:
            out.append(range_root(lo, hi))
            return
        if b - a == hi - lo:
            return
        k = lo + _split(hi - lo)
        m = bisect_left(indices, k, a, b)
        walk(lo, k, a, m)
        walk(k, hi, m, b)

    if size:
        walk(0, size, 0, len(indices))
    return out


def root_from_multiproof(leaves: Sequence[bytes], indices: Sequence[int], size: int,
                         proof: Sequence[bytes]) -> bytes:
    """The tree root from the leaf hashes at `indices` (leaves[j] is leaf indices[j]) and the
    shared proof. Raises ProofError when the inputs cannot make a root (wrong counts, bad
    indices, hashes that are not 32 bytes)."""
    if len(leaves) != len(indices):
        raise merkle.ProofError(f"{len(leaves)} leaves for {len(indices)} indices")
    if not indices:
        raise merkle.ProofError("a multi-leaf proof needs at least one leaf")
    check_indices(indices, size)
    for h in leaves:
        if type(h) is not bytes or len(h) != merkle.HASH_SIZE:
            raise merkle.ProofError("a leaf hash is not 32 bytes")
    used = 0

    def walk(lo: int, hi: int, a: int, b: int) -> bytes:
        nonlocal used
        if a == b:
            if used >= len(proof):
                raise merkle.ProofError(f"the proof has {len(proof)} hashes, too few")
            h = proof[used]
            used += 1
            if type(h) is not bytes or len(h) != merkle.HASH_SIZE:
                raise merkle.ProofError(f"proof hash {used - 1} is not 32 bytes")
            return h
        if b - a == hi - lo:
            return merkle.root(leaves[a:b])
        k = lo + _split(hi - lo)
        m = bisect_left(indices, k, a, b)
        return merkle.node_hash(walk(lo, k, a, m), walk(k, hi, m, b))

    root = walk(0, size, 0, len(indices))
    if used != len(proof):
        raise merkle.ProofError(f"the proof has {len(proof)} hashes, {used} were needed")
    return root
