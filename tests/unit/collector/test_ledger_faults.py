"""A ledger write that fails (here: SQLite's max_page_count, which fails with
SQLITE_FULL exactly as a full disk does, and rolls the transaction back by
itself) loses nothing acknowledged and never commits on top of a hole."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from collector.accounting.aggregate import Aggregator
from collector.nodes.sessions import Sessions
from collector.services.metrics import CollectorMetrics
from collector.store.ledger import Entry, Ledger
from collector.store.merkle_log import MerkleLog
from collector.store.sqlite_faults import WRITE_ERROR_REASONS
from collector.telemetry.ingest import IngestStats
from protos.errors import LedgerUnavailableError, LogError

BIG = 3 * 4096  # one entry needs new pages whatever the free space left in the last one


def entry(seq: int, fill: int = BIG) -> Entry:
    return Entry(bytes([seq % 256]) * fill, "t", "n", "k", seq, bytes([seq % 256]) * 32)


async def until_writable(ledger: Ledger) -> None:
    for _ in range(500):
        if ledger.writable:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the ledger never became writable again")


def cap(ledger: Ledger, pages: int | None = None) -> None:
    """No new pages from now on (the writer thread is idle between awaits)."""
    conn = ledger.connection
    limit = conn.execute("PRAGMA page_count").fetchone()[0] if pages is None else pages
    conn.execute(f"PRAGMA max_page_count = {limit}")


def open_ledger(path: Path) -> tuple[Ledger, MerkleLog]:
    ledger = Ledger(path)
    tree = MerkleLog(ledger.connection)
    ledger.attach_tree(tree)
    return ledger, tree


def test_full_disk_keeps_the_real_error_and_resets_the_tree(tmp_path: Path) -> None:
    """SQLite already rolled back: the explicit ROLLBACK must not replace
    SQLITE_FULL with "cannot rollback", and the tree must forget the leaves it
    had added, or every later write fails with "append at index ..."."""

    async def scenario() -> None:
        ledger, tree = open_ledger(tmp_path / "l.db")
        assert await ledger.append(entry(1)) == 0
        cap(ledger)
        with pytest.raises(LogError, match="disk is full") as info:
            await ledger.append(entry(2))
        assert "cannot rollback" not in str(info.value)
        states: list[bool] = []
        ledger.add_state_listener(states.append)
        assert not ledger.writable
        assert ledger.write_errors["disk_full"] == 1
        assert (ledger.size, tree.size) == (1, 1)
        cap(ledger, 1 << 30)
        await until_writable(ledger)
        assert states == [True]
        assert await ledger.append(entry(2)) == 1
        assert (ledger.size, tree.size) == (2, 2)
        assert ledger.recoveries == 1
        await ledger.close()
        tree.close()

    asyncio.run(scenario())
    conn = sqlite3.connect(tmp_path / "l.db")
    assert conn.execute("SELECT sequence FROM log ORDER BY idx").fetchall() == [(1,), (2,)]
    conn.close()
    # Reopened from disk, the tree matches the log (nothing half-written).
    conn = sqlite3.connect(tmp_path / "l.db", isolation_level=None)
    assert MerkleLog(conn).size == 2
    conn.close()


def test_metrics_say_why_the_ledger_cannot_write(tmp_path: Path) -> None:
    async def scenario() -> None:
        ledger, tree = open_ledger(tmp_path / "l.db")
        registry = CollectorRegistry()
        registry.register(CollectorMetrics(IngestStats(), ledger, Aggregator(), Sessions()))

        def sample(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(f"computewatch_collector_{name}", labels)

        # Every reason is exported from the start, at 0.
        for reason in WRITE_ERROR_REASONS:
            assert sample("ledger_write_errors_total", reason=reason) == 0
        assert sample("ledger_writable") == 1
        await ledger.append(entry(1))
        cap(ledger)
        with pytest.raises(LedgerUnavailableError):
            await ledger.append(entry(2))
        assert sample("ledger_writable") == 0
        assert sample("ledger_write_errors_total", reason="disk_full") == 1
        assert sample("ledger_write_errors_total", reason="io_error") == 0
        cap(ledger, 1 << 30)
        await until_writable(ledger)
        assert sample("ledger_writable") == 1
        assert sample("ledger_recoveries_total") == 1
        await ledger.close()
        tree.close()

    asyncio.run(scenario())


def test_nothing_commits_after_a_failed_write_until_the_disk_is_re_read(tmp_path: Path) -> None:
    """An entry appended after the failure (it may chain onto the failed one)
    is refused at once, even when space came back in between."""

    async def scenario() -> None:
        ledger, tree = open_ledger(tmp_path / "l.db")
        await ledger.append(entry(1))
        cap(ledger)
        failing = [ledger.append(entry(2)), ledger.append(entry(3))]
        results = await asyncio.gather(*failing, return_exceptions=True)
        assert all(isinstance(r, LedgerUnavailableError) for r in results), results
        # Space is back, but nothing was re-read yet: 4 would sit on a hole.
        cap(ledger, 1 << 30)
        with pytest.raises(LedgerUnavailableError):
            await ledger.append(entry(4))
        await until_writable(ledger)
        for seq in (2, 3, 4):
            await ledger.append(entry(seq))
        assert ledger.chain_heads()["k"].last_sequence == 4
        assert tree.size == ledger.size == 4
        await ledger.close()
        tree.close()

    asyncio.run(scenario())


def test_the_probe_keeps_refusing_while_the_disk_stays_full(tmp_path: Path) -> None:
    async def scenario() -> None:
        ledger, tree = open_ledger(tmp_path / "l.db")
        await ledger.append(entry(1))
        limit = await ledger.page_count()
        await ledger.limit_pages(limit)
        with pytest.raises(LedgerUnavailableError):
            await ledger.append(entry(2))
        # The probe must commit as much as the failed write needed: while the
        # limit holds it fails too (several probes, each with a longer wait).
        for _ in range(20):
            await asyncio.sleep(0.02)
            assert not ledger.writable
        assert ledger.unavailable_reason == "disk_full"
        await ledger.limit_pages(1 << 30)
        await until_writable(ledger)
        await ledger.close()
        tree.close()

    asyncio.run(scenario())


def test_a_full_disk_at_start_is_one_typed_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the ledger's folder should be\n")
    with pytest.raises(LedgerUnavailableError, match="cannot open the ledger"):
        Ledger(blocker / "ledger.db")
