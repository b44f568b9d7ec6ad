"""The ledger's group commit and fail-stop over any ``LedgerStore``.

``StoreLedger`` is ``collector.store.ledger.Ledger`` (the same futures, group
commit, commit and state listeners, fail-stop and recovery probe) with the
rows written through a ``LedgerStore``: on PostgreSQL, every batch carries the
fencing term of this collector's leadership (``term()``, the ``Elector``'s).
A refused batch (FencedError: another collector leads) fails like any write:
its futures and everything queued behind it fail, appends are refused, and
the recovery probe succeeds only once this collector leads again, re-reading
the size and the Merkle frontier the other leader left. The Merkle tree's rows
are written by the store in the same transaction (``collector.store.tree``).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from collector.store.interface import LedgerStore
from collector.store.ledger import Ledger
from collector.store.ledger_store import ChainHead, LedgerEntry
from protos.errors import FencedError, LogError

log = logging.getLogger(__name__)


class StoreLedger(Ledger):
    """A ``Ledger`` whose rows live in ``store``; ``term`` gives the fencing token."""

    def __init__(
        self,
        store: LedgerStore,
        *,
        term: Callable[[], int | None] | None = None,
        max_batch: int = 1024,
        clock_ns: Callable[[], int] = time.time_ns,
        retry_min_seconds: float = 0.05,
        retry_max_seconds: float = 5.0,
    ) -> None:
        self._store = store
        self._term = term
        super().__init__(
            Path(f"<{store.backend}>"),
            None,
            max_batch=max_batch,
            clock_ns=clock_ns,
            retry_min_seconds=retry_min_seconds,
            retry_max_seconds=retry_max_seconds,
        )
        if term is not None and term() is None:  # a standby: refuse until it leads
            self._writable = False
            self.unavailable_reason = "standby"

    def leadership_changed(self, term: int | None) -> None:
        """An ``Elector`` listener (on the event loop). Losing the lead stops
        appends at once; gaining it starts the recovery probe, which re-reads
        the store (the old leader's rows) and tells the state listeners (ingest
        rebuilds its chain book) before the first append is taken."""
        if term is None:
            if self._writable:
                log.warning("no longer the leader: the ledger stops sequencing")
                self._set_writable(False, "standby")
            return
        if not self._writable and (self._recovery is None or self._recovery.done()):
            log.warning("leader with term %d: re-reading the ledger before sequencing", term)
            self._recovery = asyncio.get_running_loop().create_task(self._recover())

    @property
    def store(self) -> LedgerStore:
        return self._store

    def _open(self, path: Path) -> None:
        del path  # the store is already open

    def _committed_size(self) -> int:
        return self._store.reload()

    def _fence(self) -> int | None:
        """The term to write with; FencedError while this collector does not lead."""
        if self._term is None:
            return None
        term = self._term()
        if term is None:
            raise FencedError("this collector is a standby: it does not sequence the ledger")
        return term

    # -- reading ---------------------------------------------------------------------
    @property
    def connection(self) -> sqlite3.Connection:
        """Refused: the rows are not in a SQLite file this ledger owns."""
        raise LogError("a StoreLedger has no SQLite connection")

    def stored_sequence(self, keyid: str) -> int:
        return self._store.stored_sequence(keyid)

    def chain_heads(self) -> dict[str, ChainHead]:
        return self._store.chain_heads()

    def report_bytes(self, keyid: str, sequence: int) -> bytes | None:
        return self._store.report_bytes(keyid, sequence)

    def report_index(self, keyid: str, sequence: int) -> int:
        return self._store.report_index(keyid, sequence)

    def entries(self, start: int, end: int) -> list[LedgerEntry]:
        return self._store.entries(start, end)

    def evidence_seen(self, keyid: str, kind: str) -> int:
        return self._store.evidence_seen(keyid, kind)

    def evidence_count(self, kind: str | None = None) -> int:
        return self._store.evidence_count(kind)

    # -- writing ---------------------------------------------------------------------
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
        try:
            return self._store.record_evidence(
                kind,
                node_id,
                sequence,
                accepted,
                offending,
                keyid=keyid,
                keep=keep,
                now_ns=self._clock_ns(),
            )
        except Exception:  # evidence is best effort, as in Ledger
            self.write_errors["other"] += 1
            log.exception("cannot store %s evidence for %s", kind, node_id)
            return False

    def _write(self, first: int, batch: Sequence[tuple[object, asyncio.Future[int]]]) -> None:
        term = self._fence()
        entries = [e for e, _ in batch]
        self._store.append_batch(first, entries, self._clock_ns(), term=term)  # type: ignore[arg-type]

    def _probe(self) -> int:
        """Writable again once this collector leads and the store answers: re-read
        the size and frontier (the failed batch may have committed, or another
        leader may have written since)."""
        self._fence()
        return self._store.reload()

    async def limit_pages(self, max_pages: int) -> int:
        del max_pages
        raise LogError("page limits are SQLite's; this ledger is on " + self._store.backend)

    async def page_count(self) -> int:
        raise LogError("page counts are SQLite's; this ledger is on " + self._store.backend)

    def _close_storage(self) -> None:
        """Close the store (``Ledger.close`` waits for queued writes first)."""
        self._store.close()
