"""The ledger's SQLite file: schema, connections, and the row types.

``collector.store.ledger.Ledger`` writes it; readers (replay, the Audit service,
tests) open it read-only with ``connect(path, readonly=True)``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from collector.store.sqlite_faults import rollback_after, write_error_reason
from protos.errors import LedgerUnavailableError

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
CREATE TABLE IF NOT EXISTS writable_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    probed_unix_nanos INTEGER NOT NULL,
    room BLOB
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
-- Key events waiting for the collector to log them (collector.nodes.keylog);
-- envelope NULL: the collector signs the payload with its own key.
CREATE TABLE IF NOT EXISTS key_event (
    id INTEGER PRIMARY KEY,
    payload_type TEXT NOT NULL,
    payload BLOB NOT NULL,
    envelope BLOB,
    created_unix_nanos INTEGER NOT NULL
);
-- Keys that sign nothing any more: revoked, replaced or handed over.
CREATE TABLE IF NOT EXISTS retired_key (
    keyid TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    public_key BLOB NOT NULL,
    node_id TEXT,
    why TEXT NOT NULL,
    retired_unix_nanos INTEGER NOT NULL
);
-- Bumped by every enrolment, handover and revocation: the collector polls it.
CREATE TABLE IF NOT EXISTS key_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
"""


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


# -- reads and the evidence write, shared by ``Ledger`` and ``SqliteStore`` ----------
# Callers hold whatever lock guards ``conn``.


def stored_sequence_on(conn: sqlite3.Connection, keyid: str) -> int:
    """The last committed sequence of ``keyid``'s chain (0 if none)."""
    row = conn.execute("SELECT last_sequence FROM chain WHERE keyid = ?", (keyid,)).fetchone()
    return 0 if row is None else int(row[0])


def chain_heads_on(conn: sqlite3.Connection) -> dict[str, ChainHead]:
    """keyid -> last accepted link, as committed."""
    rows = conn.execute(
        "SELECT keyid, node_id, last_sequence, last_digest, last_index FROM chain"
    ).fetchall()
    return {r[0]: ChainHead(r[1], r[2], bytes(r[3]), r[4]) for r in rows}


def report_bytes_on(conn: sqlite3.Connection, keyid: str, sequence: int) -> bytes | None:
    """The accepted envelope bytes for (key, sequence), if any."""
    row = conn.execute(
        "SELECT data FROM log WHERE keyid = ? AND sequence = ?", (keyid, sequence)
    ).fetchone()
    return None if row is None else bytes(row[0])


def report_index_on(conn: sqlite3.Connection, keyid: str, sequence: int) -> int:
    """Log index of an accepted report (-1 if not committed)."""
    row = conn.execute(
        "SELECT idx FROM log WHERE keyid = ? AND sequence = ?", (keyid, sequence)
    ).fetchone()
    return -1 if row is None else int(row[0])


def entries_on(conn: sqlite3.Connection, start: int, end: int) -> list[LedgerEntry]:
    rows = conn.execute(
        "SELECT idx, data, payload_type, node_id, sequence, received_unix_nanos"
        " FROM log WHERE idx >= ? AND idx < ? ORDER BY idx",
        (start, end),
    ).fetchall()
    return [LedgerEntry(r[0], bytes(r[1]), r[2], r[3], r[4], r[5]) for r in rows]


def evidence_seen_on(conn: sqlite3.Connection, keyid: str, kind: str) -> int:
    """Conflicts of ``kind`` signed by ``keyid``, kept or only counted."""
    row = conn.execute(
        "SELECT count FROM evidence_counts WHERE keyid = ? AND kind = ?", (keyid, kind)
    ).fetchone()
    return 0 if row is None else int(row[0])


def evidence_count_on(conn: sqlite3.Connection, kind: str | None) -> int:
    if kind is None:
        row = conn.execute("SELECT COUNT(*) FROM evidence").fetchone()
    else:
        row = conn.execute("SELECT COUNT(*) FROM evidence WHERE kind = ?", (kind,)).fetchone()
    return int(row[0])


def record_evidence_on(  # noqa: PLR0917 (the ledger and the store both pass these positionally)
    conn: sqlite3.Connection,
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
    """Count one conflict and keep its bytes while ``keyid`` has fewer than ``keep``
    of ``kind``, in one transaction on ``conn``. True when the bytes were kept."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        kept = evidence_seen_on(conn, keyid, kind) < keep
        if kept:
            conn.execute(
                "INSERT INTO evidence(kind, node_id, sequence, accepted_data,"
                " offending_data, detected_unix_nanos) VALUES (?, ?, ?, ?, ?, ?)",
                (kind, node_id, sequence, accepted, offending, now_ns),
            )
        conn.execute(
            "INSERT INTO evidence_counts(keyid, kind, count, last_unix_nanos)"
            " VALUES (?, ?, 1, ?) ON CONFLICT(keyid, kind)"
            " DO UPDATE SET count = count + 1, last_unix_nanos = excluded.last_unix_nanos",
            (keyid, kind, now_ns),
        )
        conn.execute("COMMIT")
    except BaseException as exc:
        rollback_after(conn, exc)
        raise
    return kept


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
    """Create the ledger file and tables if missing; LedgerUnavailableError if
    the file cannot be created or written (a full disk, a read-only mount)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(path)
        try:
            conn.executescript(SCHEMA)
            # Versioned schema, checked at start (collector.store.migrations).
            from collector.store.migrations import migrate_sqlite

            migrate_sqlite(conn, str(path))
        finally:
            conn.close()
    except (OSError, sqlite3.Error) as exc:
        raise LedgerUnavailableError(
            f"cannot open the ledger {path} for writing ({write_error_reason(exc)}: {exc})"
        ) from exc


def iter_entries(location: Path | str, start: int = 0) -> Iterator[LedgerEntry]:
    """Every entry from ``start`` on, in log order, read only: from the SQLite
    file at ``location`` (one cursor), or from any location
    ``collector.store.sql.open_db`` takes (a PostgreSQL URL: pages of rows)."""
    if isinstance(location, str) and "://" in location:
        yield from _iter_db(location, start)
        return
    conn = connect(Path(location), readonly=True)
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


def _iter_db(location: str, start: int, page: int = 1024) -> Iterator[LedgerEntry]:
    from collector.store.sql import open_db  # collector.store imports this module

    db = open_db(location, readonly=True)
    try:
        while True:
            rows = db.execute(
                "SELECT idx, data, payload_type, node_id, sequence, received_unix_nanos"
                " FROM log WHERE idx >= ? ORDER BY idx LIMIT ?",
                (start, page),
            )
            for r in rows:
                yield LedgerEntry(int(r[0]), bytes(r[1]), r[2], r[3], r[4], int(r[5]))
            if len(rows) < page:
                return
            start = int(rows[-1][0]) + 1
    finally:
        db.close()
