"""RFC 6962 / RFC 9162 Merkle trees: hashing, roots, proofs, verification, appending.

Definitions (RFC 9162 §2.1.1), with H = SHA-256:

- leaf hash  = H(0x00 || data)
- node hash  = H(0x01 || left || right)
- MTH({})    = H("")                       (the empty tree)
- MTH(D[n])  = node(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two < n

Every function works on *leaf hashes* (32-byte values), never on the data itself, so a caller
hashes each item once (`leaf_hash`) and can store the result.

Three groups of functions:

1. Building (the gateway side): `root`, `inclusion_proof`, `consistency_proof` take the full list
   of leaf hashes. They are iterative and hash each subtree once: O(n) hashes per call and
   O(log n) extra memory beyond the caller's list. The `*_with` variants take a `RangeRoot`
   callable `(lo, hi) -> MTH(D[lo:hi])` instead of a list; they call it O(log n) times, only
   for ranges that are either a perfect subtree or the right border of the tree. Combined with
   `range_root_from_nodes` and the nodes that `CompactRange.append` reports, a store that keeps
   every perfect subtree node can answer proofs with O(log n) lookups (see "Ledger tree" below).
2. Verifying (the receipt side): `root_from_inclusion` / `root_from_consistency` compute, and
   `verify_inclusion` / `verify_consistency` compare. They follow RFC 9162 §2.1.3.2 and §2.1.4.2
   and raise `ProofError` with the reason. They never look at anything but their arguments.
3. Appending: `CompactRange` holds the roots of the perfect subtrees that make up a tree of any
   size (at most log2(n)+1 hashes), appends a leaf in O(log n) and gives the root; it
   serialises to bytes so a store can persist it next to the ledger head.

Ledger tree: the ledger has one entry per batch or device event, so even at one entry per
second it grows to only ~31 M entries a year. Two ways to prove inclusion in it:
- small ledgers: read all entry leaf hashes and call `inclusion_proof(hashes, i)` (O(n));
- any size: keep a table of perfect-subtree nodes ``(level, index) -> hash`` filled from the
  list returned by `CompactRange.append`, then call
  ``inclusion_proof_with(lambda lo, hi: range_root_from_nodes(get_node, lo, hi), i, size)``:
  O(log n) node lookups and at most log2(n) hashes, independent of n.
Node addressing: node (level L, index k) is the root of the perfect subtree over leaves
[k * 2**L, (k + 1) * 2**L); level 0 nodes are the leaf hashes themselves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from gateway.errors import AnchorError

__all__ = [
    "HASH_SIZE",
    "EMPTY_ROOT",
    "ProofError",
    "RangeRoot",
    "NodeGetter",
    "leaf_hash",
    "node_hash",
    "leaf_hashes",
    "root",
    "range_root",
    "inclusion_proof",
    "consistency_proof",
    "inclusion_proof_with",
    "consistency_proof_with",
    "range_root_from_nodes",
    "root_from_inclusion",
    "root_from_consistency",
    "verify_inclusion",
    "verify_consistency",
    "CompactRange",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256
_LEAF_PREFIX = _sha256(b"\x00")
_NODE_PREFIX = _sha256(b"\x01")

RangeRoot = Callable[[int, int], bytes]
"""`f(lo, hi)` returns MTH of leaves [lo, hi) (0 <= lo < hi)."""

NodeGetter = Callable[[int, int], bytes]
"""`f(level, index)` returns the stored hash of the perfect subtree node (level, index)."""


class ProofError(AnchorError):
    """A Merkle proof is malformed or does not lead to the expected root."""

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(
            what, hint or "the proof, the root or the tree size was altered or mismatched"
        )


# --------------------------------------------------------------------------- hashing


def leaf_hash(data: bytes | bytearray | memoryview) -> bytes:
    """SHA-256(0x00 || data): the RFC 6962 hash of one leaf."""
    h = _LEAF_PREFIX.copy()
    h.update(data)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the RFC 6962 hash of an interior node."""
    h = _NODE_PREFIX.copy()
    h.update(left)
    h.update(right)
    return h.digest()


