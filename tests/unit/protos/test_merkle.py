"""RFC 9162 hashing and proofs: peer vectors, known answers, edge cases."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from protos import merkle
from protos.errors import ProofError

VECTORS = Path(__file__).resolve().parents[2] / "data" / "merkle-vectors"
# RFC 6962 / transparency-dev test leaves and their roots.
LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def _vectors(kind: str) -> list[Any]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    assert len(files) > 50, f"peer vectors missing under {VECTORS / kind}"
    return [pytest.param(json.loads(f.read_text()), id=str(f.relative_to(VECTORS))) for f in files]


@pytest.mark.parametrize("vec", _vectors("inclusion"))
def test_inclusion_vectors(vec: dict[str, Any]) -> None:
    proof = [_b64(h) for h in vec["proof"] or []]
    args = (_b64(vec["leafHash"]), vec["leafIdx"], vec["treeSize"], proof, _b64(vec["root"]))
    if vec["wantErr"]:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(*args)
    else:
        merkle.verify_inclusion(*args)


@pytest.mark.parametrize("vec", _vectors("consistency"))
def test_consistency_vectors(vec: dict[str, Any]) -> None:
    proof = [_b64(h) for h in vec["proof"] or []]
    args = (vec["size1"], vec["size2"], proof, _b64(vec["root1"]), _b64(vec["root2"]))
    if vec["wantErr"]:
        with pytest.raises(ProofError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


def test_vectors_keep_their_licence() -> None:
    assert "Apache License" in (VECTORS / "LICENSE").read_text()
    assert (VECTORS / "README.md").is_file()


@pytest.mark.parametrize("size", range(1, len(LEAVES) + 1))
def test_known_roots(size: int) -> None:
    leaves = [merkle.leaf_hash(x) for x in LEAVES[:size]]
    assert merkle.MemoryTree(leaves).root().hex() == ROOTS[size - 1]
    frontier = merkle.Frontier()
    frontier.extend(leaves)
    assert frontier.root().hex() == ROOTS[size - 1]


def test_empty_tree_root_is_hash_of_nothing() -> None:
    assert merkle.Frontier().root().hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert merkle.root(0, lambda level, index: b"unused") == merkle.EMPTY_ROOT


def test_known_inclusion_proof_rfc_example() -> None:
    # RFC 9162 section 2.1.5: the audit path for d3 in the 7-leaf tree is [c, g, l].
    leaves = [merkle.leaf_hash(x) for x in LEAVES[:7]]
    tree = merkle.MemoryTree(leaves)
    g = merkle.node_hash(leaves[0], leaves[1])
    l_ = merkle.node_hash(merkle.node_hash(leaves[4], leaves[5]), leaves[6])
    proof = merkle.inclusion_proof(3, 7, tree.subtree)
    assert proof == [leaves[2], g, l_]
    merkle.verify_inclusion(leaves[3], 3, 7, proof, bytes.fromhex(ROOTS[6]))
    proof = merkle.inclusion_proof(2, 7, tree.subtree)
    assert proof == [leaves[3], g, l_]
    merkle.verify_inclusion(leaves[2], 2, 7, proof, bytes.fromhex(ROOTS[6]))


def test_known_consistency_proof_rfc_example() -> None:
    # PROOF(3, D[7]) = [c, d, g, l] in RFC 9162 section 2.1.5.
    leaves = [merkle.leaf_hash(x) for x in LEAVES[:7]]
    tree = merkle.MemoryTree(leaves)
    c, d = leaves[2], leaves[3]
    g = merkle.node_hash(leaves[0], leaves[1])
    l_ = merkle.node_hash(merkle.node_hash(leaves[4], leaves[5]), leaves[6])
    assert merkle.consistency_proof(3, 7, tree.subtree) == [c, d, g, l_]
    merkle.verify_consistency(3, 7, [c, d, g, l_], tree.root(3), tree.root(7))


@pytest.mark.parametrize(
    ("index", "size"), [(0, 0), (3, 3), (-1, 4)], ids=["empty", "at-size", "negative"]
)
def test_inclusion_proof_rejects_out_of_range(index: int, size: int) -> None:
    with pytest.raises(ValueError, match="not in a tree"):
        merkle.inclusion_proof(index, size, lambda level, i: b"")
    with pytest.raises(ProofError):
        merkle.verify_inclusion(bytes(32), index, size, [], bytes(32))


@pytest.mark.parametrize(("old", "new"), [(0, 4), (5, 4), (-1, 2)])
def test_consistency_proof_rejects_bad_sizes(old: int, new: int) -> None:
    with pytest.raises(ValueError, match="no consistency proof"):
        merkle.consistency_proof(old, new, lambda level, i: b"")


def test_verify_rejects_short_hashes() -> None:
    tree = merkle.MemoryTree([merkle.leaf_hash(x) for x in LEAVES])
    proof = merkle.inclusion_proof(1, 8, tree.subtree)
    with pytest.raises(ProofError, match=r"proof\[0\] is 31 bytes"):
        merkle.verify_inclusion(tree.subtree(0, 1), 1, 8, [proof[0][:31], *proof[1:]], tree.root())
    with pytest.raises(ProofError, match="leaf hash is 3 bytes"):
        merkle.verify_inclusion(b"abc", 1, 8, proof, tree.root())


def test_complete_subtrees_decomposition() -> None:
    assert merkle.complete_subtrees(0, 13) == [(3, 0), (2, 2), (0, 12)]
    assert merkle.complete_subtrees(8, 13) == [(2, 2), (0, 12)]
    assert merkle.complete_subtrees(0, 16) == [(4, 0)]
    assert merkle.complete_subtrees(0, 0) == []


def test_frontier_reports_each_complete_subtree() -> None:
    seen: list[tuple[int, int]] = []
    frontier = merkle.Frontier()
    for x in LEAVES[:4]:
        frontier.append(merkle.leaf_hash(x), lambda level, index, h: seen.append((level, index)))
    assert seen == [(0, 0), (0, 1), (1, 0), (0, 2), (0, 3), (1, 1), (2, 0)]
    with pytest.raises(ValueError, match="has 2 hashes"):
        merkle.Frontier(3, [bytes(32)])
