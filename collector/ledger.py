"""The ledger: every accepted envelope, in order, in one SQLite file.

One writer thread owns the write connection. Callers on the event loop
``await ledger.append(entry)``; entries that arrive while a transaction is in
flight are written together in the next one (group commit), and each future
resolves only after its transaction committed. The Merkle log's rows are
written inside the same transaction.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from protos.errors import LogError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    idx INTEGER PRIMARY KEY,
    data BLOB NOT NULL,
    payload_type TEXT NOT NULL,
    node_id TEXT,
    keyid TEXT,
    sequence INTEGER,
    received_unix_nanos INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS log_chain ON log(keyid, sequence) WHERE sequence IS NOT NULL;
CREATE TABLE IF NOT EXISTS chain (
    keyid TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    last_sequence INTEGER NOT NULL,
    last_digest BLOB NOT NULL,
    last_index INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS evidence (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    node_id TEXT,
    sequence INTEGER,
    accepted_data BLOB,
    offending_data BLOB NOT NULL,
    detected_unix_nanos INTEGER NOT NULL
);
-- Conflicts seen per (signing key, kind): the first few keep their bytes in
-- evidence, the rest are only counted here (a key cannot grow the file).
CREATE TABLE IF NOT EXISTS evidence_counts (
    keyid TEXT NOT NULL,
    kind TEXT NOT NULL,
    count INTEGER NOT NULL,
    last_unix_nanos INTEGER NOT NULL,
    PRIMARY KEY (keyid, kind)
);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    keyid TEXT NOT NULL UNIQUE,
    public_key BLOB NOT NULL,
    enrolled_unix_nanos INTEGER NOT NULL
);
"""


class TreeWriter(Protocol):
    """What the ledger needs of the Merkle log (``collector.merkle_log.MerkleLog``)."""

    def append_leaves(
        self, conn: sqlite3.Connection, first_index: int, datas: Sequence[bytes]
    ) -> None: ...

    def committed(self) -> None: ...

    def rolled_back(self) -> None: ...


@dataclass(frozen=True)
class Entry:
    """An envelope to append. ``sequence``/``digest`` are set for chained reports."""

    data: bytes
    payload_type: str
    node_id: str | None = None
    keyid: str | None = None
    sequence: int | None = None
    digest: bytes | None = None


@dataclass(frozen=True)
class LedgerEntry:
    index: int
    data: bytes
    payload_type: str
    node_id: str | None
    sequence: int | None
    received_unix_nanos: int


