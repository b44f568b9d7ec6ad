"""The collector's Merkle log on a real SQLite file, driven through transactions."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from collector.store.merkle_log import MerkleLog, node_count, node_pos, size_for_node_count
from protos import merkle
from protos.errors import LogError


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def _entries(start: int, n: int) -> list[bytes]:
    return [f"entry-{i}".encode() for i in range(start, start + n)]


def _append(conn: sqlite3.Connection, log: MerkleLog, datas: list[bytes]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    log.append_leaves(conn, log.size, datas)
    conn.execute("COMMIT")
    log.committed()


def test_node_positions_are_post_order() -> None:
    seen: list[tuple[int, int]] = []
    frontier = merkle.Frontier()
    for i in range(40):
        frontier.append(merkle.leaf_hash(b"%d" % i), lambda lv, ix, h: seen.append((lv, ix)))
    assert [node_pos(lv, ix) for lv, ix in seen] == list(range(len(seen)))
    assert len(seen) == node_count(40)
    for n in range(200):
        assert size_for_node_count(node_count(n)) == n
    with pytest.raises(LogError, match="no tree size"):
        size_for_node_count(2)  # one leaf is 1 node, two leaves are 3


def test_roots_and_proofs_match_an_in_memory_tree(tmp_path: Path) -> None:
    conn = _connect(tmp_path / "l.db")
    log = MerkleLog(conn)
    datas = _entries(0, 150)
    for start in range(0, 150, 37):
        _append(conn, log, datas[start : start + 37])
    tree = merkle.MemoryTree([merkle.leaf_hash(d) for d in datas])
    assert log.size == 150
    for size in (1, 2, 3, 37, 64, 100, 149, 150):
        assert log.root(size) == tree.root(size)
        for index in (0, size // 2, size - 1):
            proof = log.inclusion_proof(index, size)
            merkle.verify_inclusion(log.leaf_hash(index), index, size, proof, tree.root(size))
        for old in (1, size // 3 or 1, size):
            proof = log.consistency_proof(old, size)
            merkle.verify_consistency(old, size, proof, tree.root(old), tree.root(size))
    assert log.snapshot() == (150, tree.root())
    log.close()


def test_rollback_discards_pending_leaves(tmp_path: Path) -> None:
    conn = _connect(tmp_path / "l.db")
    log = MerkleLog(conn)
    _append(conn, log, _entries(0, 5))
    root = log.root()
    conn.execute("BEGIN IMMEDIATE")
    log.append_leaves(conn, 5, _entries(5, 3))
    log.append_leaves(conn, 8, _entries(8, 2))  # two calls, one transaction
    assert log.size == 5  # nothing visible before commit
    conn.execute("ROLLBACK")
    log.rolled_back()
    assert (log.size, log.root()) == (5, root)
    _append(conn, log, _entries(5, 5))
    tree = merkle.MemoryTree([merkle.leaf_hash(d) for d in _entries(0, 10)])
    assert log.root() == tree.root()


def test_append_at_wrong_index_is_refused(tmp_path: Path) -> None:
    conn = _connect(tmp_path / "l.db")
    log = MerkleLog(conn)
    _append(conn, log, _entries(0, 3))
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(LogError, match="append at index 4, but the tree has 3"):
        log.append_leaves(conn, 4, [b"x"])
    conn.execute("ROLLBACK")
    log.rolled_back()


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("root", (11,)),
        ("leaf_hash", (10,)),
        ("inclusion_proof", (0, 11)),
        ("inclusion_proof", (10, 10)),
        ("consistency_proof", (0, 5)),
        ("consistency_proof", (6, 5)),
        ("consistency_proof", (1, 11)),
    ],
)
def test_out_of_range_reads_raise_log_error(
    tmp_path: Path, call: str, args: tuple[int, ...]
) -> None:
    conn = _connect(tmp_path / "l.db")
    log = MerkleLog(conn)
    _append(conn, log, _entries(0, 10))
    with pytest.raises(LogError):
        getattr(log, call)(*args)


def test_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    conn = _connect(path)
    log = MerkleLog(conn)
    _append(conn, log, _entries(0, 77))
    root = log.root()
    log.close()
    conn.close()
    conn2 = _connect(path)
    again = MerkleLog(conn2)
    assert (again.size, again.root()) == (77, root)
    _append(conn2, again, _entries(77, 3))
    tree = merkle.MemoryTree([merkle.leaf_hash(d) for d in _entries(0, 80)])
    assert again.root() == tree.root()


def test_catches_up_with_a_longer_log_table(tmp_path: Path) -> None:
    conn = _connect(tmp_path / "l.db")
    conn.execute("CREATE TABLE log (idx INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    datas = _entries(0, 5000)
    with conn:  # one transaction, not 5000
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO log VALUES (?, ?)", list(enumerate(datas)))
    log = MerkleLog(conn)
    tree = merkle.MemoryTree([merkle.leaf_hash(d) for d in datas])
    assert (log.size, log.root()) == (5000, tree.root())


def test_a_tree_longer_than_the_log_is_refused(tmp_path: Path) -> None:
    conn = _connect(tmp_path / "l.db")
    conn.execute("CREATE TABLE log (idx INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    conn.executemany("INSERT INTO log VALUES (?, ?)", list(enumerate(_entries(0, 4))))
    log = MerkleLog(conn)
    conn.execute("DELETE FROM log WHERE idx = 3")
    log.close()
    with pytest.raises(LogError, match="the log only 3"):
        MerkleLog(conn)


def test_a_log_with_a_hole_is_refused(tmp_path: Path) -> None:
    conn = _connect(tmp_path / "l.db")
    conn.execute("CREATE TABLE log (idx INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    conn.executemany("INSERT INTO log VALUES (?, ?)", [(0, b"a"), (2, b"c")])
    with pytest.raises(LogError, match="not contiguous"):
        MerkleLog(conn)


def test_reads_from_another_thread_see_committed_state(tmp_path: Path) -> None:
    conn = _connect(tmp_path / "l.db")
    log = MerkleLog(conn)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                size, root = log.snapshot()
                if size:
                    assert log.root(size) == root
                    merkle.verify_inclusion(
                        log.leaf_hash(size - 1),
                        size - 1,
                        size,
                        log.inclusion_proof(size - 1, size),
                        root,
                    )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    for start in range(0, 2000, 100):
        _append(conn, log, _entries(start, 100))
    stop.set()
    t.join(10)
    assert not errors, errors
    assert log.size == 2000


def test_memory_database_works_single_threaded() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    log = MerkleLog(conn)
    _append(conn, log, _entries(0, 9))
    tree = merkle.MemoryTree([merkle.leaf_hash(d) for d in _entries(0, 9)])
    assert log.root(4) == tree.root(4)
