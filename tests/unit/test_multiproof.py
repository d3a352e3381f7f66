"""Multi-leaf proofs (gateway/ledger/multiproof.py) against plain RFC 6962 roots."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.ledger import merkle
from gateway.ledger.multiproof import multiproof, root_from_multiproof


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(hashlib.sha256(b"%d" % i).digest()) for i in range(n)]


@given(st.integers(1, 70).flatmap(
    lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1), min_size=1))))
def test_any_subset_gives_the_root(case: tuple[int, set[int]]) -> None:
    n, chosen = case
    leaves = _leaves(n)
    idx = sorted(chosen)
    proof = multiproof(lambda lo, hi: merkle.range_root(leaves, lo, hi), idx, n)
    assert root_from_multiproof([leaves[i] for i in idx], idx, n, proof) == merkle.root(leaves)
    if len(idx) == n:
        assert proof == []  # every leaf given: nothing to prove
    # a changed leaf, or a proof hash dropped or added, no longer gives the root
    bad = [leaves[i] for i in idx]
    bad[0] = bytes(32)
    assert root_from_multiproof(bad, idx, n, proof) != merkle.root(leaves)
    with pytest.raises(merkle.ProofError):
        root_from_multiproof([leaves[i] for i in idx], idx, n, [*proof, bytes(32)])
    if proof:
        with pytest.raises(merkle.ProofError):
            root_from_multiproof([leaves[i] for i in idx], idx, n, proof[:-1])


def test_it_is_smaller_than_separate_proofs() -> None:
    n = 4096
    leaves = _leaves(n)
    idx = list(range(0, n, 20))  # one device of 20, interleaved
    proof = multiproof(lambda lo, hi: merkle.range_root(leaves, lo, hi), idx, n)
    separate = sum(len(merkle.inclusion_proof(leaves, i)) for i in idx)
    assert len(proof) < separate / 2
    assert root_from_multiproof([leaves[i] for i in idx], idx, n, proof) == merkle.root(leaves)


def test_bad_indices_are_refused() -> None:
    leaves = _leaves(4)
    for idx in ([1, 1], [2, 1], [4], [-1]):
        with pytest.raises(merkle.ProofError):
            multiproof(lambda lo, hi: merkle.range_root(leaves, lo, hi), idx, 4)
