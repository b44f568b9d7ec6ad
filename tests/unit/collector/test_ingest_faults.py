"""Ingest across a failed ledger write: no report is admitted on top of the
failed ones, and the honest node's resend of the same bytes is accepted as
the next link, never recorded as rollback evidence."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from collector.accounting.aggregate import Aggregator
from collector.nodes.registry import Registry
from collector.store.ledger import Ledger
from collector.store.merkle_log import MerkleLog
from collector.telemetry.ingest import Ingestor
from protos.errors import LedgerUnavailableError, LogError
from tests.support import enroll_nodes, gpu

GPUS = [gpu(i, job=f"job-{i}") for i in range(48)]  # a report of several pages


def test_no_admission_on_failed_links_and_honest_resends_are_no_evidence(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    (node,) = enroll_nodes(path, ["node-07"])
    reports = [node.next(GPUS) for _ in range(5)]

    async def scenario() -> None:
        ledger = Ledger(path)
        tree = MerkleLog(ledger.connection)
        ledger.attach_tree(tree)
        ingestor = Ingestor(Registry(path), ledger, Aggregator())
        first = await ingestor.accept(reports[0])
        assert await first.committed == 0
        pages = ledger.connection.execute("PRAGMA page_count").fetchone()[0]
        ledger.connection.execute(f"PRAGMA max_page_count = {pages}")
        # 2 and 3 go into one transaction, which fails (no room).
        second = await ingestor.accept(reports[1])
        third = await ingestor.accept(reports[2])
        for _ in range(10_000):  # bounded: the write takes milliseconds
            if second.committed.done():
                break
            await asyncio.sleep(0)
        assert second.committed.done()
        # The failure is known but its futures' callbacks have not run yet
        # (this task was scheduled first). Space comes back at this instant:
        # report 4 chains onto 3, which never committed. It must be refused.
        ledger.connection.execute("PRAGMA max_page_count = 1073741824")
        with pytest.raises(LedgerUnavailableError) as info:
            await ingestor.accept(reports[3])
        assert info.value.stored_sequence == 1
        for accepted in (second, third):
            with pytest.raises(LogError):
                await accepted.committed
        for _ in range(500):
            if ledger.writable:
                break
            await asyncio.sleep(0.01)
        assert ledger.writable
        assert ingestor.resyncs == 1
        # The honest agent resends from stored_sequence + 1, the same bytes.
        resent = [await ingestor.accept(r) for r in reports[1:]]
        assert [a.duplicate for a in resent] == [False] * 4
        assert [await a.committed for a in resent] == [1, 2, 3, 4]
        assert ledger.evidence_count() == 0
        assert tree.size == ledger.size == 5
        await ledger.close()
        tree.close()

    asyncio.run(scenario())
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT sequence, data FROM log ORDER BY idx").fetchall()
    conn.close()
    assert rows == [(i + 1, r) for i, r in enumerate(reports)]
