"""What a failed SQLite write means, and how to end its transaction safely.

SQLite rolls a transaction back by itself after some errors (SQLITE_FULL,
SQLITE_IOERR, SQLITE_NOMEM, SQLITE_BUSY, SQLITE_INTERRUPT: see "Response To
Errors Within A Transaction", https://www.sqlite.org/lang_transaction.html).
An explicit ROLLBACK then fails with "cannot rollback - no transaction is
active"; raising that would hide the real error, so ``rollback_after`` only
rolls back a transaction that is still open and never raises.
"""

from __future__ import annotations

import logging
import sqlite3

log = logging.getLogger(__name__)

# Reasons for ``computewatch_collector_ledger_write_errors_total``; every one
# is exported from the start at 0.
WRITE_ERROR_REASONS = ("disk_full", "io_error", "busy", "readonly", "constraint", "other")

_BY_CODE = {
    13: "disk_full",  # SQLITE_FULL
    10: "io_error",  # SQLITE_IOERR (extended codes share the low byte)
    5: "busy",  # SQLITE_BUSY
    6: "busy",  # SQLITE_LOCKED
    8: "readonly",  # SQLITE_READONLY
    19: "constraint",  # SQLITE_CONSTRAINT (a bug: the chain book let a duplicate through)
}


def write_error_reason(exc: BaseException) -> str:
    """One of WRITE_ERROR_REASONS for a failed write."""
    if isinstance(exc, OSError):
        return "disk_full" if exc.errno == 28 else "io_error"  # ENOSPC
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, sqlite3.Error) and isinstance(code, int):
        return _BY_CODE.get(code & 0xFF, "other")
    return "other"


def rollback_after(conn: sqlite3.Connection, error: BaseException) -> None:
    """End the transaction that ``error`` interrupted, keeping ``error`` the one raised."""
    if not conn.in_transaction:
        return  # SQLite already rolled it back
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        log.warning("rollback after %r failed too: %s", error, exc)


def commit_room(conn: sqlite3.Connection, nbytes: int, now_ns: int) -> None:
    """Commit a ``writable_probe`` row of ``nbytes``, then free it (two
    transactions): raises like the failed write did while there is no room."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    for sql, args in (
        (
            "INSERT OR REPLACE INTO writable_probe(id, probed_unix_nanos, room)"
            " VALUES (1, ?, zeroblob(?))",
            (now_ns, nbytes),
        ),
        ("UPDATE writable_probe SET room = NULL WHERE id = 1", ()),
    ):
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(sql, args)
            conn.execute("COMMIT")
        except BaseException as exc:
            rollback_after(conn, exc)
            raise
