"""Property tests: every generated proof verifies, every altered one fails."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from protos import merkle
from protos.errors import ProofError


def _reference_root(leaves: list[bytes]) -> bytes:
    """MTH straight from RFC 9162 section 2.1.1, recursively."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return merkle.node_hash(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


def _tree(n: int) -> merkle.MemoryTree:
    return merkle.MemoryTree([merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)])


@given(st.integers(min_value=0, max_value=300))
def test_roots_match_the_rfc_definition(n: int) -> None:
    tree = _tree(n)
    want = _reference_root(tree.levels[0]) if n else merkle.EMPTY_ROOT
    assert tree.root() == want
    frontier = merkle.Frontier()
    frontier.extend(tree.levels[0])
    assert frontier.root() == want
    assert merkle.Frontier.load(n, tree.subtree).root() == want


@given(st.data())
def test_inclusion_proofs_verify_and_alterations_fail(data: st.DataObject) -> None:
    size = data.draw(st.integers(min_value=1, max_value=257))
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    tree = _tree(size)
    leaf, root = tree.subtree(0, index), tree.root()
    proof = merkle.inclusion_proof(index, size, tree.subtree)
    merkle.verify_inclusion(leaf, index, size, proof, root)
    wrong_index = data.draw(
        st.integers(min_value=0, max_value=size - 1).filter(lambda i: i != index)
    )
    try:
        merkle.verify_inclusion(leaf, wrong_index, size, proof, root)
    except ProofError:
        pass
    else:  # only possible if both leaves share a path, which distinct leaves never do
        raise AssertionError("proof verified at the wrong index")
    if proof:
        at = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad = list(proof)
        bad[at] = bytes([bad[at][0] ^ 1]) + bad[at][1:]
        try:
            merkle.verify_inclusion(leaf, index, size, bad, root)
        except ProofError:
            pass
        else:
            raise AssertionError("altered proof verified")
    # A path longer than the tree is deep never verifies.
    try:
        merkle.verify_inclusion(leaf, index, size, [*proof, root], root)
    except ProofError:
        pass
    else:
        raise AssertionError("over-long proof verified")


@given(st.data())
def test_consistency_proofs_verify_and_alterations_fail(data: st.DataObject) -> None:
    new = data.draw(st.integers(min_value=1, max_value=257))
    old = data.draw(st.integers(min_value=1, max_value=new))
    tree = _tree(new)
    proof = merkle.consistency_proof(old, new, tree.subtree)
    merkle.verify_consistency(old, new, proof, tree.root(old), tree.root(new))
    if old == new:
        assert proof == []
        return
    forked = merkle.MemoryTree(
        [*tree.levels[0][: old - 1], merkle.leaf_hash(b"forged"), *tree.levels[0][old:]]
    )
    for old_root, new_root in (
        (forked.root(old), tree.root(new)),
        (tree.root(old), forked.root(new)),
    ):
        try:
            merkle.verify_consistency(old, new, proof, old_root, new_root)
        except ProofError:
            continue
        raise AssertionError("consistency verified against a forked root")
    try:
        merkle.verify_consistency(old, new, proof[:-1], tree.root(old), tree.root(new))
    except ProofError:
        pass
    else:
        raise AssertionError("truncated proof verified")
