"""The agent's durable state: its report chain and the reports not yet acknowledged.

One SQLite file (WAL, ``synchronous=FULL``) in the state directory. Sealing a
report updates the chain head and stores the envelope in ONE transaction, so
after a crash the agent continues exactly where the last committed link left
off: no link is lost, none is issued twice with different bytes.

The spool belongs to one node key: a state directory written under another
key or node id is refused rather than continued, because the collector keeps
chains per key. A lock file keeps two agents from sharing a state directory
(two writers would fork the chain, which the collector records as
equivocation).

Storage faults. SQLite rolls a transaction back by itself on SQLITE_FULL,
SQLITE_IOERR and friends, so a rollback is only issued while
``conn.in_transaction`` (an unconditional ROLLBACK would raise "no transaction
is active" and hide the real error). After a failed write the chain head is
re-read from disk before the next report is sealed: a report whose append
failed was never stored and never sent (the stream only sends what the spool
holds), so its sequence is reused by the next report, and nothing is ever
chained onto bytes that exist nowhere. If the COMMIT did reach the disk after
all (an I/O error reported after the WAL write), the re-read finds it and the
chain continues from it.

Envelopes the collector refused for their content are kept in ``refused``
(the newest ``MAX_REFUSED``) as local evidence when the agent replaces them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from protos.dsse import digest
from protos.errors import SpoolError, SpoolFullError

log = logging.getLogger(__name__)

ZERO_DIGEST = bytes(32)
SPOOL_FILE = "spool.sqlite3"
LOCK_FILE = "spool.lock"
# Refused envelopes kept as local evidence; older ones are pruned.
MAX_REFUSED = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chain (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    node_id TEXT NOT NULL,
    keyid TEXT NOT NULL,
    last_sequence INTEGER NOT NULL,
    last_digest BLOB NOT NULL,
    acked_sequence INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pending (
    sequence INTEGER PRIMARY KEY,
    envelope BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS refused (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sequence INTEGER NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    refused_unix_nanos INTEGER NOT NULL,
    envelope BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class Refused:
    """An envelope the collector refused for its content, kept as evidence."""

    sequence: int
    reason: str
    message: str
    refused_unix_nanos: int
    envelope: bytes


def _spool_error(path: Path, what: str, exc: sqlite3.Error) -> SpoolError:
    """SpoolFullError for SQLITE_FULL (disk or quota full), SpoolError otherwise."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return SpoolFullError(f"{path}: {what}: the disk is full ({exc})")
    return SpoolError(f"{path}: {what} ({exc})")


