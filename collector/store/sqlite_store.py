"""The embedded backend: the ledger's SQLite file behind ``LedgerStore``.

Same file, schema and transactions as ``collector.store.ledger.Ledger`` (which keeps
its own connections and group commit); this class lets code and tests written
against ``LedgerStore`` run on the single-host default unchanged.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from collector.store.ledger_store import (
    ChainHead,
    Entry,
    LedgerEntry,
    chain_heads_on,
    connect,
    entries_on,
    evidence_count_on,
    evidence_seen_on,
    init_db,
    record_evidence_on,
    report_bytes_on,
    report_index_on,
    stored_sequence_on,
)
from collector.store.sqlite_faults import rollback_after
from collector.store.tree import batch_rows, load_frontier


class SqliteStore:
    """``LedgerStore`` on one SQLite file."""

    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        init_db(path)  # creates the tables and migrates (collector.store.ledger_store)
        self.path = path
        self._conn = connect(path)
        self._read = connect(path, readonly=True)
        self._lock = threading.Lock()
        self._frontier = load_frontier(0, lambda _pos: None)
        self.reload()

    @property
    def size(self) -> int:
        return self._frontier.size

    def schema_version(self) -> int:
        with self._lock:
            row = self._read.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0])

    def reload(self) -> int:
        count = int(
            self._conn.execute("SELECT COALESCE(MAX(pos) + 1, 0) FROM merkle_node").fetchone()[0]
        )
        self._frontier = load_frontier(count, self._node_on(self._conn))
        return self._frontier.size

    def root(self) -> bytes:
        return self._frontier.root()

    @staticmethod
    def _node_on(conn: sqlite3.Connection) -> Callable[[int], bytes | None]:
        def node(pos: int) -> bytes | None:
            row = conn.execute("SELECT hash FROM merkle_node WHERE pos = ?", (pos,)).fetchone()
            return None if row is None else bytes(row[0])

        return node

    def merkle_node(self, pos: int) -> bytes | None:
        with self._lock:
            row = self._read.execute(
                "SELECT hash FROM merkle_node WHERE pos = ?", (pos,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def append_batch(
        self, first: int, entries: Sequence[Entry], now_ns: int, *, term: int | None = None
    ) -> None:
        del term  # one writer per file: nothing to fence
        rows, heads, nodes, frontier = batch_rows(self._frontier, first, entries, now_ns)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO log(idx, data, payload_type, node_id, keyid, sequence,"
                " received_unix_nanos) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.executemany(
                "INSERT INTO chain(keyid, node_id, last_sequence, last_digest, last_index)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(keyid) DO UPDATE SET"
                " last_sequence = excluded.last_sequence, last_digest = excluded.last_digest,"
                " last_index = excluded.last_index",
                heads,
            )
            conn.executemany("INSERT INTO merkle_node(pos, hash) VALUES (?, ?)", nodes)
            conn.execute("COMMIT")
        except BaseException as exc:
            rollback_after(conn, exc)
            raise
        self._frontier = frontier

    def stored_sequence(self, keyid: str) -> int:
        with self._lock:
            return stored_sequence_on(self._read, keyid)

    def chain_heads(self) -> dict[str, ChainHead]:
        with self._lock:
            return chain_heads_on(self._read)

    def report_index(self, keyid: str, sequence: int) -> int:
        with self._lock:
            return report_index_on(self._read, keyid, sequence)

    def report_bytes(self, keyid: str, sequence: int) -> bytes | None:
        with self._lock:
            return report_bytes_on(self._read, keyid, sequence)

    def entries(self, start: int, end: int) -> list[LedgerEntry]:
        with self._lock:
            return entries_on(self._read, start, end)

    def record_evidence(
        self,
        kind: str,
        node_id: str | None,
        sequence: int | None,
        accepted: bytes | None,
        offending: bytes,
        *,
        keyid: str,
        keep: int,
        now_ns: int,
    ) -> bool:
        return record_evidence_on(
            self._conn,
            kind,
            node_id,
            sequence,
            accepted,
            offending,
            keyid=keyid,
            keep=keep,
            now_ns=now_ns,
        )

    def evidence_seen(self, keyid: str, kind: str) -> int:
        with self._lock:
            return evidence_seen_on(self._read, keyid, kind)

    def evidence_count(self, kind: str | None = None) -> int:
        with self._lock:
            return evidence_count_on(self._read, kind)

    def close(self) -> None:
        self._conn.close()
        with self._lock:
            self._read.close()
