"""Signed checkpoints of the Merkle log, and the history subscribers catch up with.

The checkpointer signs a C2SP checkpoint (``protos.checkpoint``) of the
committed tree when the tree has grown (at most once per
``min_interval_seconds``) and, in any case, once per ``interval_seconds``:
a fresh signature over an unchanged size is how outsiders tell a quiet log
from a frozen one. Timestamps never go back and sizes never shrink; a tree
smaller than the last checkpoint (a truncated ledger), or one whose entries
no longer hash to the last checkpoint's root (a rewritten ledger), raises
LogError at start-up.

Checkpoints are stored in ``checkpoint(size PRIMARY KEY, timestamp, note)``
on ``store_conn`` (a SQLite connection, or a ``collector.store.sql.Db`` on
either backend): the newest one always, and one per ``history_stride``
entries before it (the last signed in each stride), so a subscriber catching
up from index 0 gets a covering checkpoint every few thousand entries.
Methods may be called from any thread (one lock guards ``store_conn``, which
must be this object's alone and opened with ``check_same_thread=False`` if
threads share it); a write may wait for the ledger's write lock, so call
``maybe_checkpoint`` and ``covering`` off the event loop.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from collector.store.sql import Db
from protos import checkpoint as cpmod
from protos.errors import CheckpointError, DatabaseError, LogError
from protos.keys import PrivateKey, PublicKey

log = logging.getLogger(__name__)

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS checkpoint ("
    " size INTEGER PRIMARY KEY, timestamp_unix_nanos INTEGER NOT NULL, note BLOB NOT NULL)"
)
NANOS = 1_000_000_000


class TreeHead(Protocol):
    """What the checkpointer needs of the Merkle log."""

    @property
    def size(self) -> int: ...

    def snapshot(self) -> tuple[int, bytes]: ...

    def root(self, size: int | None = None) -> bytes: ...


class Checkpointer:
    """Signs and keeps checkpoints.

    ``key`` is the collector's key; ``origin`` the log id (first checkpoint
    line, and the note key name unless ``key_name`` is given); ``clock``
    returns unix nanoseconds.
    """

    def __init__(
        self,
        merkle: TreeHead,
        key: PrivateKey,
        origin: str,
        store_conn: sqlite3.Connection | Db,
        clock: Callable[[], int] = time.time_ns,
        *,
        interval_seconds: float = 10.0,
        min_interval_seconds: float = 1.0,
        key_name: str | None = None,
        history_stride: int = 4096,
        previous_keys: Sequence[PublicKey] = (),
    ) -> None:
        """``previous_keys``: collector keys rotated out (announced in the log),
        under which the stored latest checkpoint may be signed."""
        if interval_seconds <= 0 or min_interval_seconds < 0 or history_stride < 1:
            raise CheckpointError(
                "checkpoint intervals must be positive and history_stride at least 1"
            )
        self._merkle = merkle
        self._key = key
        self._origin = origin
        self._name = origin if key_name is None else key_name
        self.verifier = cpmod.NoteVerifier(self._name, key.public)
        self._previous = [cpmod.NoteVerifier(self._name, k) for k in previous_keys]
        cpmod.Checkpoint(origin, 0, bytes(32), 0)  # validates the origin early
        # Given a SQLite connection, failures raise the driver's own error (as
        # before the portable layer); given a Db, its typed DatabaseError.
        self._driver_errors = isinstance(store_conn, sqlite3.Connection)
        if isinstance(store_conn, sqlite3.Connection):
            store_conn = Db(store_conn, "sqlite", "the checkpoint store")
        self._db = store_conn
        self._clock = clock
        self._interval_ns = int(interval_seconds * NANOS)
        self._min_interval_ns = int(min_interval_seconds * NANOS)
        self._stride = history_stride
        self.signed_total = 0
        self._lock = threading.Lock()
        self._closed = False
        if store_conn.dialect == "sqlite":  # PostgreSQL's migrations made the table
            store_conn.execute(SCHEMA)
        self._latest = self._load_latest()

    @property
    def origin(self) -> str:
        return self._origin

    def latest(self) -> cpmod.SignedCheckpoint | None:
        return self._latest

    def reload(self) -> cpmod.SignedCheckpoint | None:
        """Re-read the newest stored checkpoint (collectors in high availability:
        another leader may have signed since; call on a gain of the lead before
        signing, and on a standby before serving it)."""
        row = self._db.one("SELECT note FROM checkpoint ORDER BY size DESC LIMIT 1")
        if row is None:
            return self._latest
        latest = cpmod.open_note(
            bytes(row[0]), [self.verifier, *self._previous], origin=self._origin
        )
        with self._lock:
            if self._latest is None or latest.size >= self._latest.size:
                self._latest = latest
        return self._latest

    def due_in(self, now_ns: int | None = None) -> float:
        """Seconds until ``maybe_checkpoint`` would sign even without new entries."""
        if self._latest is None:
            return 0.0
        now = self._clock() if now_ns is None else now_ns
        return max(0.0, (self._latest.timestamp_unix_nanos + self._interval_ns - now) / NANOS)

    def maybe_checkpoint(self, now_ns: int | None = None) -> cpmod.SignedCheckpoint | None:
        """Sign a checkpoint if one is due; return it, or None if none was."""
        now = self._clock() if now_ns is None else now_ns
        size = self._merkle.size
        last = self._latest
        if last is not None:
            age = now - last.timestamp_unix_nanos
            if size < last.size:
                raise LogError(
                    f"the log has {size} entries but checkpoint {last.size} was signed:"
                    " the ledger was truncated or replaced"
                )
            grown = size > last.size and age >= self._min_interval_ns
            if not grown and age < self._interval_ns:
                return None
        return self.sign_now(now)

    def sign_now(self, now_ns: int | None = None) -> cpmod.SignedCheckpoint:
        """Sign and store a checkpoint of the committed tree now."""
        now = self._clock() if now_ns is None else now_ns
        with self._lock:
            if self._closed:
                raise LogError("the checkpointer is shut down")
            size, root = self._merkle.snapshot()
            last = self._latest
            if last is not None:
                if size < last.size:
                    raise LogError(f"tree size {size} is below the last checkpoint {last.size}")
                if now <= last.timestamp_unix_nanos:
                    log.warning("clock is not after the last checkpoint; using last + 1 ns")
                    now = last.timestamp_unix_nanos + 1
            cp = cpmod.Checkpoint(self._origin, size, root, now)
            signed = cpmod.sign(cp, self._key, self._name)
            self._store(signed, last)
            self._latest = signed
            self.signed_total += 1
        log.debug("signed checkpoint of %d entries", size)
        return signed

    def shutdown(self) -> None:
        """Wait for a signing in progress (it may run in a worker thread that
        outlives a cancelled task), then refuse new ones, so the store
        connection can be closed safely."""
        with self._lock:
            self._closed = True

    def covering(self, after: int, upto: int) -> cpmod.SignedCheckpoint | None:
        """The largest stored checkpoint with ``after < size <= upto``, else the
        smallest with ``size > after`` (None if there is none)."""
        with self._lock:
            if self._closed:
                return None
            row = self._db.one(
                "SELECT note FROM checkpoint WHERE size > ? AND size <= ?"
                " ORDER BY size DESC LIMIT 1",
                (after, upto),
            )
            if row is None:
                row = self._db.one(
                    "SELECT note FROM checkpoint WHERE size > ? ORDER BY size LIMIT 1", (after,)
                )
        if row is None:
            return None
        return cpmod.open_note(bytes(row[0]), [self.verifier], origin=self._origin)

    # -- storage -----------------------------------------------------------------
    def _store(self, signed: cpmod.SignedCheckpoint, last: cpmod.SignedCheckpoint | None) -> None:
        try:
            self._write(signed, last)
        except DatabaseError as exc:
            if self._driver_errors and isinstance(exc.__cause__, sqlite3.Error):
                raise exc.__cause__ from None
            raise

    def _write(self, signed: cpmod.SignedCheckpoint, last: cpmod.SignedCheckpoint | None) -> None:
        with self._db.transaction():
            self._db.execute(
                "INSERT INTO checkpoint(size, timestamp_unix_nanos, note) VALUES (?, ?, ?)"
                " ON CONFLICT(size) DO UPDATE SET"
                " timestamp_unix_nanos = excluded.timestamp_unix_nanos, note = excluded.note",
                (signed.size, signed.timestamp_unix_nanos, signed.note),
            )
            if (
                last is not None
                and last.size != signed.size
                and last.size // self._stride == signed.size // self._stride
            ):
                self._db.execute("DELETE FROM checkpoint WHERE size = ?", (last.size,))

    def _load_latest(self) -> cpmod.SignedCheckpoint | None:
        row = self._db.one("SELECT note FROM checkpoint ORDER BY size DESC LIMIT 1")
        if row is None:
            return None
        try:
            latest = cpmod.open_note(
                bytes(row[0]), [self.verifier, *self._previous], origin=self._origin
            )
        except CheckpointError as exc:
            raise LogError(
                f"the stored checkpoint does not verify under this key and origin ({exc});"
                " a new log key or origin needs a new ledger"
            ) from exc
        size, _ = self._merkle.snapshot()
        if size < latest.size:
            raise LogError(
                f"the log has {size} entries but checkpoint {latest.size} was signed:"
                " the ledger was truncated or replaced"
            )
        if self._merkle.root(latest.size) != latest.root:
            raise LogError(
                f"the first {latest.size} log entries no longer hash to the signed"
                " checkpoint's root: the ledger was rewritten"
            )
        return latest
