"""The shared backend: the ledger's rows in PostgreSQL (psycopg 3).

Several collectors open the same database; only the leader writes. Every
write transaction first takes the ``leader`` row ``FOR SHARE`` and compares
its term with the writer's fencing token (``term``): a collector deposed while
it slept finds a higher term and its transaction is refused (FencedError)
before a row is written. A takeover updates that row, so it waits for any
write transaction in flight and the new leader reads every row it committed.

Migrations run under a transaction-scoped advisory lock so two collectors
starting together apply each step once; a version above SCHEMA_VERSION is
refused (SchemaVersionError).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import psycopg

from collector.store.ledger_store import ChainHead, Entry, LedgerEntry
from collector.store.migrations import PG_STEPS, VERSION_TABLE, check_version
from collector.store.sql import redact
from collector.store.tree import batch_rows, load_frontier
from protos.errors import FencedError, LedgerUnavailableError

log = logging.getLogger(__name__)

_MIGRATION_LOCK = 0x636F6D70  # "comp": pg_advisory_xact_lock key for migrations


def _blob(value: object) -> bytes:
    """A BYTEA column's value (psycopg returns bytes)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise LedgerUnavailableError(f"expected bytes from the database, got {type(value).__name__}")


def migrate_pg(conn: psycopg.Connection[tuple[object, ...]], where: str) -> int:
    """Bring the database to SCHEMA_VERSION, in one transaction per step."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(VERSION_TABLE)
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        found = 0 if row is None or row[0] is None else int(str(row[0]))
        check_version(found, where)
        for version in range(found + 1, len(PG_STEPS) + 1):
            conn.execute(PG_STEPS[version - 1].encode())
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version(version) VALUES (%s)", (version,))
            found = version
    return found


class PgStore:
    """``LedgerStore`` on a PostgreSQL database shared by every collector."""

    backend = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        where = redact(url)
        try:
            self._conn = psycopg.connect(url, autocommit=True)
            self._read = psycopg.connect(url, autocommit=True)
        except psycopg.Error as exc:
            raise LedgerUnavailableError(f"cannot connect to the ledger at {where}: {exc}") from exc
        self._lock = threading.Lock()
        self._closed = False
        self._frontier = load_frontier(0, lambda _pos: None)
        try:
            self._version = migrate_pg(self._conn, where)
            self.reload()
        except BaseException:
            self.close()
            raise

    @property
    def size(self) -> int:
        return self._frontier.size

    def _writer(self) -> psycopg.Connection[tuple[object, ...]]:
        """The write connection, opened again if the server dropped it (a restart,
        a PostgreSQL failover): the next call after a failure starts afresh."""
        if self._conn.closed or self._conn.broken:
            if self._closed:
                raise LedgerUnavailableError("the ledger store is closed")
            log.warning("reconnecting the ledger's write connection")
            self._conn.close()  # broken: closed now, not by the garbage collector
            self._conn = psycopg.connect(self.url, autocommit=True)
        return self._conn

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Rows of a read on the read connection; a dropped connection is opened
        again and the read retried once (reads change nothing)."""
        with self._lock:
            for attempt in (0, 1):
                if self._read.closed or self._read.broken:
                    if self._closed:
                        raise LedgerUnavailableError("the ledger store is closed")
                    self._read.close()
                    self._read = psycopg.connect(self.url, autocommit=True)
                try:
                    return self._read.execute(sql.encode(), args).fetchall()
                except psycopg.OperationalError:
                    if attempt or not (self._read.closed or self._read.broken):
                        raise
                    log.warning("reconnecting the ledger's read connection")
        raise AssertionError("unreachable")

    def schema_version(self) -> int:
        return self._version

    def reload(self) -> int:
        conn = self._writer()
        row = conn.execute("SELECT COALESCE(MAX(pos) + 1, 0) FROM merkle_node").fetchone()
        count = 0 if row is None else int(str(row[0]))

        def node(pos: int) -> bytes | None:
            r = conn.execute("SELECT hash FROM merkle_node WHERE pos = %s", (pos,)).fetchone()
            return None if r is None else _blob(r[0])

        self._frontier = load_frontier(count, node)
        return self._frontier.size

    def root(self) -> bytes:
        return self._frontier.root()

    def merkle_node(self, pos: int) -> bytes | None:
        rows = self._query("SELECT hash FROM merkle_node WHERE pos = %s", (pos,))
        return _blob(rows[0][0]) if rows else None

    def append_batch(
        self, first: int, entries: Sequence[Entry], now_ns: int, *, term: int | None = None
    ) -> None:
        rows, heads, nodes, frontier = batch_rows(self._frontier, first, entries, now_ns)
        conn = self._writer()
        with conn.transaction(), conn.cursor() as cur:
            if term is not None:
                cur.execute("SELECT holder, term FROM leader WHERE id = 1 FOR SHARE")
                row = cur.fetchone()
                held = None if row is None else int(str(row[1]))
                if held != term:
                    raise FencedError(
                        f"write with fencing term {term} refused: the leader row holds term"
                        f" {held} ({None if row is None else row[0]}); this collector is"
                        " no longer the leader"
                    )
            cur.executemany(
                "INSERT INTO log(idx, data, payload_type, node_id, keyid, sequence,"
                " received_unix_nanos) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
            cur.executemany(
                "INSERT INTO chain(keyid, node_id, last_sequence, last_digest, last_index)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT(keyid) DO UPDATE SET"
                " last_sequence = excluded.last_sequence, last_digest = excluded.last_digest,"
                " last_index = excluded.last_index",
                heads,
            )
            cur.executemany("INSERT INTO merkle_node(pos, hash) VALUES (%s, %s)", nodes)
        self._frontier = frontier

    def stored_sequence(self, keyid: str) -> int:
        rows = self._query("SELECT last_sequence FROM chain WHERE keyid = %s", (keyid,))
        return int(str(rows[0][0])) if rows else 0

    def chain_heads(self) -> dict[str, ChainHead]:
        rows = self._query(
            "SELECT keyid, node_id, last_sequence, last_digest, last_index FROM chain"
        )
        return {
            str(r[0]): ChainHead(str(r[1]), int(str(r[2])), _blob(r[3]), int(str(r[4])))
            for r in rows
        }

    def report_index(self, keyid: str, sequence: int) -> int:
        rows = self._query(
            "SELECT idx FROM log WHERE keyid = %s AND sequence = %s", (keyid, sequence)
        )
        return int(str(rows[0][0])) if rows else -1

    def report_bytes(self, keyid: str, sequence: int) -> bytes | None:
        rows = self._query(
            "SELECT data FROM log WHERE keyid = %s AND sequence = %s", (keyid, sequence)
        )
        return _blob(rows[0][0]) if rows else None

    def entries(self, start: int, end: int) -> list[LedgerEntry]:
        rows = self._query(
            "SELECT idx, data, payload_type, node_id, sequence, received_unix_nanos"
            " FROM log WHERE idx >= %s AND idx < %s ORDER BY idx",
            (start, end),
        )
        return [
            LedgerEntry(
                int(str(r[0])),
                _blob(r[1]),
                str(r[2]),
                None if r[3] is None else str(r[3]),
                None if r[4] is None else int(str(r[4])),
                int(str(r[5])),
            )
            for r in rows
        ]

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
        with psycopg.connect(self.url, autocommit=True) as conn, conn.transaction():
            # The counter row, locked: two collectors counting at once stay exact.
            conn.execute(
                "INSERT INTO evidence_counts(keyid, kind, count, last_unix_nanos)"
                " VALUES (%s, %s, 0, %s) ON CONFLICT(keyid, kind) DO NOTHING",
                (keyid, kind, now_ns),
            )
            r = conn.execute(
                "SELECT count FROM evidence_counts WHERE keyid = %s AND kind = %s FOR UPDATE",
                (keyid, kind),
            ).fetchone()
            kept = (0 if r is None else int(str(r[0]))) < keep
            if kept:
                conn.execute(
                    "INSERT INTO evidence(kind, node_id, sequence, accepted_data,"
                    " offending_data, detected_unix_nanos) VALUES (%s, %s, %s, %s, %s, %s)",
                    (kind, node_id, sequence, accepted, offending, now_ns),
                )
            conn.execute(
                "UPDATE evidence_counts SET count = count + 1, last_unix_nanos = %s"
                " WHERE keyid = %s AND kind = %s",
                (now_ns, keyid, kind),
            )
        return kept

    def evidence_seen(self, keyid: str, kind: str) -> int:
        rows = self._query(
            "SELECT count FROM evidence_counts WHERE keyid = %s AND kind = %s", (keyid, kind)
        )
        return int(str(rows[0][0])) if rows else 0

    def evidence_count(self, kind: str | None = None) -> int:
        if kind is None:
            rows = self._query("SELECT COUNT(*) FROM evidence")
        else:
            rows = self._query("SELECT COUNT(*) FROM evidence WHERE kind = %s", (kind,))
        return int(str(rows[0][0]))

    def close(self) -> None:
        self._closed = True
        self._conn.close()
        with self._lock:
            self._read.close()
