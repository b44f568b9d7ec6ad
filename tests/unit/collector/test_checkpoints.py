"""The checkpointer: when it signs, what it keeps, and what it refuses to start
on; a reader following a writer's checkpoints; the same on SQLite and a real
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.store import LedgerStore, open_store
from collector.store.checkpoints import Checkpointer
from collector.store.ledger_store import Entry
from collector.store.sql import Db, Location, check_term, open_db
from collector.store.tree_view import TreeView
from protos import checkpoint as cpmod
from protos import merkle
from protos.errors import CheckpointError, FencedError, LogError
from protos.keys import PrivateKey
from tests.pg_support import BACKENDS, backend_location

ORIGIN = "computewatch.test/log"
S = 1_000_000_000
T0 = 1_700_000_000 * S


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


class Fixture:
    """A ledger store written like the sequencer writes it, its tree as any
    collector reads it (``TreeView``), and the collector's database handle."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.store: LedgerStore = open_store(str(location))
        self.db: Db = open_db(location)
        self.merkle = TreeView(self.store)
        self.clock = Clock()
        self.key = PrivateKey.generate()

    def append(self, n: int, datas: list[bytes] | None = None) -> None:
        size = self.store.size
        datas = datas or [b"e%d" % (size + i) for i in range(n)]
        self.store.append_batch(size, [Entry(d, "t") for d in datas], 1)
        self.merkle.refresh()

    def checkpointer(self, **kw: object) -> Checkpointer:
        kw.setdefault("interval_seconds", 10.0)
        kw.setdefault("min_interval_seconds", 1.0)
        return Checkpointer(self.merkle, self.key, ORIGIN, self.db, self.clock, **kw)  # type: ignore[arg-type]

    def close(self) -> None:
        self.db.close()
        self.store.close()


@pytest.fixture(params=BACKENDS)
def fx(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fixture]:
    f = Fixture(backend_location(request, tmp_path))
    yield f
    f.close()


def test_signs_at_start_then_on_growth_and_when_due(fx: Fixture) -> None:
    cps = fx.checkpointer()
    first = cps.maybe_checkpoint()
    assert first is not None
    assert first.size == 0
    assert first.root == merkle.EMPTY_ROOT
    assert cps.maybe_checkpoint() is None  # nothing new, not due
    fx.append(3)
    fx.clock.now += S // 2
    assert cps.maybe_checkpoint() is None  # grown, but within min_interval
    fx.clock.now += S // 2
    grown = cps.maybe_checkpoint()
    assert grown is not None
    assert grown.size == 3
    assert grown.root == fx.merkle.root()
    fx.clock.now += 9 * S
    assert cps.maybe_checkpoint() is None
    fx.clock.now += S
    fresh = cps.maybe_checkpoint()  # no growth, but the interval passed: a frozen log shows
    assert fresh is not None
    assert fresh.size == 3
    assert fresh.timestamp_unix_nanos == T0 + 11 * S
    assert cps.latest() == fresh
    assert cps.signed_total == 3
    assert cps.due_in() == pytest.approx(10.0)
    opened = cpmod.open_note(fresh.note, [cps.verifier], origin=ORIGIN)
    assert opened.checkpoint == fresh.checkpoint


def test_timestamps_never_go_back(fx: Fixture) -> None:
    cps = fx.checkpointer()
    a = cps.sign_now()
    fx.clock.now -= 5 * S
    b = cps.sign_now()
    assert b.timestamp_unix_nanos == a.timestamp_unix_nanos + 1


def test_history_keeps_one_checkpoint_per_stride(fx: Fixture) -> None:
    cps = fx.checkpointer(history_stride=10, min_interval_seconds=0)
    for _ in range(12):
        fx.append(3)
        cps.sign_now()
    sizes = [r[0] for r in fx.db.execute("SELECT size FROM checkpoint ORDER BY size")]
    assert sizes == [9, 18, 27, 36]  # the last of each stride of 10 entries; 36 is the newest
    found = cps.covering(0, 20)
    assert found is not None
    assert found.size == 18
    found = cps.covering(18, 25)  # none inside: the next one after
    assert found is not None
    assert found.size == 27
    assert cps.covering(36, 100) is None


def test_reopening_resumes_from_the_stored_checkpoint(fx: Fixture) -> None:
    fx.append(5)
    first = fx.checkpointer().sign_now()
    again = fx.checkpointer()
    assert again.latest() == first
    assert again.maybe_checkpoint() is None


def test_a_truncated_ledger_is_refused(fx: Fixture) -> None:
    fx.append(5)
    fx.checkpointer().sign_now()
    fx.db.execute("DELETE FROM merkle_node WHERE pos >= 4")  # back to 3 leaves
    fx.merkle = TreeView(fx.store)
    with pytest.raises(LogError, match="truncated or replaced"):
        fx.checkpointer()


