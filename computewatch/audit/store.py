"""The regulator's local copy of the log: ``DIR/audit.db`` plus ``DIR/evidence/``.

Tables: ``entry(idx, data)`` (envelope bytes exactly as served), every
``checkpoint`` note kept (the newest, one per ``STRIDE`` entries before it,
and any that conflict), and the follow state (Merkle frontier, chain heads,
directive counter) so a resumed subscription does not re-read the copy.
``audit verify`` trusts none of the state: it recomputes everything from the
entries and notes. Entries and the checkpoint covering them are written in
one transaction, only after they verified.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from computewatch.audit.entries import ChainHead
from protos import checkpoint as cpmod
from protos import merkle
from protos.errors import ConfigError, LogError

DB_NAME = "audit.db"
EVIDENCE_DIR = "evidence"
STRIDE = 4096
FORMAT = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS entry (idx INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoint (
    id INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    timestamp_unix_nanos INTEGER NOT NULL,
    note BLOB NOT NULL UNIQUE,
    received_unix_nanos INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chain (
    keyid TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    digest BLOB NOT NULL,
    idx INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class StoredCheckpoint:
    id: int
    size: int
    root: bytes
    timestamp_unix_nanos: int
    note: bytes


@dataclass
class FollowState:
    """What a subscription resumes from (verified before it was stored)."""

    frontier: merkle.Frontier
    heads: dict[str, ChainHead]
    directive_counter: int
    origin: str | None
    lease_counter: int = 0
    # ``KeyState.to_json()``: keys introduced, moved and revoked by the log.
    keys: str = ""


class LocalStore:
    """One directory; not safe for two writers at once (one subscriber per DIR)."""

    def __init__(self, directory: Path, *, create: bool = True) -> None:
        self.dir = directory
        db = directory / DB_NAME
        if not create and not db.is_file():
            raise ConfigError(f"{directory}: no {DB_NAME}; run 'audit subscribe --out' first")
        directory.mkdir(parents=True, exist_ok=True)
        try:
            # Used from one thread at a time (the follower commits off the event loop).
            self._conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"{db}: cannot open the local copy ({exc})") from exc
        fmt = self._meta("format")
        if fmt is None:
            self._set_meta("format", str(FORMAT))
        elif fmt != str(FORMAT):
            raise ConfigError(f"{db}: store format {fmt}, this version reads {FORMAT}")

    def close(self) -> None:
        self._conn.close()

    # -- reading -----------------------------------------------------------------
    @property
    def size(self) -> int:
        row = self._conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM entry").fetchone()
        return int(row[0])

    def entry_count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM entry").fetchone()[0])

    def entry(self, index: int) -> bytes | None:
        row = self._conn.execute("SELECT data FROM entry WHERE idx = ?", (index,)).fetchone()
        return None if row is None else bytes(row[0])

    def iter_entries(self, start: int = 0, batch: int = 4096) -> Iterator[tuple[int, bytes]]:
        """Stored entries in index order (gaps show as skipped indices)."""
        pos = start
        while True:
            rows = self._conn.execute(
                "SELECT idx, data FROM entry WHERE idx >= ? ORDER BY idx LIMIT ?", (pos, batch)
            ).fetchall()
            if not rows:
                return
            for idx, data in rows:
                yield int(idx), bytes(data)
            pos = int(rows[-1][0]) + 1

    def checkpoints(self) -> list[StoredCheckpoint]:
        rows = self._conn.execute(
            "SELECT id, size, root, timestamp_unix_nanos, note FROM checkpoint"
            " ORDER BY timestamp_unix_nanos, id"
        ).fetchall()
        return [StoredCheckpoint(r[0], r[1], bytes(r[2]), r[3], bytes(r[4])) for r in rows]

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        row = self._conn.execute(
            "SELECT id, size, root, timestamp_unix_nanos, note FROM checkpoint"
            " ORDER BY timestamp_unix_nanos DESC, id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else StoredCheckpoint(row[0], row[1], bytes(row[2]), *row[3:])

    @property
    def origin(self) -> str | None:
        """The log id this copy follows (pinned by its first checkpoint)."""
        return self._meta("origin")

    def follow_state(self) -> FollowState:
        size = self.size
        raw = self._meta("frontier")
        if raw is None:
            if size:
                raise LogError(f"{self.dir}: entries but no saved state; run 'audit verify'")
            frontier = merkle.Frontier()
        else:
            doc = json.loads(raw)
            frontier = merkle.Frontier(doc["size"], [bytes.fromhex(h) for h in doc["hashes"]])
        if frontier.size != size:
            raise LogError(
                f"{self.dir}: saved state is for {frontier.size} entries but {size} are stored"
            )
        heads = {
            r[0]: ChainHead(r[1], r[2], bytes(r[3]), r[4])
            for r in self._conn.execute("SELECT keyid, node_id, sequence, digest, idx FROM chain")
        }
        counter = int(self._meta("directive_counter") or 0)
        lease = int(self._meta("lease_counter") or 0)
        keys = self._meta("key_state") or ""
        return FollowState(frontier, heads, counter, self._meta("origin"), lease, keys)

    # -- writing -------------------------------------------------------------------
    def commit(
        self,
        first: int,
        entries: Sequence[bytes],
        signed: cpmod.SignedCheckpoint,
        state: FollowState,
    ) -> None:
        """Store verified ``entries`` (from index ``first``), their checkpoint and the state."""
        conn = self._conn
        latest = self.latest_checkpoint()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO entry(idx, data) VALUES (?, ?)",
                [(first + i, d) for i, d in enumerate(entries)],
            )
            self._add_checkpoint(signed, latest)
            conn.executemany(
                "INSERT OR REPLACE INTO chain(keyid, node_id, sequence, digest, idx)"
                " VALUES (?, ?, ?, ?, ?)",
                [(k, h.node_id, h.sequence, h.digest, h.index) for k, h in state.heads.items()],
            )
            f = state.frontier
            doc = {"size": f.size, "hashes": [h.hex() for h in f.hashes]}
            self._set_meta("frontier", json.dumps(doc))
            self._set_meta("directive_counter", str(state.directive_counter))
            self._set_meta("lease_counter", str(state.lease_counter))
            if state.keys:
                self._set_meta("key_state", state.keys)
            if state.origin is not None:
                self._set_meta("origin", state.origin)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def add_checkpoint_note(self, signed: cpmod.SignedCheckpoint) -> None:
        """Keep one more checkpoint as it is (imports, tests); no thinning."""
        self._conn.execute(
            "INSERT OR IGNORE INTO checkpoint(size, root, timestamp_unix_nanos, note,"
            " received_unix_nanos) VALUES (?, ?, ?, ?, ?)",
            (signed.size, signed.root, signed.timestamp_unix_nanos, signed.note, time.time_ns()),
        )

    def write_evidence(self, reason: str, notes: Sequence[bytes], detail: str) -> Path:
        """Save signed notes that prove misbehaviour, with a README; return the folder.

        The folder is named by the reason and a hash of the notes, so finding the
        same thing twice keeps one copy.
        """
        digest = hashlib.sha256(b"".join(sorted(notes))).hexdigest()[:16]
        safe = re.sub(r"[^a-z0-9_]+", "_", reason.lower())
        folder = self.dir / EVIDENCE_DIR / f"{safe}-{digest}"
        if folder.is_dir():
            return folder
        folder.mkdir(parents=True)
        for i, note in enumerate(notes, 1):
            (folder / f"checkpoint-{i}.txt").write_bytes(note)
        found = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (folder / "README.txt").write_text(
            f"{reason}: {detail}\n\nFound {found}. Each checkpoint-N.txt is a signed note"
            " exactly as the collector served it; anyone holding the collector's public key"
            " can check the signatures (computewatch audit verify --checkpoint FILE, or any"
            " C2SP signed-note verifier).\n"
        )
        return folder

    # -- internals -------------------------------------------------------------------
    def _add_checkpoint(
        self, signed: cpmod.SignedCheckpoint, latest: StoredCheckpoint | None
    ) -> None:
        conn = self._conn
        conn.execute(
            "INSERT OR IGNORE INTO checkpoint(size, root, timestamp_unix_nanos, note,"
            " received_unix_nanos) VALUES (?, ?, ?, ?, ?)",
            (signed.size, signed.root, signed.timestamp_unix_nanos, signed.note, time.time_ns()),
        )
        if latest is None or latest.root == b"" or latest.note == signed.note:
            return
        same = latest.size == signed.size and latest.root == signed.root
        thin = latest.size != signed.size and latest.size // STRIDE == signed.size // STRIDE
        if same or thin:  # a fresher signature, or a neighbour within one stride
            conn.execute("DELETE FROM checkpoint WHERE id = ?", (latest.id,))

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
