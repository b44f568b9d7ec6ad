"""The collector's Merkle log over every accepted envelope (RFC 9162 hashing).

Storage: one table ``merkle_node(pos INTEGER PRIMARY KEY, hash BLOB)`` holds
the hash of every complete subtree (leaves included) at its post-order
position. Appending leaf ``n`` forms the leaf and then each parent it
completes, in exactly that order, so new rows always go at the end of the
B-tree and the row count alone gives the tree size (``2n - popcount(n)``
rows for ``n`` leaves). Any proof or historical root needs O(log n) point
reads, never a scan: 100 million entries take ~200 million 32-byte rows.

Threads: the ledger's writer thread calls ``append_leaves`` (inside its open
transaction: nothing here begins or commits), then ``committed()`` or
``rolled_back()``. Every read method may be called from any other thread: reads
use a separate read-only connection, serialised by a lock, and see only
committed rows; ``size`` and the latest root come from an immutable in-memory
frontier swapped in by ``committed()``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Sequence

from collector.store.sqlite_faults import rollback_after
from protos import merkle
from protos.errors import LogError

log = logging.getLogger(__name__)

SCHEMA = "CREATE TABLE IF NOT EXISTS merkle_node (pos INTEGER PRIMARY KEY, hash BLOB NOT NULL)"
_CATCH_UP_BATCH = 4096


def node_count(size: int) -> int:
    """Stored complete subtrees of a tree with ``size`` leaves."""
    return 2 * size - size.bit_count()


def node_pos(level: int, index: int) -> int:
    """Post-order position of the complete subtree (level, index)."""
    n = (index + 1) << level  # the leaf count at which this subtree completes
    top = (n & -n).bit_length() - 1  # the highest level completed by that leaf
    return node_count(n) - 1 - (top - level)


def size_for_node_count(count: int) -> int:
    """Invert ``node_count``; LogError if no tree has that many nodes."""
    lo, hi = 0, count
    while lo < hi:
        mid = (lo + hi) // 2
        if node_count(mid) < count:
            lo = mid + 1
        else:
            hi = mid
    if node_count(lo) != count:
        raise LogError(f"merkle_node holds {count} rows, which no tree size produces")
    return lo


def _db_file(conn: sqlite3.Connection) -> str:
    for _, name, path in conn.execute("PRAGMA database_list").fetchall():
        if name == "main":
            return str(path or "")
    return ""


class MerkleLog:
    """Append-only Merkle tree stored beside the ledger, in the same transactions.

    ``conn`` is the ledger's write connection. The constructor creates the
    table if missing (committing that DDL), loads the committed state, and,
    if the ledger's ``log`` table is longer than the tree (a ledger written
    before the tree existed), hashes the missing entries in its own
    transactions. A tree longer than the log raises LogError.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        conn.execute(SCHEMA)
        if conn.in_transaction:
            conn.commit()
        path = _db_file(conn)
        self._read_lock = threading.Lock()
        if path:
            self._read = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            self._read.execute("PRAGMA busy_timeout=5000")
            self._own_read = True
        else:  # in-memory database: reads share the writer's connection
            self._read = conn
            self._own_read = False
        self._committed = self._load(conn)
        self._pending: merkle.Frontier | None = None
        self._catch_up()

    # -- writing (the ledger's writer thread) ----------------------------------
    def append_leaves(
        self, conn: sqlite3.Connection, first_index: int, datas: Sequence[bytes]
    ) -> None:
        """Hash ``datas`` as leaves ``first_index...`` and insert their nodes on ``conn``.

        Must run inside the caller's open transaction; the new state becomes
        visible only at ``committed()``. Several calls may share one transaction.
        """
        from collector.store.tree import tree_rows  # tree.py imports this module

        frontier = self._pending if self._pending is not None else self._committed
        rows, self._pending = tree_rows(frontier, first_index, datas)
        conn.executemany("INSERT INTO merkle_node(pos, hash) VALUES (?, ?)", rows)

    def committed(self) -> None:
        """The transaction holding the pending leaves committed."""
        if self._pending is not None:
            self._committed = self._pending
            self._pending = None

    def rolled_back(self) -> None:
        """The transaction failed: forget the pending leaves."""
        self._pending = None

    def reload(self) -> None:
        """Forget every in-memory state and read the committed tree from disk
        again (the ledger's writer thread, outside any transaction), hashing any
        log entries the tree lacks. After a failed write nothing in memory is
        trusted: the failure may have come after SQLite made the commit durable."""
        self._pending = None
        self._committed = self._load(self._conn)
        self._catch_up()

    # -- reading (any thread) ----------------------------------------------------
    @property
    def size(self) -> int:
        """Committed leaves."""
        return self._committed.size

    def snapshot(self) -> tuple[int, bytes]:
        """(size, root) of the committed tree, read atomically."""
        frontier = self._committed
        return frontier.size, frontier.root()

    def root(self, size: int | None = None) -> bytes:
        """Root of the first ``size`` leaves (default: all committed)."""
        frontier = self._committed
        if size is None or size == frontier.size:
            return frontier.root()
        self._check_size(size, frontier.size)
        with self._read_lock:
            return merkle.root(size, self._subtree_from(self._read))

    def leaf_hash(self, index: int) -> bytes:
        self._check_index(index, self._committed.size)
        with self._read_lock:
            return self._subtree_from(self._read)(0, index)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """Audit path of leaf ``index`` in the tree of ``size`` leaves."""
        self._check_size(size, self._committed.size)
        self._check_index(index, size)
        with self._read_lock:
            return merkle.inclusion_proof(index, size, self._subtree_from(self._read))

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """Proof that the tree of ``new`` leaves extends the one of ``old`` (0 < old <= new)."""
        self._check_size(new, self._committed.size)
        if not 0 < old <= new:
            raise LogError(f"no consistency proof from size {old} to size {new}")
        with self._read_lock:
            return merkle.consistency_proof(old, new, self._subtree_from(self._read))

    def close(self) -> None:
        if self._own_read:
            with self._read_lock:
                self._read.close()

    # -- internals -----------------------------------------------------------------
    @staticmethod
    def _check_size(size: int, committed: int) -> None:
        if not 0 <= size <= committed:
            raise LogError(f"tree size {size} is beyond the committed size {committed}")

    @staticmethod
    def _check_index(index: int, size: int) -> None:
        if not 0 <= index < size:
            raise LogError(f"index {index} is not below the tree size {size}")

    @staticmethod
    def _load(conn: sqlite3.Connection) -> merkle.Frontier:
        from collector.store.tree import load_frontier  # tree.py imports this module

        count = conn.execute("SELECT COALESCE(MAX(pos) + 1, 0) FROM merkle_node").fetchone()[0]

        def node(pos: int) -> bytes | None:
            row = conn.execute("SELECT hash FROM merkle_node WHERE pos = ?", (pos,)).fetchone()
            return None if row is None else bytes(row[0])

        return load_frontier(int(count), node)

    @staticmethod
    def _subtree_from(conn: sqlite3.Connection) -> merkle.SubtreeAccessor:
        def subtree(level: int, index: int) -> bytes:
            row = conn.execute(
                "SELECT hash FROM merkle_node WHERE pos = ?", (node_pos(level, index),)
            ).fetchone()
            if row is None:
                raise LogError(f"merkle node (level {level}, index {index}) is missing")
            return bytes(row[0])

        return subtree

    def _catch_up(self) -> None:
        conn = self._conn
        has_log = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'log'"
        ).fetchone()
        if has_log is None:
            return
        log_size = int(conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM log").fetchone()[0])
        size = self._committed.size
        if size > log_size:
            raise LogError(f"the Merkle tree has {size} leaves but the log only {log_size}")
        if size < log_size:
            log.warning("hashing %d log entries missing from the Merkle tree", log_size - size)
        while size < log_size:
            rows = conn.execute(
                "SELECT idx, data FROM log WHERE idx >= ? ORDER BY idx LIMIT ?",
                (size, _CATCH_UP_BATCH),
            ).fetchall()
            if not rows or rows[0][0] != size or rows[-1][0] != size + len(rows) - 1:
                raise LogError(f"log indices are not contiguous from {size}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                self.append_leaves(conn, size, [bytes(r[1]) for r in rows])
                conn.execute("COMMIT")
            except BaseException as exc:
                self.rolled_back()
                rollback_after(conn, exc)
                raise
            self.committed()
            size += len(rows)
