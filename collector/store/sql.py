"""Portable SQL for the collector's own tables, on SQLite or PostgreSQL.

Enrolments, key events, retired keys and checkpoints live in the same
database as the ledger: the SQLite file, or the PostgreSQL database that
several collectors share. ``open_db(location)`` takes what ``open_store``
takes (``sqlite:///abs/path``, a bare path, ``postgresql://...``) and returns
a ``Db``: statements written once, with ``?`` placeholders, in the subset
both engines run (``INSERT ... ON CONFLICT DO NOTHING/DO UPDATE``, BLOB/BYTEA
columns created by the versioned migrations). Byte columns come back as
``bytes`` from both; a driver error (``DB_ERRORS``) comes back as our
``DatabaseError`` with the driver's error chained, a lost connection as
``LedgerUnavailableError``.

A writable handle migrates the schema first (``collector.store.migrations``);
a read-only one only checks the version: either way a schema newer than this
release is refused with SchemaVersionError. One lock serialises a handle's
statements, and ``transaction()`` holds it to the end, so a handle may be
shared by threads. A PostgreSQL connection the server dropped is opened again:
a read (or BEGIN) at once, a write's error stands and the next statement
reconnects.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from collector.store.migrations import check_version
from protos.errors import (
    ConfigError,
    DatabaseError,
    FencedError,
    LedgerUnavailableError,
    StoreConfigError,
)

log = logging.getLogger(__name__)

Location = str | Path
Row = tuple[Any, ...]
Dialect = Literal["sqlite", "postgresql"]

try:  # the optional extra: only PostgreSQL locations need it
    import psycopg
except ImportError:  # pragma: no cover - exercised where psycopg is absent
    psycopg = None  # type: ignore[assignment]

# Every driver error either backend raises.
DB_ERRORS: tuple[type[Exception], ...] = (
    (sqlite3.Error,) if psycopg is None else (sqlite3.Error, psycopg.Error)
)


def is_postgres(location: Location) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def sqlite_path(location: Location) -> Path:
    """The file a SQLite location names; StoreConfigError for any other scheme."""
    if isinstance(location, Path):
        return location
    if location.startswith("sqlite://"):
        path = location.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise StoreConfigError(f"sqlite URL {location!r} must be sqlite:///absolute/path")
        return Path(path)
    if not location.strip():
        raise StoreConfigError("the ledger location is empty: give a path or a URL")
    if "://" in location:
        raise StoreConfigError(
            f"ledger URL {redact(location)!r}: the scheme names no backend"
            " (sqlite:// or postgresql://)"
        )
    return Path(location)


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    head, sep, tail = url.partition("@")
    if not sep:
        return url
    scheme, _, cred = head.partition("://")
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user}@{tail}"


def describe(location: Location) -> str:
    """Where ``location`` points, fit for a message (no password)."""
    if isinstance(location, str) and is_postgres(location):
        return redact(location)
    return str(sqlite_path(location))


def _pg_sql(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class Db:
    """One connection to the collector's database (see the module docstring)."""

    def __init__(self, conn: Any, dialect: Dialect, where: str, url: str | None = None) -> None:
        self._conn = conn
        self.dialect: Dialect = dialect
        self.where = where
        self._url = url
        self._lock = threading.RLock()
        self._depth = 0

    # -- statements ------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Run one statement; its rows (empty for a statement that returns none)."""
        with self._lock:
            self._ready()
            try:
                return self._run(sql, params)
            except DB_ERRORS as exc:
                if not self._retryable(sql):
                    raise self._mapped(exc) from exc
                try:
                    self._reconnect()
                    return self._run(sql, params)
                except DB_ERRORS as again:
                    raise self._mapped(again) from again

    def one(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        """The first row, or None."""
        rows = self.execute(sql, params)
        return rows[0] if rows else None

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        with self._lock:
            self._ready()
            try:
                if self.dialect == "sqlite":
                    self._conn.executemany(sql, rows)
                else:
                    with self._conn.cursor() as cur:
                        cur.executemany(_pg_sql(sql).encode(), rows)
            except DB_ERRORS as exc:
                raise self._mapped(exc) from exc

    def _run(self, sql: str, params: Sequence[object]) -> list[Row]:
        if self.dialect == "sqlite":
            cur = self._conn.execute(sql, params)
            try:
                rows: list[Row] = cur.fetchall()
                return rows
            finally:
                cur.close()
        with self._conn.cursor() as cur:
            cur.execute(_pg_sql(sql).encode(), params)
            if cur.description is None:
                return []
            return [
                tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                for row in cur.fetchall()
            ]

    def _dropped(self) -> bool:
        """A PostgreSQL connection outside a transaction that the server dropped
        (a restart, a PostgreSQL failover), and that we can open again."""
        return (
            self.dialect == "postgresql"
            and not self._depth
            and self._url is not None
            and bool(self._conn.closed or self._conn.broken)
        )

    def _ready(self) -> None:
        """A connection known to be dropped is opened again before the next
        statement is sent: nothing of that statement reached the server."""
        if self._dropped():
            self._reconnect()

    def _retryable(self, sql: str) -> bool:
        """A read (or a BEGIN) whose connection dropped under it runs again once
        on a new one; a write's outcome is unknown, so its error stands (the
        next statement reconnects)."""
        return self._dropped() and sql.lstrip().upper().startswith(("SELECT", "BEGIN"))

    def _reconnect(self) -> None:
        assert self._url is not None
        log.warning("reconnecting to the collector database at %s", self.where)
        self._conn.close()
        self._conn = _pg_connect(self._url, self.where)

    def _mapped(self, exc: Exception) -> Exception:
        if self.dialect == "postgresql" and (self._conn.closed or self._conn.broken):
            return LedgerUnavailableError(f"the collector database at {self.where} is gone: {exc}")
        return DatabaseError(f"{self.where}: {exc}")

    # -- transactions ----------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        if self.dialect == "sqlite":
            return bool(self._conn.in_transaction)
        status = self._conn.info.transaction_status
        return bool(status != psycopg.pq.TransactionStatus.IDLE)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE on SQLite, so it takes the write
        lock at once; BEGIN on PostgreSQL): committed at the end of the block,
        rolled back on any exception, the rollback only while one is open
        (SQLite ends some by itself, e.g. on SQLITE_FULL) and never masking it."""
        with self._lock:
            if self._depth:
                raise DatabaseError("transactions do not nest")
            self.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
            self._depth = 1
            try:
                yield
                self.execute("COMMIT")
            except BaseException as exc:
                self._rollback_after(exc)
                raise
            finally:
                self._depth = 0

    def _rollback_after(self, error: BaseException) -> None:
        if self.dialect == "postgresql" and (self._conn.closed or self._conn.broken):
            return  # the server ended it with the connection
        if not self.in_transaction:
            return  # SQLite already rolled it back
        try:
            self._conn.execute("ROLLBACK")
        except DB_ERRORS as exc:
            log.warning("rollback after %r failed too: %s", error, exc)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _pg_connect(url: str, where: str) -> Any:
    if psycopg is None:
        raise StoreConfigError(
            "the ledger URL is PostgreSQL but psycopg is not installed;"
            " install computewatch[postgres]"
        )
    try:
        return psycopg.connect(url, autocommit=True)
    except psycopg.Error as exc:
        raise LedgerUnavailableError(f"cannot connect to the ledger at {where}: {exc}") from exc


def open_db(location: Location, *, readonly: bool = False) -> Db:
    """A handle on the collector's database at ``location``.

    Writable: created (SQLite) and migrated to this release's schema.
    ``readonly``: must exist already (ConfigError otherwise); its schema
    version is checked, never changed, and on SQLite nothing can be written.
    """
    if is_postgres(location):
        assert isinstance(location, str)
        where = redact(location)
        conn = _pg_connect(location, where)
        db = Db(conn, "postgresql", where, location)
        if not readonly:
            from collector.store.pg_store import migrate_pg

            try:
                migrate_pg(conn, where)
            except BaseException:
                db.close()
                raise
            return db
    else:
        path = sqlite_path(location)
        from collector.store.ledger_store import connect, init_db

        if readonly:
            if not path.exists():
                raise ConfigError(f"{path}: no such ledger; enroll a node first")
            try:
                conn = connect(path, readonly=True)
            except sqlite3.Error as exc:
                raise LedgerUnavailableError(f"cannot open the ledger {path}: {exc}") from exc
        else:
            init_db(path)  # creates the file and migrates
            conn = connect(path)
        db = Db(conn, "sqlite", str(path))
    try:
        _check(db)
    except BaseException:
        db.close()
        raise
    return db


def _check(db: Db) -> None:
    """SchemaVersionError for a schema newer than this release; a database that
    is not a computewatch ledger at all is a ConfigError."""
    try:
        if db.dialect == "sqlite" and not db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ):
            return  # a ledger from before versions, read only: its collector migrates it
        row = db.one("SELECT MAX(version) FROM schema_version")
    except DatabaseError as exc:
        raise ConfigError(f"{db.where}: not a computewatch ledger ({exc})") from exc
    check_version(0 if row is None or row[0] is None else int(row[0]), db.where)


def check_term(db: Db, term: int | None) -> None:
    """Inside a write transaction on the shared database: FencedError unless the
    ``leader`` row (``collector.ha.leader``) holds fencing term ``term``. The
    row is taken FOR SHARE, so a takeover waits for this transaction and the
    new leader reads what it wrote. A SQLite file has one writer: no check."""
    if db.dialect != "postgresql":
        return
    row = db.one("SELECT holder, term FROM leader WHERE id = 1 FOR SHARE")
    held = None if row is None else int(row[1])
    if term is None or held != term:
        raise FencedError(
            f"write with fencing term {term} refused: the leader row holds term {held}"
            f" ({None if row is None else row[0]}); this collector is not the leader"
        )