def leaf_hashes(items: Iterable[bytes | bytearray | memoryview]) -> list[bytes]:
    """`[leaf_hash(x) for x in items]`, with the per-item call overhead taken out."""
    new = _LEAF_PREFIX.copy
    out: list[bytes] = []
    ap = out.append
    for x in items:
        h = new()
        h.update(x)
        ap(h.digest())
    return out


def _fold_levels(level: list[bytes]) -> bytes:
    """Root of a non-empty list of hashes: pair neighbours, carry an odd last one up.

    Pairing from the left and promoting the last odd node gives exactly the RFC split at the
    largest power of two below n, because every left part is a perfect subtree.
    """
    node = _NODE_PREFIX.copy
    while len(level) > 1:
        n = len(level)
        nxt: list[bytes] = []
        ap = nxt.append
        for i in range(0, n - 1, 2):
            h = node()
            h.update(level[i])
            h.update(level[i + 1])
            ap(h.digest())
        if n & 1:
            ap(level[-1])
        level = nxt
    return bytes(level[0])


def range_root(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH of hashes[lo:hi]. Requires 0 <= lo <= hi <= len(hashes); empty range = EMPTY_ROOT."""
    if not 0 <= lo <= hi <= len(hashes):
        raise ValueError(f"range [{lo}, {hi}) is outside a list of {len(hashes)} leaves")
    if lo == hi:
        return EMPTY_ROOT
    return _fold_levels(list(hashes[lo:hi]))


def root(hashes: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes; SHA-256(b"") for the empty list. O(n) hashes."""
    if not hashes:
        return EMPTY_ROOT
    return _fold_levels(list(hashes))


def _split(n: int) -> int:
    """The largest power of two strictly below n. Requires n >= 2."""
    return 1 << ((n - 1).bit_length() - 1)


# --------------------------------------------------------------------------- building proofs


def inclusion_proof_with(range_root_fn: RangeRoot, index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 §2.1.3.1, leaf to root order.

    Requires 0 <= index < size. `range_root_fn(lo, hi)` must return MTH(D[lo:hi]); it is called
    once per proof element, only for perfect subtrees or for the tree's right border.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    out: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            out.append(range_root_fn(lo + k, hi))
            hi = lo + k
        else:
            out.append(range_root_fn(lo, lo + k))
            lo += k
    out.reverse()
    return out


def consistency_proof_with(range_root_fn: RangeRoot, size1: int, size2: int) -> list[bytes]:
    """PROOF(size1, D[size2]) of RFC 9162 §2.1.4.1 (SUBPROOF with b = true).

    Requires 0 < size1 <= size2; size1 == size2 gives the empty proof. `range_root_fn` as for
    `inclusion_proof_with`.
    """
    if not 0 < size1 <= size2:
        raise ValueError(f"no consistency proof from size {size1} to size {size2}")
    out: list[bytes] = []
    lo, hi, m, complete = 0, size2, size1, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            out.append(range_root_fn(lo + k, hi))
            hi = lo + k
        else:
            out.append(range_root_fn(lo, lo + k))
            lo += k
            m -= k
            complete = False
    if not complete:
        out.append(range_root_fn(lo, hi))
    out.reverse()
    return out


def inclusion_proof(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Inclusion proof of leaf `index` in the tree of all `hashes`. Requires 0 <= index < n.

    O(n) hashes in total (each leaf outside the path is hashed once).
    """
    return inclusion_proof_with(lambda lo, hi: range_root(hashes, lo, hi), index, len(hashes))


def consistency_proof(hashes: Sequence[bytes], size1: int, size2: int) -> list[bytes]:
    """Consistency proof between the trees of hashes[:size1] and hashes[:size2].

    Requires 0 < size1 <= size2 <= len(hashes). O(size2) hashes.
    """
    if size2 > len(hashes):
        raise ValueError(f"tree size {size2} exceeds the {len(hashes)} leaves given")
    return consistency_proof_with(lambda lo, hi: range_root(hashes, lo, hi), size1, size2)


def range_root_from_nodes(get_node: NodeGetter, lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) from stored perfect-subtree nodes, for the ranges proofs ask for.

    Requires 0 <= lo < hi and lo a multiple of the largest power of two <= hi - lo (true of
    every range `inclusion_proof_with`/`consistency_proof_with` request). The range is cut into
    perfect subtrees, largest first, and folded from the right: at most log2(n) lookups and
    hashes.
    """
    n = hi - lo
    if n <= 0:
        raise ValueError(f"empty or reversed range [{lo}, {hi})")
    parts: list[bytes] = []
    pos = lo
    while pos < hi:
        level = (hi - pos).bit_length() - 1
        width = 1 << level
        if pos % width:
            raise ValueError(f"range [{lo}, {hi}) is not aligned to perfect subtrees")
        parts.append(get_node(level, pos >> level))
        pos += width
    acc = parts[-1]
    for h in reversed(parts[:-1]):
        acc = node_hash(h, acc)
    return acc


# --------------------------------------------------------------------------- verifying proofs


def _check_hash(value: object, what: str) -> bytes:
    """`value` as bytes if it is a 32-byte hash; ProofError otherwise."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ProofError(f"{what} is a {type(value).__name__}, not a {HASH_SIZE}-byte hash")
    b = bytes(value)
    if len(b) != HASH_SIZE:
        raise ProofError(f"{what} is {len(b)} bytes, not a {HASH_SIZE}-byte SHA-256 hash")
    return b


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root implied by an inclusion proof (RFC 9162 §2.1.3.2), without comparing it.

    Requires 0 <= index < size; the proof must have exactly the length the tree shape implies.
    Raises ProofError otherwise.
    """
    if index < 0 or size < 0 or index >= size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    r = _check_hash(leaf, "the leaf hash")
    fn, sn = index, size - 1
    for i, item in enumerate(proof):
        p = _check_hash(item, f"proof element {i}")
        if sn == 0:
            raise ProofError(
                f"inclusion proof has {len(proof)} elements, more than a tree of size {size} needs"
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(
            f"inclusion proof has {len(proof)} elements, too few for leaf {index} of {size}"
        )
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> None:
    """Check that `leaf` is leaf number `index` of the tree of `size` with `expected_root`.

    Raises ProofError with the reason; returns None when the proof holds.
    """
    got = root_from_inclusion(leaf, index, size, proof)
    if got != expected_root:
        raise ProofError(
            f"inclusion proof for leaf {index} of {size} leads to root {got.hex()}, "
            f"not the expected {bytes(expected_root).hex()}"
        )


def root_from_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes
) -> bytes:
    """Check the old-root half of a consistency proof and return the new root it implies.

    RFC 9162 §2.1.4.2. Requires 0 < size1 < size2 and a non-empty proof of the right length;
    the proof must reproduce `root1`. Raises ProofError otherwise.
    """
    if size1 <= 0 or size2 <= size1:
        raise ProofError(f"no consistency proof exists from size {size1} to size {size2}")
    if not proof:
        raise ProofError(f"consistency proof from {size1} to {size2} is empty")
    path = [_check_hash(p, f"proof element {i}") for i, p in enumerate(proof)]
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: its root is a node of the new tree
        path.insert(0, bytes(root1))
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(
                f"consistency proof from {size1} to {size2} has too many elements ({len(proof)})"
            )
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(
            f"consistency proof from {size1} to {size2} has too few elements ({len(proof)})"
        )
    if fr != root1:
        raise ProofError(
            f"consistency proof does not reproduce the old root of size {size1} "
            f"(got {fr.hex()}, expected {bytes(root1).hex()})"
        )
    return sr


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree (size2, root2) extends the tree (size1, root1).

    Requires 0 < size1 <= size2. Equal sizes need an empty proof and equal roots. A proof from
    size 0 is refused: an empty tree is trivially a prefix of everything, so a caller with no
    trusted state has nothing to check (this matches the public RFC 6962 test vectors).
    Raises ProofError with the reason.
    """
    if size1 < 0 or size2 < 0:
        raise ProofError(f"negative tree size ({size1}, {size2})")
    if size2 < size1:
        raise ProofError(f"new tree size {size2} is smaller than old tree size {size1}")
    if size1 == 0:
        raise ProofError(
            "consistency with an empty old tree (size 0) proves nothing",
            "start from a checkpoint of size 1 or more",
        )
    if size1 == size2:
        if proof:
            raise ProofError(f"sizes are equal ({size1}) but the proof has {len(proof)} elements")
        if root1 != root2:
            raise ProofError(f"two different roots for the same tree size {size1}")
        return
    got = root_from_consistency(size1, size2, proof, root1)
    if got != root2:
        raise ProofError(
            f"consistency proof leads to new root {got.hex()}, "
            f"not the expected {bytes(root2).hex()} of size {size2}"
        )


# --------------------------------------------------------------------------- appending


class CompactRange:
    """The right border of a tree of `size` leaves: the roots of its perfect subtrees.

    For size = 2**a + 2**b + ... (a > b > ...), `hashes` holds the roots of the subtrees over
    [0, 2**a), [2**a, 2**a + 2**b), ... in that order: exactly popcount(size) hashes. Appending
    merges equal-sized subtrees like a binary counter: O(log n) hashes, no leaf is reread.

    Serialised form (`to_bytes`): 8-byte big-endian size followed by the hashes, 32 bytes each.
    """

    __slots__ = ("_size", "_hashes")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0:
            raise ValueError(f"negative tree size {size}")
        hs = [bytes(h) for h in hashes]
        if len(hs) != size.bit_count():
            raise ValueError(
                f"a compact range of size {size} needs {size.bit_count()} hashes, got {len(hs)}"
            )
        for h in hs:
            if len(h) != HASH_SIZE:
                raise ValueError(f"compact range hash is {len(h)} bytes, not {HASH_SIZE}")
        self._size = size
        self._hashes = hs

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> list[bytes]:
        """A copy of the perfect-subtree roots, largest (leftmost) first."""
        return list(self._hashes)

    @classmethod
    def from_leaves(cls, hashes: Iterable[bytes]) -> CompactRange:
        """The compact range of a tree built from these leaf hashes."""
        cr = cls()
        for h in hashes:
            cr.append(h)
        return cr

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Append one leaf hash. Returns the perfect-subtree nodes completed by this append as
        (level, index, hash), starting with the leaf itself at level 0 (see the module doc for
        node addressing). A store may keep them to answer proofs in O(log n)."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hash is {len(leaf)} bytes, not {HASH_SIZE}")
        index = self._size
        acc = bytes(leaf)
        new = [(0, index, acc)]
        level = 0
        while (index >> level) & 1:  # merge while the subtree at this level is complete
            acc = node_hash(self._hashes.pop(), acc)
            level += 1
            new.append((level, index >> level, acc))
        self._hashes.append(acc)
        self._size += 1
        return new

    def root(self) -> bytes:
        """MTH of the whole tree (EMPTY_ROOT when size is 0). At most log2(n) hashes."""
        if not self._hashes:
            return EMPTY_ROOT
        acc = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            acc = node_hash(h, acc)
        return acc

    def copy(self) -> CompactRange:
        return CompactRange(self._size, self._hashes)

    def to_bytes(self) -> bytes:
        return self._size.to_bytes(8, "big") + b"".join(self._hashes)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> CompactRange:
        """Inverse of `to_bytes`; raises ValueError on a malformed blob."""
        data = bytes(data)
        if len(data) < 8 or (len(data) - 8) % HASH_SIZE:
            raise ValueError(f"compact range blob has a bad length ({len(data)} bytes)")
        size = int.from_bytes(data[:8], "big")
        hs = [data[i : i + HASH_SIZE] for i in range(8, len(data), HASH_SIZE)]
        return cls(size, hs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    def __hash__(self) -> int:
        return hash((self._size, tuple(self._hashes)))

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, hashes={len(self._hashes)})"
