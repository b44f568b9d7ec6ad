"""A stream that stops waiting for a commit must not cancel the commit.

One in-flight commit is shared: by the ingestor (which aggregates the report
once it is committed), by the stream that admitted it, and by every stream on
which the agent resent it (a duplicate while in flight). An agent that
reconnects ends its old stream, and the collector cancels that stream's ack
pump while it awaits the commit. Awaiting a future in a task that is then
cancelled cancels the future itself (asyncio ``Task.cancel``), so the shared
commit read as cancelled to everyone: the report was on disk but never
aggregated nor counted, the resent duplicate could never be acknowledged, and
before the ledger re-sync rework a cancelled commit reset the chain book to
disk, so every other node's next link was answered ``gap``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from collector.accounting.aggregate import Aggregator
from collector.nodes.registry import Registry
from collector.store.ledger import Ledger
from collector.store.merkle_log import MerkleLog
from collector.telemetry.ingest import Accepted, Ingestor
from collector.telemetry.service import _InFlight
from protos.errors import LedgerUnavailableError
from tests.support import enroll_nodes, gpu


async def _await(fut: asyncio.Future[int]) -> int:
    return await fut


def test_a_waiter_that_goes_away_leaves_the_commit_to_everyone_else(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    node, other = enroll_nodes(path, ["node-01", "node-02"])
    reports = [node.next([gpu(0, job="train")]) for _ in range(2)]
    others = [other.next([gpu(0, job="eval")]) for _ in range(2)]

    async def scenario() -> None:
        ledger = Ledger(path)
        tree = MerkleLog(ledger.connection)
        ledger.attach_tree(tree)
        aggregator = Aggregator()
        ingestor = Ingestor(Registry(path), ledger, aggregator)
        first = await ingestor.accept(reports[0])
        in_flight = await ingestor.accept(others[0])
        # The old stream's ack pump waits for the commit; its agent goes away.
        pump = asyncio.create_task(_await(first.committed))
        await asyncio.sleep(0)
        # A commit needs the writer thread and at least two more loop passes.
        assert not first.committed.done()
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
        assert pump.cancelled()
        # The agent resends on its new stream: a duplicate of the in-flight link.
        again = await ingestor.accept(reports[0])
        assert again.duplicate
        assert await asyncio.wait_for(again.committed, 10) == 0
        assert first.committed.cancelled()  # the old pump's own view went with it
        assert await asyncio.wait_for(in_flight.committed, 10) == 1
        # Every node's next link is the next link, not a gap.
        nxt = [await ingestor.accept(reports[1]), await ingestor.accept(others[1])]
        assert [await asyncio.wait_for(a.committed, 10) for a in nxt] == [2, 3]
        assert dict(ingestor.stats.rejected) == {}
        assert ingestor.stats.accepted == 4
        assert aggregator.nodes["node-01"].reports == 2
        assert aggregator.nodes["node-02"].reports == 2
        await ledger.close()
        tree.close()

    asyncio.run(scenario())
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT node_id, sequence FROM log ORDER BY idx").fetchall()
    conn.close()
    assert rows == [("node-01", 1), ("node-02", 1), ("node-01", 2), ("node-02", 2)]


def test_a_failed_commit_still_reaches_every_waiter(tmp_path: Path) -> None:
    """Cancelling one waiter does not swallow a failure the others must hear."""
    path = tmp_path / "ledger.db"
    (node,) = enroll_nodes(path, ["node-01"])
    reports = [node.next([gpu(i, job=f"job-{i}") for i in range(48)]) for _ in range(2)]

    async def scenario() -> None:
        ledger = Ledger(path)
        ingestor = Ingestor(Registry(path), ledger, Aggregator())
        assert await (await ingestor.accept(reports[0])).committed == 0
        pages = ledger.connection.execute("PRAGMA page_count").fetchone()[0]
        ledger.connection.execute(f"PRAGMA max_page_count = {pages}")
        second = await ingestor.accept(reports[1])
        again = await ingestor.accept(reports[1])
        assert again.duplicate
        pump = asyncio.create_task(_await(second.committed))
        await asyncio.sleep(0)
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
        with pytest.raises(LedgerUnavailableError):
            await asyncio.wait_for(again.committed, 10)
        ledger.connection.execute("PRAGMA max_page_count = 1073741824")
        await ledger.close()

    asyncio.run(scenario())


def test_ack_coalescing_passes_over_a_cancelled_commit() -> None:
    """The pump's coalescing peeks at commits it does not await: a cancelled one
    is not committed (``Future.exception()`` would raise CancelledError)."""

    async def scenario() -> None:
        acks = _InFlight(4)
        cancelled: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        cancelled.cancel()
        await acks.put(Accepted("node-01", 1, cancelled))
        assert acks.pop_committed() is None
        assert len(acks) == 1

    asyncio.run(scenario())
