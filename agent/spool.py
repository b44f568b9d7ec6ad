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
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from pathlib import Path
from types import TracebackType

from protos.dsse import digest
from protos.errors import SpoolError, SpoolFullError

log = logging.getLogger(__name__)

ZERO_DIGEST = bytes(32)
SPOOL_FILE = "spool.sqlite3"
LOCK_FILE = "spool.lock"

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
"""


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
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("INSERT INTO pending VALUES (?, ?)", (sequence, envelope))
                self._conn.execute(
                    "UPDATE chain SET last_sequence = ?, last_digest = ? WHERE id = 1",
                    (sequence, link),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot store report {sequence} ({exc})") from exc
        self.last_sequence = sequence
        self._last_digest = link
        self.unacked += 1

    # --- acknowledgements ----------------------------------------------------
    def ack(self, up_to: int) -> int:
        """Forget every envelope up to and including ``up_to``; return how many."""
        if up_to <= 0:
            return 0
        acked = max(self.acked_sequence, min(up_to, self.last_sequence))
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cur = self._conn.execute("DELETE FROM pending WHERE sequence <= ?", (up_to,))
                self._conn.execute("UPDATE chain SET acked_sequence = ? WHERE id = 1", (acked,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot record ack {up_to} ({exc})") from exc
        self.acked_sequence = acked
        self.unacked -= cur.rowcount
        return cur.rowcount

    def discard(self, sequence: int) -> bool:
        """Drop one envelope (the collector rejected it for good)."""
        try:
            cur = self._conn.execute("DELETE FROM pending WHERE sequence = ?", (sequence,))
        except sqlite3.Error as exc:
            raise SpoolError(f"{self.path}: cannot discard report {sequence} ({exc})") from exc
        self.unacked -= cur.rowcount
        return cur.rowcount > 0

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
