"""Leader election with a fencing token, in the shared PostgreSQL database.

One row, ``leader(id = 1, holder, term, expires_unix_nanos)``. A candidate
takes it when it is absent or its lease has lapsed, raising ``term`` by one;
the leader renews it well before it lapses. ``term`` is the fencing token:
every write transaction of ``PgStore.append_batch`` compares it in the same
transaction, so a leader that paused past its lease (GC, SIGSTOP, a partition)
and wakes up after a standby took over cannot write a row. Losing a renewal
means losing leadership at once: the caller must stop sequencing and signing.

Time is the database server's clock (``clock_timestamp()``), one clock for
every candidate, so host clock skew cannot let two hosts both believe they
hold the lease; tests may pass ``clock_ns`` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from collector.store.pg_store import migrate_pg

log = logging.getLogger(__name__)

_DB_NOW = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000000)::BIGINT"


@dataclass(frozen=True)
class LeaderState:
    """Who holds the lease, with which term, until when (database clock, ns)."""

    holder: str
    term: int
    expires_unix_nanos: int


class LeaderLease:
    """One candidate's view of the ``leader`` row."""

    def __init__(
        self,
        url: str,
        holder: str,
        *,
        lease_seconds: float = 10.0,
        clock_ns: Callable[[], int] | None = None,
    ) -> None:
        if not holder:
            raise ValueError("a leader candidate needs a non-empty holder name")
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.holder = holder
        self.lease_ns = int(lease_seconds * 1e9)
        self._clock_ns = clock_ns
        self._url = url
        self._closed = False
        self._conn = psycopg.connect(url, autocommit=True)
        try:  # the leader row's table comes with the schema: same version check
            migrate_pg(self._conn, holder)
        except BaseException:
            self._conn.close()
            raise
        self.term: int | None = None  # set while this candidate leads

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        """The connection, opened again after the server dropped it; a failed
        call raised (the elector counts that as not leading), the next one retries."""
        if self._conn.closed or self._conn.broken:
            if self._closed:
                raise psycopg.OperationalError("the leader lease is closed")
            log.warning("%s: reconnecting the leader lease", self.holder)
            self._conn.close()  # broken: closed now, not by the garbage collector
            self._conn = psycopg.connect(self._url, autocommit=True)
        return self._conn

    @property
    def is_leader(self) -> bool:
        return self.term is not None

    def _now(self) -> int:
        if self._clock_ns is not None:
            return self._clock_ns()
        row = self._connection().execute(f"SELECT {_DB_NOW}").fetchone()
        assert row is not None
        return int(str(row[0]))

    def current(self) -> LeaderState | None:
        """The row as committed now (standbys report it as who leads)."""
        row = (
            self._connection()
            .execute("SELECT holder, term, expires_unix_nanos FROM leader WHERE id = 1")
            .fetchone()
        )
        if row is None:
            return None
        return LeaderState(str(row[0]), int(str(row[1])), int(str(row[2])))

    def try_acquire(self) -> int | None:
        """Take or renew the lease; the term held now, or None (a standby).

        Renewal keeps the term; a takeover after a lapse raises it by one. A
        renewal that finds another term means this candidate was deposed."""
        conn = self._connection()
        with conn.transaction():
            now = self._now()
            row = (
                self._connection()
                .execute(
                    "SELECT holder, term, expires_unix_nanos FROM leader WHERE id = 1 FOR UPDATE"
                )
                .fetchone()
            )
            expires = now + self.lease_ns
            if row is None:
                self._connection().execute(
                    "INSERT INTO leader(id, holder, term, expires_unix_nanos)"
                    " VALUES (1, %s, 1, %s)",
                    (self.holder, expires),
                )
                term = 1
            else:
                holder, held, until = str(row[0]), int(str(row[1])), int(str(row[2]))
                if holder == self.holder and held == self.term:
                    term = held  # renewal
                elif until <= now:
                    term = held + 1  # takeover after the lease lapsed
                else:
                    if self.term is not None:
                        log.error("deposed: %s leads with term %d", holder, held)
                    self.term = None
                    return None
                self._connection().execute(
                    "UPDATE leader SET holder = %s, term = %s, expires_unix_nanos = %s"
                    " WHERE id = 1",
                    (self.holder, term, expires),
                )
        if term != self.term:
            log.warning("%s leads with term %d", self.holder, term)
        self.term = term
        return term

    def resign(self) -> None:
        """Give the lease up at once (a clean shutdown): a standby need not wait it out."""
        if self.term is None:
            return
        self._connection().execute(
            "UPDATE leader SET expires_unix_nanos = 0 WHERE id = 1 AND holder = %s AND term = %s",
            (self.holder, self.term),
        )
        self.term = None

    def close(self) -> None:
        self._closed = True
        self._conn.close()