class Spool:
    """Chain head, unacknowledged envelopes and small named state blobs.

    Not thread-safe: use it from one thread (the agent's event loop). The
    ``unacked``, ``last_sequence`` and ``acked_sequence`` attributes are plain
    ints and may be read from a metrics thread.
    """

    def __init__(self, state_dir: Path, *, node_id: str, keyid: str, max_unacked: int) -> None:
        if max_unacked < 1:
            raise SpoolError(f"max_unacked = {max_unacked}: expected at least 1")
        self.path = state_dir / SPOOL_FILE
        self.max_unacked = max_unacked
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"{state_dir}: cannot create state directory ({exc})") from exc
        self._lock_fd = self._lock(state_dir / LOCK_FILE)
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            self._load(node_id, keyid)
        except sqlite3.Error as exc:
            self._release()
            raise SpoolError(f"{self.path}: cannot open spool ({exc})") from exc
        except SpoolError:
            self._release()
            raise

    @staticmethod
    def _lock(path: Path) -> int:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"{path}: cannot open lock file ({exc})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SpoolError(
                f"{path.parent}: another agent is using this state directory;"
                " two agents sharing one chain would fork it"
            ) from exc
        return fd

    def _release(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = -1

    def _load(self, node_id: str, keyid: str) -> None:
        row = self._conn.execute(
            "SELECT node_id, keyid, last_sequence, last_digest, acked_sequence"
            " FROM chain WHERE id = 1"
        ).fetchone()
        if row is None:
            self._conn.execute(
                "INSERT INTO chain VALUES (1, ?, ?, 0, ?, 0)", (node_id, keyid, ZERO_DIGEST)
            )
            row = (node_id, keyid, 0, ZERO_DIGEST, 0)
        stored_node, stored_key, last_seq, last_digest, acked = row
        if stored_node != node_id or stored_key != keyid:
            raise SpoolError(
                f"{self.path}: holds the chain of node {stored_node!r} with key"
                f" {stored_key[:16]}, not node {node_id!r} with key {keyid[:16]};"
                " a new key starts a new chain: move the state directory aside"
            )
        self.last_sequence: int = int(last_seq)
        self._last_digest: bytes = bytes(last_digest)
        self.acked_sequence: int = int(acked)
        (count,) = self._conn.execute("SELECT COUNT(*) FROM pending").fetchone()
        self.unacked: int = int(count)
        # Set after a failed write: the head is re-read from disk before the next one.
        self._suspect = False

    def _rollback(self) -> None:
        """Roll back the open transaction, if SQLite has not already done so."""
        if not self._conn.in_transaction:
            return
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("%s: ROLLBACK failed", self.path)

    def _reload_head(self) -> None:
        """Adopt the chain head and pending count that are on disk."""
        try:
            row = self._conn.execute(
                "SELECT last_sequence, last_digest, acked_sequence FROM chain WHERE id = 1"
            ).fetchone()
            (count,) = self._conn.execute("SELECT COUNT(*) FROM pending").fetchone()
        except sqlite3.Error as exc:
            raise _spool_error(self.path, "cannot re-read the chain head", exc) from exc
        if int(row[0]) != self.last_sequence:
            log.warning(
                "%s: after a failed write the spool holds report %d (memory said %d);"
                " continuing from the disk",
                self.path,
                row[0],
                self.last_sequence,
            )
        self.last_sequence = int(row[0])
        self._last_digest = bytes(row[1])
        self.acked_sequence = int(row[2])
        self.unacked = int(count)
        self._suspect = False

    def _write(self, what: str, statements: list[tuple[str, tuple[object, ...]]]) -> list[int]:
        """Run ``statements`` in one transaction; return each one's rowcount."""
        if self._suspect:
            self._reload_head()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                counts = [self._conn.execute(sql, args).rowcount for sql, args in statements]
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except sqlite3.Error as exc:
            self._suspect = True
            err = _spool_error(self.path, what, exc)
            with contextlib.suppress(SpoolError):
                self._reload_head()
            raise err from exc
        return counts

    # --- the chain -----------------------------------------------------------
    def next_link(self) -> tuple[int, bytes]:
        """(sequence, previous_digest) for the next report to seal."""
        return self.last_sequence + 1, self._last_digest

    def room(self) -> int:
        """How many more reports may be appended before the bound is reached."""
        return max(0, self.max_unacked - self.unacked)

    def append(self, sequence: int, envelope: bytes) -> None:
        """Store a sealed envelope and advance the chain head, atomically."""
        expected = self.last_sequence + 1
        if sequence != expected:
            raise SpoolError(f"sequence {sequence} is not the next link ({expected})")
        if self.room() <= 0:
            raise SpoolFullError(
                f"{self.unacked} reports are unacknowledged (max_unacked = {self.max_unacked})"
            )
        link = digest(envelope)
        self._write(
            f"cannot store report {sequence}",
            [
                ("INSERT INTO pending VALUES (?, ?)", (sequence, envelope)),
                (
                    "UPDATE chain SET last_sequence = ?, last_digest = ? WHERE id = 1",
                    (sequence, link),
                ),
            ],
        )
        self.last_sequence = sequence
        self._last_digest = link
        self.unacked += 1

    # --- acknowledgements ----------------------------------------------------
    def ack(self, up_to: int) -> int:
        """Forget every envelope up to and including ``up_to``; return how many."""
        if up_to <= 0:
            return 0
        acked = max(self.acked_sequence, min(up_to, self.last_sequence))
        deleted, _ = self._write(
            f"cannot record ack {up_to}",
            [
                ("DELETE FROM pending WHERE sequence <= ?", (up_to,)),
                ("UPDATE chain SET acked_sequence = ? WHERE id = 1", (acked,)),
            ],
        )
        self.acked_sequence = acked
        self.unacked -= deleted
        return deleted

    def discard(self, sequence: int) -> bool:
        """Drop one envelope (the collector rejected it for good)."""
        try:
            cur = self._conn.execute("DELETE FROM pending WHERE sequence = ?", (sequence,))
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot discard report {sequence} ({exc})") from exc
        self.unacked -= cur.rowcount
        return cur.rowcount > 0

    # --- content refusals ---------------------------------------------------------
    def replace_refused(self, refused: Refused, envelopes: list[bytes]) -> None:
        """Keep ``refused`` as evidence and replace every pending envelope from
        its sequence on by ``envelopes`` (the corrected report, then the later
        ones re-chained onto it), atomically. The collector stored none of
        them (it cannot store a link after one it refused), so this is a
        correction, not equivocation."""
        first = refused.sequence
        last = first + len(envelopes) - 1
        if not envelopes or last != self.last_sequence:
            raise SpoolError(
                f"replacing reports {first}..{last} must end at the chain head {self.last_sequence}"
            )
        statements: list[tuple[str, tuple[object, ...]]] = [
            (
                "INSERT INTO refused (sequence, reason, message, refused_unix_nanos, envelope)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    first,
                    refused.reason,
                    refused.message,
                    refused.refused_unix_nanos,
                    refused.envelope,
                ),
            ),
            (
                "DELETE FROM refused WHERE id NOT IN"
                " (SELECT id FROM refused ORDER BY id DESC LIMIT ?)",
                (MAX_REFUSED,),
            ),
            ("DELETE FROM pending WHERE sequence >= ?", (first,)),
        ]
        statements += [
            ("INSERT INTO pending VALUES (?, ?)", (first + i, env))
            for i, env in enumerate(envelopes)
        ]
        link = digest(envelopes[-1])
        statements.append(
            ("UPDATE chain SET last_digest = ? WHERE id = 1 AND last_sequence = ?", (link, last))
        )
        counts = self._write(f"cannot replace refused report {first}", statements)
        if counts[-1] != 1:  # pragma: no cover - the head was checked above
            raise SpoolError(f"{self.path}: the chain head moved while replacing {first}")
        self._last_digest = link

    def refusals(self, sequence: int | None = None) -> list[Refused]:
        """Refused envelopes kept as evidence (for ``sequence`` only, if given), oldest first."""
        try:
            rows = self._conn.execute(
                "SELECT sequence, reason, message, refused_unix_nanos, envelope FROM refused"
                " WHERE ? IS NULL OR sequence = ? ORDER BY id",
                (sequence, sequence),
            ).fetchall()
        except sqlite3.Error as exc:
            raise _spool_error(self.path, "cannot read refused reports", exc) from exc
        return [Refused(int(r[0]), r[1], r[2], int(r[3]), bytes(r[4])) for r in rows]

    def pending(self, after: int = 0, limit: int | None = None) -> list[tuple[int, bytes]]:
        """Unacknowledged (sequence, envelope) pairs with sequence > ``after``, in order."""
        try:
            rows = self._conn.execute(
                "SELECT sequence, envelope FROM pending WHERE sequence > ?"
                " ORDER BY sequence LIMIT ?",
                (after, -1 if limit is None else limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot read pending reports ({exc})") from exc
        return [(seq, bytes(env)) for seq, env in rows]

    # --- named state for other modules -----------------------------------------
    def get_state(self, name: str) -> bytes | None:
        try:
            row = self._conn.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot read state {name!r} ({exc})") from exc
        return None if row is None else bytes(row[0])

    def put_state(self, name: str, value: bytes) -> None:
        try:
            self._conn.execute(
                "INSERT INTO state VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, value),
            )
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot write state {name!r} ({exc})") from exc

    # --- lifetime ----------------------------------------------------------------
    def close(self) -> None:
        self._release()

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
