"""Equivocation evidence keeps both envelopes even when the accepted one is
still being written when the conflicting one arrives."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from collector.accounting.aggregate import Aggregator
from collector.nodes.registry import Registry
from collector.store.ledger import Ledger
from collector.telemetry.ingest import Ingestor
from protos.errors import EquivocationError
from tests.support import enroll_nodes, gpu


def test_evidence_for_a_link_still_in_flight_holds_both_envelopes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    (node,) = enroll_nodes(path, ["node-a"])
    accepted = node.next([gpu(0)])
    other = node.seal(
        node.report([gpu(0, util=1.0)], sequence=1, previous=bytes(32)), advance=False
    )

    async def scenario() -> None:
        ledger = Ledger(path)
        ingestor = Ingestor(Registry(path), ledger, Aggregator())
        first = await ingestor.accept(accepted)
        assert not first.committed.done()  # the write has not happened yet
        with pytest.raises(EquivocationError):
            await ingestor.accept(other)
        await first.committed
        await ledger.close()

    asyncio.run(scenario())
    conn = sqlite3.connect(path)
    row = conn.execute("SELECT accepted_data, offending_data FROM evidence").fetchone()
    conn.close()
    assert row == (accepted, other)