def test_a_rewritten_ledger_is_refused(fx: Fixture) -> None:
    fx.append(4)
    fx.checkpointer().sign_now()
    fx.db.execute("DELETE FROM merkle_node")
    fx.db.execute("DELETE FROM log")
    fx.store.reload()
    fx.append(4, [b"other", b"e1", b"e2", b"e3"])
    with pytest.raises(LogError, match="was rewritten"):
        fx.checkpointer()


def test_a_checkpoint_from_another_key_is_refused(fx: Fixture) -> None:
    fx.checkpointer().sign_now()
    fx.key = PrivateKey.generate()
    with pytest.raises(LogError, match="does not verify under this key"):
        fx.checkpointer()


def test_bad_settings_are_refused(fx: Fixture) -> None:
    with pytest.raises(CheckpointError, match="positive"):
        fx.checkpointer(interval_seconds=0)
    with pytest.raises(CheckpointError, match="origin"):
        Checkpointer(fx.merkle, fx.key, " bad origin", fx.db, fx.clock)


def test_a_reader_follows_the_writer_and_takes_over_where_it_stopped(fx: Fixture) -> None:
    """Two collectors on one database: the writer signs; the reader (its own
    store connection, tree and handle) serves what the writer stored, signs
    nothing, and once it becomes the writer goes on from the last checkpoint."""
    writer = fx.checkpointer(min_interval_seconds=0)
    other = Fixture(fx.location)
    try:
        other.key = fx.key  # every candidate holds the collector key
        other.clock = fx.clock
        reader = other.checkpointer(writer=False)
        assert reader.latest() is None
        assert reader.due_in() == float("inf")
        fx.append(3)
        first = writer.sign_now()
        seen = reader.maybe_checkpoint()
        assert seen == first
        assert other.merkle.size == 3  # the tree was refreshed with it
        assert reader.maybe_checkpoint() is None  # nothing new
        with pytest.raises(LogError, match="not the leader"):
            reader.sign_now()
        fx.append(2)
        fx.clock.now += S
        second = writer.sign_now()
        assert reader.maybe_checkpoint() == second
        assert reader.covering(0, 5) == second  # read from the shared table
        # The writer dies; the reader becomes the leader.
        fx.append(1)
        fx.clock.now -= 5 * S  # its clock is behind: timestamps still never go back
        reader.set_writer(True)
        third = reader.sign_now()
        assert third.size == 6
        assert third.timestamp_unix_nanos == second.timestamp_unix_nanos + 1
        assert cpmod.open_note(third.note, [writer.verifier], origin=ORIGIN).root == (
            merkle.MemoryTree(merkle.leaf_hash(b"e%d" % i) for i in range(6)).root()
        )
    finally:
        other.close()


def test_a_fenced_write_stores_nothing(fx: Fixture) -> None:
    """Only the leader's term may write a checkpoint to the shared database; a
    SQLite file has one writer and no leader row."""
    if fx.db.dialect == "postgresql":
        fx.db.execute(
            "INSERT INTO leader(id, holder, term, expires_unix_nanos) VALUES (1, 'b', 7, 0)"
        )
    first = fx.checkpointer(fence=lambda db: check_term(db, 7)).sign_now()
    deposed = fx.checkpointer(fence=lambda db: check_term(db, 6))
    fx.append(2)
    fx.clock.now += S
    if fx.db.dialect == "sqlite":
        assert deposed.sign_now().size == 2
        return
    with pytest.raises(FencedError, match="term 6 refused"):
        deposed.sign_now()
    assert deposed.latest() == first
    assert fx.db.execute("SELECT size FROM checkpoint") == [(0,)]


def test_a_bare_sqlite_connection_is_a_store_too(tmp_path: Path) -> None:
    """The single collector's way before the portable layer: its MerkleLog's
    own connection, the checkpoint table created on it."""
    import sqlite3

    from collector.store.merkle_log import MerkleLog

    conn = sqlite3.connect(tmp_path / "l.db", isolation_level=None, check_same_thread=False)
    try:
        tree = MerkleLog(conn)
        conn.execute("BEGIN IMMEDIATE")
        tree.append_leaves(conn, 0, [b"a", b"b"])
        conn.execute("COMMIT")
        tree.committed()
        key = PrivateKey.generate()
        signed = Checkpointer(tree, key, ORIGIN, conn).sign_now()
        assert Checkpointer(tree, key, ORIGIN, conn).latest() == signed
        assert signed.size == 2
    finally:
        conn.close()
