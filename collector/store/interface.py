"""The storage interface every ledger backend implements, and the URL that picks one.

A store is synchronous and used from one writer thread for writes (the
sequencer's); reads may come from any thread. ``append_batch`` writes a batch
of log rows, the chain heads they move, and the Merkle tree's nodes in one
transaction: either all of it commits or none. ``term`` is the writer's
fencing token (``collector.ha.leader``): a backend shared by several
collectors refuses the write with FencedError when another collector holds a
higher term, in the same transaction; the embedded backend has one writer and
ignores it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from collector.store.ledger_store import ChainHead, Entry, LedgerEntry
from collector.store.sql import sqlite_path
from protos.errors import StoreConfigError


class LedgerStore(Protocol):
    """The ledger's rows in one database."""

    backend: str

    @property
    def size(self) -> int:
        """Committed log entries (as this store last saw them)."""
        ...

    def append_batch(
        self, first: int, entries: Sequence[Entry], now_ns: int, *, term: int | None = None
    ) -> None: ...

    def reload(self) -> int:
        """Re-read size and the Merkle frontier from the database; the new size."""
        ...

    def root(self) -> bytes:
        """Root hash of the committed Merkle tree (RFC 9162)."""
        ...

    def merkle_node(self, pos: int) -> bytes | None: ...

    def stored_sequence(self, keyid: str) -> int: ...

    def chain_heads(self) -> dict[str, ChainHead]: ...

    def report_index(self, keyid: str, sequence: int) -> int: ...

    def report_bytes(self, keyid: str, sequence: int) -> bytes | None: ...

    def entries(self, start: int, end: int) -> list[LedgerEntry]: ...

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
    ) -> bool: ...

    def evidence_seen(self, keyid: str, kind: str) -> int: ...

    def evidence_count(self, kind: str | None = None) -> int: ...

    def schema_version(self) -> int: ...

    def close(self) -> None: ...


def open_store(url: str) -> LedgerStore:
    """``sqlite:///path``, a bare path, or ``postgresql://...``/``postgres://...``."""
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from collector.store.pg_store import PgStore
        except ImportError as exc:  # the optional extra is not installed
            raise StoreConfigError(
                f"the ledger URL is PostgreSQL but psycopg is not installed ({exc});"
                " install computewatch[postgres]"
            ) from exc
        return PgStore(url)
    return _sqlite(sqlite_path(url))


def _sqlite(path: Path) -> LedgerStore:
    from collector.store.sqlite_store import SqliteStore

    return SqliteStore(path)
