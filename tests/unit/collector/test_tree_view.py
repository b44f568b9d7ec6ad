"""A standby's read-only Merkle log over both stores: proofs verify, refresh sees more."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.store import open_store
from collector.store.ledger_store import Entry
from collector.store.tree_view import TreeView
from protos import merkle
from protos.errors import LogError
from tests.pg_support import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'ledger.db'}"
    return fresh_database(request.getfixturevalue("pg_server"))


def datas(first: int, n: int) -> list[bytes]:
    return [f"entry-{i}".encode() for i in range(first, first + n)]


def test_a_standby_serves_proofs_of_what_the_leader_committed(store_url: str) -> None:
    leader, standby = open_store(store_url), open_store(store_url)
    try:
        leader.append_batch(0, [Entry(d, "t") for d in datas(0, 6)], 1)
        view = TreeView(standby)
        assert view.snapshot() == (6, leader.root())
        head6 = view.snapshot()
        leader.append_batch(6, [Entry(d, "t") for d in datas(6, 7)], 2)
        assert view.size == 6  # not yet refreshed: still the old head
        assert view.refresh() == 13
        size, root = view.snapshot()
        reference = merkle.MemoryTree(merkle.leaf_hash(d) for d in datas(0, 13))
        assert root == reference.root()
        assert view.root(6) == head6[1]
        for index in (0, 5, 12):
            merkle.verify_inclusion(
                merkle.leaf_hash(datas(index, 1)[0]),
                index,
                size,
                view.inclusion_proof(index, size),
                root,
            )
        merkle.verify_consistency(6, 13, view.consistency_proof(6, 13), head6[1], root)
        assert view.leaf_hash(3) == merkle.leaf_hash(b"entry-3")
        with pytest.raises(LogError, match="beyond the committed size"):
            view.inclusion_proof(0, 14)
        with pytest.raises(LogError, match="no consistency proof"):
            view.consistency_proof(0, 5)
    finally:
        leader.close()
        standby.close()
