"""The checkpointer: when it signs, what it keeps, and what it refuses to start on."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from collector.checkpoints import Checkpointer
from collector.merkle_log import MerkleLog
from protos import checkpoint as cpmod
from protos import merkle
from protos.errors import CheckpointError, LogError
from protos.keys import PrivateKey

ORIGIN = "computewatch.test/log"
S = 1_000_000_000
T0 = 1_700_000_000 * S


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


class Fixture:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.merkle = MerkleLog(self.conn)
        self.clock = Clock()
        self.key = PrivateKey.generate()

    def append(self, n: int) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.merkle.append_leaves(
            self.conn, self.merkle.size, [b"e%d" % (self.merkle.size + i) for i in range(n)]
        )
        self.conn.execute("COMMIT")
        self.merkle.committed()

    def checkpointer(self, **kw: object) -> Checkpointer:
        kw.setdefault("interval_seconds", 10.0)
        kw.setdefault("min_interval_seconds", 1.0)
        return Checkpointer(self.merkle, self.key, ORIGIN, self.conn, self.clock, **kw)  # type: ignore[arg-type]


@pytest.fixture
def fx(tmp_path: Path) -> Fixture:
    return Fixture(tmp_path / "ledger.db")


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
    sizes = [r[0] for r in fx.conn.execute("SELECT size FROM checkpoint ORDER BY size")]
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


def test_a_truncated_ledger_is_refused(tmp_path: Path, fx: Fixture) -> None:
    fx.append(5)
    fx.checkpointer().sign_now()
    fx.conn.execute("DELETE FROM merkle_node WHERE pos >= 4")  # back to 3 leaves
    fx.merkle = MerkleLog(fx.conn)
    with pytest.raises(LogError, match="truncated or replaced"):
        fx.checkpointer()


def test_a_rewritten_ledger_is_refused(tmp_path: Path, fx: Fixture) -> None:
    fx.append(4)
    fx.checkpointer().sign_now()
    fx.conn.execute("DELETE FROM merkle_node")
    fx.merkle = MerkleLog(fx.conn)
    fx.conn.execute("BEGIN IMMEDIATE")
    fx.merkle.append_leaves(fx.conn, 0, [b"other", b"e1", b"e2", b"e3"])
    fx.conn.execute("COMMIT")
    fx.merkle.committed()
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
        Checkpointer(fx.merkle, fx.key, " bad origin", fx.conn, fx.clock)
