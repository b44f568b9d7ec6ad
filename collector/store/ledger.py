"""The ledger: every accepted envelope, in order, in one SQLite file.

One writer thread owns the write connection. Callers on the event loop
``await ledger.append(entry)``; entries that arrive while a transaction is in
flight are written together in the next one (group commit), and each future
resolves only after its transaction committed. The Merkle log's rows are
written inside the same transaction.

A failed write makes the ledger *unavailable* at once (fail-stop, then
automatic re-sync): the failed batch and everything queued behind it fail
with LedgerUnavailableError, ``append`` refuses new entries, and a recovery
probe (bounded exponential backoff) commits a one-row write, re-reads the
size and the Merkle tree from disk, tells the state listeners (ingest re-reads
its chain heads) and only then accepts again. Nothing is ever appended on top
of a batch that did not commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from collector.store.ledger_store import (
    SCHEMA,
    ChainHead,
    Entry,
    LedgerEntry,
    chain_heads_on,
    connect,
    entries_on,
    evidence_count_on,
    evidence_seen_on,
    init_db,
    iter_entries,
    record_evidence_on,
    report_bytes_on,
    report_index_on,
    stored_sequence_on,
)
from collector.store.sqlite_faults import (
    WRITE_ERROR_REASONS,
    commit_room,
    rollback_after,
    write_error_reason,
)
from protos.errors import LedgerUnavailableError, LogError

__all__ = [
    "SCHEMA",
    "ChainHead",
    "Entry",
    "Ledger",
    "LedgerEntry",
    "TreeWriter",
    "connect",
    "init_db",
    "iter_entries",
]

log = logging.getLogger(__name__)

_PAGE = 4096
_PROBE_MAX = 8 << 20


class TreeWriter(Protocol):
    """What the ledger needs of the Merkle log (``collector.store.merkle_log.MerkleLog``)."""

    def append_leaves(
        self, conn: sqlite3.Connection, first_index: int, datas: Sequence[bytes]
    ) -> None: ...

    def committed(self) -> None: ...

    def rolled_back(self) -> None: ...

    def reload(self) -> None: ...


class Ledger:
    """Append-only store of accepted envelopes with group commit."""

    def __init__(
        self,
        path: Path,
        tree: TreeWriter | None = None,
        *,
        max_batch: int = 1024,
        clock_ns: Callable[[], int] = time.time_ns,
        retry_min_seconds: float = 0.05,
        retry_max_seconds: float = 5.0,
    ) -> None:
        """``retry_*``: the recovery probe's backoff after a failed write."""
        if not 0 < retry_min_seconds <= retry_max_seconds:
            raise ValueError("expected 0 < retry_min_seconds <= retry_max_seconds")
        self.path = path
        self._read_lock = threading.Lock()
        self._side_lock = threading.Lock()
        self._open(path)
        self._tree = tree
        self._max_batch = max_batch
        self._clock_ns = clock_ns
        self._pending: list[tuple[Entry, asyncio.Future[int]]] = []
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        self._listeners: list[Callable[[int], None]] = []
        self._size: int = self._committed_size()
        self.batches = 0
        self.batched_entries = 0
        # Failed transactions by reason (collector.store.sqlite_faults.WRITE_ERROR_REASONS).
        self.write_errors: Counter[str] = Counter(dict.fromkeys(WRITE_ERROR_REASONS, 0))
        self.recoveries = 0
        self._retry_min = retry_min_seconds
        self._retry_max = retry_max_seconds
        self._writable = True
        self.unavailable_reason: str | None = None
        self._state_listeners: list[Callable[[bool], None]] = []
        self._recovery: asyncio.Task[None] | None = None
        # Bytes the recovery probe must be able to commit: room for the failed batch.
        self._probe_bytes = 0

    def _open(self, path: Path) -> None:
        """Create or open the SQLite file (``collector.store.StoreLedger`` opens
        another backend instead)."""
        init_db(path)
        self._conn = connect(path)
        self._read = connect(path, readonly=True)
        # Small synchronous writes from the event loop (evidence), never the writer's.
        self._side = connect(path)

    def _committed_size(self) -> int:
        row = self._conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM log").fetchone()
        return int(row[0])

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

    @property
    def writable(self) -> bool:
        """False from a failed write until the recovery probe re-read the disk."""
        return self._writable

    def add_state_listener(self, callback: Callable[[bool], None]) -> None:
        """``callback(writable)`` on the event loop when the ledger stops or
        resumes accepting; on resume it runs before any new append is taken."""
        self._state_listeners.append(callback)

    def stored_sequence(self, keyid: str) -> int:
        """The last committed sequence of ``keyid``'s chain (0 if none)."""
        with self._read_lock:
            return stored_sequence_on(self._read, keyid)

    def chain_heads(self) -> dict[str, ChainHead]:
        """keyid -> last accepted link, as committed."""
        with self._read_lock:
            return chain_heads_on(self._read)

    def report_bytes(self, keyid: str, sequence: int) -> bytes | None:
        """The accepted envelope bytes for (key, sequence), if any."""
        with self._read_lock:
            return report_bytes_on(self._read, keyid, sequence)

    def report_index(self, keyid: str, sequence: int) -> int:
        """Log index of an accepted report (-1 if not committed)."""
        with self._read_lock:
            return report_index_on(self._read, keyid, sequence)

    def entries(self, start: int, end: int) -> list[LedgerEntry]:
        with self._read_lock:
            return entries_on(self._read, start, end)

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
        try:
            return self._record_evidence(
                kind, node_id, sequence, accepted, offending, keyid=keyid, keep=keep, now=now
            )
        except sqlite3.Error as exc:
            reason = write_error_reason(exc)
            self.write_errors[reason] += 1
            log.exception("cannot store %s evidence for %s (%s)", kind, node_id, reason)
            return False

    def _record_evidence(
        self,
        kind: str,
        node_id: str | None,
        sequence: int | None,
        accepted: bytes | None,
        offending: bytes,
        *,
        keyid: str,
        keep: int,
        now: int,
    ) -> bool:
        with self._side_lock:
            return record_evidence_on(
                self._side,
                kind,
                node_id,
                sequence,
                accepted,
                offending,
                keyid=keyid,
                keep=keep,
                now_ns=now,
            )

    def evidence_seen(self, keyid: str, kind: str) -> int:
        """Conflicts of ``kind`` signed by ``keyid``, kept or only counted."""
        with self._read_lock:
            return evidence_seen_on(self._read, keyid, kind)

    def evidence_count(self, kind: str | None = None) -> int:
        with self._read_lock:
            return evidence_count_on(self._read, kind)

    def append(self, entry: Entry) -> asyncio.Future[int]:
        """Queue ``entry``; the future gives its log index once committed. While
        the ledger cannot write it fails at once with LedgerUnavailableError."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        if not self._writable:
            fut.set_exception(
                LedgerUnavailableError(
                    f"the ledger cannot write ({self.unavailable_reason}); resend later"
                )
            )
            return fut
        self._pending.append((entry, fut))
        if not self._flushing:
            self._flushing = True
            self._flush_task = loop.create_task(self._flush())
        return fut

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending and self._writable:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                first = self._size
                try:
                    await loop.run_in_executor(self._writer, self._write, first, batch)
                except Exception as exc:  # noqa: BLE001 - every write failure stops the ledger
                    self._fail(batch, exc)
                    return
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

    def _fail(self, batch: list[tuple[Entry, asyncio.Future[int]]], exc: Exception) -> None:
        """A write failed: stop accepting *before* any future resolves (their
        callbacks must see the ledger unavailable), fail the batch and every
        entry queued behind it (they may chain onto it), start recovery."""
        reason = write_error_reason(exc)
        failed = batch + self._pending
        self._pending = []
        self._probe_bytes = min(_PROBE_MAX, 2 * sum(len(e.data) for e, _ in failed) + _PAGE)
        self.write_errors[reason] += 1
        self._set_writable(False, reason)
        log.error(
            "ledger write failed (%s: %s); %d entries refused, no appends until the disk is"
            " re-read",
            reason,
            exc,
            len(failed),
        )
        err = LedgerUnavailableError(f"ledger write failed ({reason}): {exc}; resend later")
        for _, fut in failed:
            if not fut.done():
                fut.set_exception(err)
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.get_running_loop().create_task(self._recover())

    def _set_writable(self, writable: bool, reason: str | None = None) -> None:
        self._writable = writable
        self.unavailable_reason = None if writable else reason
        for cb in self._state_listeners:
            try:
                cb(writable)
            except Exception:
                log.exception("ledger state listener failed")

    async def _recover(self) -> None:
        """Probe with bounded backoff until a write commits; then re-read."""
        loop = asyncio.get_running_loop()
        delay = self._retry_min
        attempt = 0
        while True:
            await asyncio.sleep(delay)
            attempt += 1
            try:
                size = await loop.run_in_executor(self._writer, self._probe)
            except Exception as exc:  # noqa: BLE001 - still unwritable: retry later
                reason = write_error_reason(exc)
                self.unavailable_reason = reason
                level = logging.WARNING if attempt & (attempt - 1) == 0 else logging.DEBUG
                log.log(level, "ledger still unwritable (attempt %d): %s: %s", attempt, reason, exc)
                delay = min(self._retry_max, delay * 2)
                continue
            grew, self._size = size != self._size, size
            self.recoveries += 1
            log.warning("ledger writable again after %d probes; %d entries on disk", attempt, size)
            self._set_writable(True)
            if grew:  # a commit that reported an error had reached the disk after all
                for cb in self._listeners:
                    cb(size)
            return

    def _probe(self) -> int:
        """The writer thread: commit a row as large as the failed writes (twice
        their bytes, for the tree and indexes), free it again, then re-read size
        and tree. A probe that fits where the failed batch did not would let the
        ledger flap between writable and full."""
        commit_room(self._conn, self._probe_bytes, self._clock_ns())
        if self._tree is not None:
            self._tree.reload()
        row = self._conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM log").fetchone()
        return int(row[0])

    async def limit_pages(self, max_pages: int) -> int:
        """Cap the ledger file at ``max_pages`` pages (SQLite ``max_page_count``;
        writes beyond fail with SQLITE_FULL as on a full disk): a quota, and the
        fault-injection tests' stand-in for a full filesystem. Returns the cap
        SQLite applied (never below the current page count)."""
        loop = asyncio.get_running_loop()

        def apply() -> int:
            row = self._conn.execute(f"PRAGMA max_page_count = {int(max_pages)}").fetchone()
            return int(row[0])

        return await loop.run_in_executor(self._writer, apply)

    async def page_count(self) -> int:
        """Pages in the ledger file now (the writer's view)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._writer, lambda: int(self._conn.execute("PRAGMA page_count").fetchone()[0])
        )

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
        except BaseException as exc:
            # The tree forgets its pending leaves whatever ROLLBACK does, and a
            # ROLLBACK that SQLite already did never hides the real error.
            if self._tree is not None:
                self._tree.rolled_back()
            rollback_after(conn, exc)
            raise
        if self._tree is not None:
            self._tree.committed()

    async def close(self) -> None:
        """Wait for queued writes, then close."""
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        for _ in range(1000):
            if not self._pending and not self._flushing:
                break
            await asyncio.sleep(0.005)
        self._writer.shutdown(wait=True)
        self._close_storage()

    def _close_storage(self) -> None:
        """Close what ``_open`` opened; the writer thread has ended."""
        self._conn.close()
        with self._read_lock:  # a reader in another thread finishes first
            self._read.close()
        with self._side_lock:
            self._side.close()
