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
in the collector's database (``db``, a ``collector.store.sql.Db``: the
ledger's SQLite file or the PostgreSQL database collectors share): the newest
one always, and one per ``history_stride`` entries before it (the last signed
in each stride), so a subscriber catching up from index 0 gets a covering
checkpoint every few thousand entries.

Only a ``writer`` signs and stores (the single collector, or the HA leader;
``fence`` runs first in each write transaction, so a deposed leader's write is
refused). Any other collector reads them: ``maybe_checkpoint`` then refreshes
its tree (when the tree can, ``collector.store.tree_view.TreeView``) and
returns the newest checkpoint the leader stored, verified, if it is new.
``set_writer`` switches the role on a failover. Methods may be called from any
thread (one lock guards the handle); a write may wait for the ledger's write
lock, so call ``maybe_checkpoint`` and ``covering`` off the event loop.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from collector.store.sql import Db
from protos import checkpoint as cpmod
from protos.errors import CheckpointError, LogError
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


@runtime_checkable
class Refreshable(Protocol):
    """A tree a reader re-reads from the database (``TreeView``)."""

    def refresh(self) -> int: ...


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
        db: Db | sqlite3.Connection,
        clock: Callable[[], int] = time.time_ns,
        *,
        writer: bool = True,
        fence: Callable[[Db], None] | None = None,
        interval_seconds: float = 10.0,
        min_interval_seconds: float = 1.0,
        key_name: str | None = None,
        history_stride: int = 4096,
        previous_keys: Sequence[PublicKey] = (),
    ) -> None:
        """``previous_keys``: collector keys rotated out (announced in the log),
        under which the stored latest checkpoint may be signed. ``writer``:
        this collector signs and stores checkpoints (else it only reads them);
        ``db`` may also be a bare SQLite connection opened with
        ``isolation_level=None`` (the table is created on it);
        ``fence(db)``: called first in every write transaction, raises to
        refuse it (``collector.store.sql.check_term``)."""
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
        if isinstance(db, sqlite3.Connection):  # a bare SQLite connection (autocommit)
            db.execute(SCHEMA)
            db = Db(db, "sqlite", "the checkpoint store")
        self._db = db
        self._writer = writer
        self._fence = fence
        self._clock = clock
        self._interval_ns = int(interval_seconds * NANOS)
        self._min_interval_ns = int(min_interval_seconds * NANOS)
        self._stride = history_stride
        self.signed_total = 0
        self._lock = threading.Lock()
        self._closed = False
        self._latest: cpmod.SignedCheckpoint | None = None
        self._latest = self._load_latest()

    @property
    def origin(self) -> str:
        return self._origin

    def latest(self) -> cpmod.SignedCheckpoint | None:
        return self._latest

    @property
    def writer(self) -> bool:
        return self._writer

    def set_writer(self, writer: bool) -> None:
        """Sign from now on (this collector became the leader: it first reads the
        newest stored checkpoint, so sizes and timestamps go on from it), or
        stop signing (it lost the lead)."""
        with self._lock:
            if writer and not self._writer:
                self._refresh_tree()
                self._writer = True
                self._latest = self._load_latest()
            self._writer = writer

    def due_in(self, now_ns: int | None = None) -> float:
        """Seconds until ``maybe_checkpoint`` would sign even without new entries
        (infinite on a reader: it never signs)."""
        if not self._writer:
            return float("inf")
        if self._latest is None:
            return 0.0
        now = self._clock() if now_ns is None else now_ns
        return max(0.0, (self._latest.timestamp_unix_nanos + self._interval_ns - now) / NANOS)

    def maybe_checkpoint(self, now_ns: int | None = None) -> cpmod.SignedCheckpoint | None:
        """Sign a checkpoint if one is due; return it, or None if none was. On a
        reader: the newest stored checkpoint if it is newer than the last seen."""
        if not self._writer:
            return self.refresh()
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
            if not self._writer:
                raise LogError("this collector does not sign checkpoints (not the leader)")
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

    def refresh(self) -> cpmod.SignedCheckpoint | None:
        """Re-read the tree and the newest stored checkpoint (a reader follows
        the leader this way); the checkpoint if it is newer than the last seen,
        verified like the one read at start (LogError if it contradicts the tree)."""
        with self._lock:
            if self._closed:
                return None
            self._refresh_tree()
            found = self._load_latest()
            last = self._latest
            if found is None or (
                last is not None
                and (found.size, found.timestamp_unix_nanos)
                <= (last.size, last.timestamp_unix_nanos)
            ):
                return None
            self._latest = found
        return found

    def reload(self) -> cpmod.SignedCheckpoint | None:
        """``refresh()``, then the newest checkpoint known (new or not)."""
        self.refresh()
        return self._latest

    def _refresh_tree(self) -> None:
        if isinstance(self._merkle, Refreshable):
            self._merkle.refresh()

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
        db = self._db
        with db.transaction():  # rolled back only while open (SQLITE_FULL ends it itself)
            if self._fence is not None:
                self._fence(db)
            db.execute(
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
                db.execute("DELETE FROM checkpoint WHERE size = ?", (last.size,))

    def _load_latest(self) -> cpmod.SignedCheckpoint | None:
        """The newest stored checkpoint, verified against the key and the tree.
        A reader whose tree has not caught up with it yet keeps what it had
        (the next refresh reads both again); a writer's tree is the log."""
        row = self._db.one("SELECT note FROM checkpoint ORDER BY size DESC LIMIT 1")
        if row is None:
            return None
        note = bytes(row[0])
        if self._latest is not None and note == self._latest.note:
            return self._latest
        try:
            latest = cpmod.open_note(note, [self.verifier, *self._previous], origin=self._origin)
        except CheckpointError as exc:
            raise LogError(
                f"the stored checkpoint does not verify under this key and origin ({exc});"
                " a new log key or origin needs a new ledger"
            ) from exc
        size, _ = self._merkle.snapshot()
        if size < latest.size:
            if not self._writer:
                return self._latest
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