@dataclass(frozen=True)
class ChainHead:
    node_id: str
    last_sequence: int
    last_digest: bytes
    last_index: int


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with our pragmas; ``readonly`` ones never write."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def init_db(path: Path) -> None:
    """Create the ledger file and tables if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    try:
        conn.executescript(SCHEMA)
    finally:
        conn.close()


def iter_entries(path: Path, start: int = 0) -> Iterator[LedgerEntry]:
    """Every entry from ``start`` on, in log order (a read-only connection)."""
    conn = connect(path, readonly=True)
    try:
        cur = conn.execute(
            "SELECT idx, data, payload_type, node_id, sequence, received_unix_nanos"
            " FROM log WHERE idx >= ? ORDER BY idx",
            (start,),
        )
        for row in cur:
            yield LedgerEntry(*row)
    finally:
        conn.close()


class Ledger:
    """Append-only store of accepted envelopes with group commit."""

    def __init__(
        self,
        path: Path,
        tree: TreeWriter | None = None,
        *,
        max_batch: int = 1024,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        init_db(path)
        self.path = path
        self._conn = connect(path)
        self._read = connect(path, readonly=True)
        self._read_lock = threading.Lock()
        # Small synchronous writes from the event loop (evidence), never the writer's.
        self._side = connect(path)
        self._side_lock = threading.Lock()
        self._tree = tree
        self._max_batch = max_batch
        self._clock_ns = clock_ns
        self._pending: list[tuple[Entry, asyncio.Future[int]]] = []
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        self._listeners: list[Callable[[int], None]] = []
        row = self._conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM log").fetchone()
        self._size: int = row[0]
        self.batches = 0
        self.batched_entries = 0
        self.write_errors = 0

    def attach_tree(self, tree: TreeWriter) -> None:
        """Write ``tree``'s rows in every transaction from now on (before the first append)."""
        if self._pending or self._flushing:
            raise LogError("attach the Merkle log before the first append")
        self._tree = tree

    # -- reading -------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of committed entries."""
        return self._size

    @property
    def connection(self) -> sqlite3.Connection:
        """The writer connection (for the Merkle log's construction only)."""
        return self._conn

    def chain_heads(self) -> dict[str, ChainHead]:
        """keyid -> last accepted link, as committed."""
        with self._read_lock:
            rows = self._read.execute(
                "SELECT keyid, node_id, last_sequence, last_digest, last_index FROM chain"
            ).fetchall()
        return {r[0]: ChainHead(r[1], r[2], bytes(r[3]), r[4]) for r in rows}

    def report_bytes(self, keyid: str, sequence: int) -> bytes | None:
        """The accepted envelope bytes for (key, sequence), if any."""
        with self._read_lock:
            row = self._read.execute(
                "SELECT data FROM log WHERE keyid = ? AND sequence = ?", (keyid, sequence)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def report_index(self, keyid: str, sequence: int) -> int:
        """Log index of an accepted report (-1 if not committed)."""
        with self._read_lock:
            row = self._read.execute(
                "SELECT idx FROM log WHERE keyid = ? AND sequence = ?", (keyid, sequence)
            ).fetchone()
        return -1 if row is None else int(row[0])

    def entries(self, start: int, end: int) -> list[LedgerEntry]:
        with self._read_lock:
            rows = self._read.execute(
                "SELECT idx, data, payload_type, node_id, sequence, received_unix_nanos"
                " FROM log WHERE idx >= ? AND idx < ? ORDER BY idx",
                (start, end),
            ).fetchall()
        return [LedgerEntry(r[0], bytes(r[1]), r[2], r[3], r[4], r[5]) for r in rows]

    def add_commit_listener(self, callback: Callable[[int], None]) -> None:
        """``callback(new_size)`` on the event loop after each commit; keep it O(1)."""
        self._listeners.append(callback)

    # -- writing ---------------------------------------------------------------
    def record_evidence(
        self,
        kind: str,
        node_id: str | None,
        sequence: int | None,
        accepted: bytes | None,
        offending: bytes,
        *,
        keyid: str = "",
        keep: int = 1,
    ) -> bool:
        """Keep conflicting bytes (equivocation) as evidence: the first ``keep``
        per (``keyid``, ``kind``) with their bytes, every later one only
        counted (``evidence_seen``), so one key cannot grow the ledger by
        sending conflicts. Small, synchronous, on its own connection and lock,
        so readers do not wait for it. True when the bytes were kept."""
        now = self._clock_ns()
        with self._side_lock:
            self._side.execute("BEGIN IMMEDIATE")
            try:
                row = self._side.execute(
                    "SELECT count FROM evidence_counts WHERE keyid = ? AND kind = ?",
                    (keyid, kind),
                ).fetchone()
                kept = (0 if row is None else int(row[0])) < keep
                if kept:
                    self._side.execute(
                        "INSERT INTO evidence(kind, node_id, sequence, accepted_data,"
                        " offending_data, detected_unix_nanos) VALUES (?, ?, ?, ?, ?, ?)",
                        (kind, node_id, sequence, accepted, offending, now),
                    )
                self._side.execute(
                    "INSERT INTO evidence_counts(keyid, kind, count, last_unix_nanos)"
                    " VALUES (?, ?, 1, ?) ON CONFLICT(keyid, kind)"
                    " DO UPDATE SET count = count + 1, last_unix_nanos = excluded.last_unix_nanos",
                    (keyid, kind, now),
                )
                self._side.execute("COMMIT")
            except BaseException:
                self._side.execute("ROLLBACK")
                raise
        return kept

    def evidence_seen(self, keyid: str, kind: str) -> int:
        """Conflicts of ``kind`` signed by ``keyid``, kept or only counted."""
        with self._read_lock:
            row = self._read.execute(
                "SELECT count FROM evidence_counts WHERE keyid = ? AND kind = ?", (keyid, kind)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def evidence_count(self, kind: str | None = None) -> int:
        with self._read_lock:
            if kind is None:
                row = self._read.execute("SELECT COUNT(*) FROM evidence").fetchone()
            else:
                row = self._read.execute(
                    "SELECT COUNT(*) FROM evidence WHERE kind = ?", (kind,)
                ).fetchone()
        return int(row[0])

    def append(self, entry: Entry) -> asyncio.Future[int]:
        """Queue ``entry``; the future gives its log index once committed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._pending.append((entry, fut))
        if not self._flushing:
            self._flushing = True
            self._flush_task = loop.create_task(self._flush())
        return fut

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                first = self._size
                try:
                    await loop.run_in_executor(self._writer, self._write, first, batch)
                except Exception as exc:
                    # Entries queued behind a failed batch may chain onto it: fail
                    # them too, so no committed report ever follows a missing one.
                    failed = batch + self._pending
                    self._pending = []
                    self.write_errors += 1
                    log.exception("ledger write failed; %d queued entries refused", len(failed))
                    err = LogError(f"ledger write failed: {exc}")
                    for _, fut in failed:
                        if not fut.done():
                            fut.set_exception(err)
                    continue
                self._size = first + len(batch)
                self.batches += 1
                self.batched_entries += len(batch)
                for i, (_, fut) in enumerate(batch):
                    if not fut.done():
                        fut.set_result(first + i)
                for cb in self._listeners:
                    cb(self._size)
        finally:
            self._flushing = False

    def _write(self, first: int, batch: Sequence[tuple[Entry, asyncio.Future[int]]]) -> None:
        conn = self._conn
        now = self._clock_ns()
        rows = []
        heads: dict[str, tuple[str, int, bytes, int]] = {}
        for i, (e, _) in enumerate(batch):
            idx = first + i
            rows.append((idx, e.data, e.payload_type, e.node_id, e.keyid, e.sequence, now))
            if e.keyid is not None and e.sequence is not None and e.digest is not None:
                heads[e.keyid] = (e.node_id or "", e.sequence, e.digest, idx)
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
                [(k, *v) for k, v in heads.items()],
            )
            if self._tree is not None:
                self._tree.append_leaves(conn, first, [e.data for e, _ in batch])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            if self._tree is not None:
                self._tree.rolled_back()
            raise
        if self._tree is not None:
            self._tree.committed()

    async def close(self) -> None:
        """Wait for queued writes, then close."""
        for _ in range(1000):
            if not self._pending and not self._flushing:
                break
            await asyncio.sleep(0.005)
        self._writer.shutdown(wait=True)
        self._conn.close()
        with self._read_lock:  # a reader in another thread finishes first
            self._read.close()
        with self._side_lock:
            self._side.close()
