"""The ledger store's behaviour, run the same against SQLite and a real PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.store import SCHEMA_VERSION, LedgerStore, open_store
from collector.store.ledger_store import Entry
from collector.store.merkle_log import MerkleLog, node_pos
from protos import merkle
from protos.errors import SchemaVersionError, StoreConfigError
from tests.pg_support import fresh_database

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'ledger.db'}"
    server = request.getfixturevalue("pg_server")
    return fresh_database(server)


@pytest.fixture
def store(store_url: str) -> Iterator[LedgerStore]:
    s = open_store(store_url)
    yield s
    s.close()


def report(key: str, seq: int) -> Entry:
    data = f"{key}:{seq}".encode()
    return Entry(
        data,
        "application/vnd.computewatch.NodeReport+protobuf",
        f"node-{key}",
        key,
        seq,
        merkle.leaf_hash(data),
    )


def tree_of(datas: list[bytes]) -> merkle.MemoryTree:
    return merkle.MemoryTree(merkle.leaf_hash(d) for d in datas)


def test_batches_read_back_with_chain_heads_and_the_rfc9162_root(store: LedgerStore) -> None:
    a = [report("k1", 1), report("k2", 1), report("k1", 2)]
    b = [report("k2", 2), Entry(b"directive", "application/vnd.computewatch.Directive+protobuf")]
    store.append_batch(0, a, 10)
    store.append_batch(3, b, 20)
    assert store.size == 5
    got = store.entries(0, 5)
    assert [e.data for e in got] == [e.data for e in a + b]
    assert [e.received_unix_nanos for e in got] == [10, 10, 10, 20, 20]
    assert got[4].sequence is None
    assert got[4].node_id is None
    assert store.stored_sequence("k1") == 2
    assert store.stored_sequence("k2") == 2
    assert store.stored_sequence("nobody") == 0
    heads = store.chain_heads()
    assert heads["k1"].last_index == 2
    assert heads["k1"].last_digest == a[2].digest
    assert store.report_index("k2", 2) == 3
    assert store.report_index("k2", 9) == -1
    assert store.root() == tree_of([e.data for e in a + b]).root()


def test_reopen_continues_the_tree_and_old_heads_stay_consistent(store_url: str) -> None:
    first = open_store(store_url)
    first.append_batch(0, [report("k", i) for i in range(1, 6)], 1)
    old_root = first.root()
    first.close()
    second = open_store(store_url)
    try:
        assert second.size == 5
        assert second.root() == old_root
        second.append_batch(5, [report("k", i) for i in range(6, 12)], 2)

        def subtree(level: int, index: int) -> bytes:
            h = second.merkle_node(node_pos(level, index))
            assert h is not None
            return h

        proof = merkle.consistency_proof(5, 11, subtree)
        merkle.verify_consistency(5, 11, proof, old_root, second.root())
        assert second.stored_sequence("k") == 11
    finally:
        second.close()


def test_a_duplicate_sequence_fails_the_whole_batch(store: LedgerStore) -> None:
    store.append_batch(0, [report("k", 1)], 1)
    root = store.root()
    with pytest.raises(Exception) as info:  # noqa: PT011 - each driver's integrity error
        store.append_batch(1, [report("j", 1), report("k", 1)], 2)
    assert "unique" in str(info.value).lower()
    assert store.size == 1
    assert store.reload() == 1
    assert store.root() == root
    assert store.entries(0, 10)[0].data == b"k:1"
    assert len(store.entries(0, 10)) == 1
    assert store.stored_sequence("j") == 0
    store.append_batch(1, [report("j", 1)], 3)  # the next batch goes on at index 1
    assert store.report_index("j", 1) == 1


def test_append_at_the_wrong_index_is_refused_before_any_write(store: LedgerStore) -> None:
    store.append_batch(0, [report("k", 1)], 1)
    with pytest.raises(Exception, match="append at index 5"):
        store.append_batch(5, [report("k", 2)], 2)
    assert store.reload() == 1


def test_evidence_keeps_the_first_and_counts_the_rest(store: LedgerStore) -> None:
    for i in range(4):
        kept = store.record_evidence(
            "equivocation", "n", 3, b"a", f"b{i}".encode(), keyid="k", keep=2, now_ns=i
        )
        assert kept == (i < 2)
    assert store.evidence_count() == 2
    assert store.evidence_count("equivocation") == 2
    assert store.evidence_count("other") == 0
    assert store.evidence_seen("k", "equivocation") == 4
    assert store.evidence_seen("k", "other") == 0


def test_the_schema_is_versioned_and_a_newer_one_refused(store_url: str) -> None:
    s = open_store(store_url)
    assert s.schema_version() == SCHEMA_VERSION
    s.close()
    if store_url.startswith("sqlite://"):
        with sqlite3.connect(store_url.removeprefix("sqlite://")) as conn:
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    else:
        import psycopg

        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaVersionError, match=f"version {SCHEMA_VERSION + 1}") as info:
        open_store(store_url)
    assert info.value.reason == "schema_version"


def test_a_pre_version_sqlite_ledger_migrates_in_place(tmp_path: Path) -> None:
    from collector.store.ledger_store import SCHEMA

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # a ledger written before schema versions
        conn.executescript(SCHEMA)
        conn.execute(
            "INSERT INTO log(idx, data, payload_type, received_unix_nanos)"
            " VALUES (0, x'01', 't', 1)"
        )
    s = open_store(str(path))
    try:
        assert s.schema_version() == SCHEMA_VERSION
        assert [e.data for e in s.entries(0, 5)] == [b"\x01"]
    finally:
        s.close()


def test_sqlite_store_rows_are_the_tree_merkle_log_reads(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    s = open_store(str(path))
    s.append_batch(0, [report("k", i) for i in range(1, 8)], 1)
    root = s.root()
    s.close()
    conn = sqlite3.connect(path, isolation_level=None)
    tree = MerkleLog(conn)
    try:
        assert tree.size == 7
        assert tree.snapshot() == (7, root)
    finally:
        tree.close()
        conn.close()


@pytest.mark.parametrize(
    ("url", "match"),
    [("mysql://h/db", "scheme names no backend"), ("sqlite://relative.db", "absolute")],
)
def test_open_store_names_a_bad_url(url: str, match: str) -> None:
    with pytest.raises(StoreConfigError, match=match):
        open_store(url)
