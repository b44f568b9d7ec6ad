"""The spool and the agent on a full disk: the real error, no silent loss,
a consistent chain, and a signed account of what could not be stored."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.spool import Spool
from protos import dsse
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import SpoolFullError
from tests.agent_support import Clock, SimNode, scenario_doc
from tests.spool_faults_support import FullDisk

BIG = 256 << 10  # an envelope larger than any free space the full disk leaves


@pytest.fixture(params=["disk", "max_page_count"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FullDisk]:
    d = FullDisk(tmp_path)
    if request.param == "max_page_count" and d.mounted:
        d.close()  # exercise the fallback too, on a machine that can mount
    try:
        yield d
    finally:
        d.close()


def open_spool(path: Path) -> Spool:
    return Spool(path, node_id="node-1", keyid="ab" * 32, max_unacked=100)


def test_a_full_disk_raises_the_real_error_not_a_failed_rollback(disk: FullDisk) -> None:
    """SQLite rolls back by itself on SQLITE_FULL; an unconditional ROLLBACK
    raised "cannot rollback - no transaction is active" and hid the cause."""
    with open_spool(disk.dir / "state") as spool:
        spool.append(1, b"one")
        disk.fill(spool)
        with pytest.raises(SpoolFullError, match="disk is full") as caught:
            spool.append(2, b"x" * BIG)
        assert "cannot rollback" not in str(caught.value)
        assert caught.value.reason == "spool_full"


def test_after_a_full_disk_the_chain_continues_from_the_last_stored_link(
    disk: FullDisk,
) -> None:
    with open_spool(disk.dir / "state") as spool:
        spool.append(1, b"one")
        disk.fill(spool)
        for _ in range(3):
            with pytest.raises(SpoolFullError):
                spool.append(2, b"x" * BIG)
        # Nothing half-stored: the head and the pending list are unchanged.
        assert spool.next_link() == (2, hashlib.sha256(b"one").digest())
        assert spool.pending() == [(1, b"one")]
        disk.free(spool)
        spool.append(2, b"two")  # the same sequence, other bytes: never stored before
        assert spool.pending() == [(1, b"one"), (2, b"two")]
    with open_spool(disk.dir / "state") as spool:
        assert spool.next_link() == (3, hashlib.sha256(b"two").digest())


def _reports(spool: Spool) -> list[telemetry_pb2.NodeReport]:
    out = []
    for _, env in spool.pending():
        payload = dsse.open_envelope(env).payload
        out.append(dsse.parse_message(telemetry_pb2.NodeReport, payload))
    return out


def test_the_agent_survives_a_full_disk_and_its_next_report_says_what_was_lost(
    disk: FullDisk, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    node = SimNode("node-a", disk.dir, scenario_doc(["node-a"]), clock=clock)
    agent = node.agent()
    spool = agent.open()
    try:

        async def tick() -> None:
            clock.advance(1.0)
            await agent.tick()

        asyncio.run(tick())
        assert spool.last_sequence == 1
        disk.fill(spool)
        for n in range(40):  # receipts large enough that the report needs new pages
            agent.add_receipt(
                telemetry_pb2.EnforcementReceipt(directive_id=f"d{n}", refused_reason="x" * 1000)
            )
        with caplog.at_level(logging.WARNING, logger="agent.runner"):
            for _ in range(4):
                asyncio.run(tick())
            assert agent.stats.reports_unspooled >= 3
            assert agent.stats.spool_failing
            failed = agent.stats.reports_unspooled
            stored = spool.last_sequence
            # One line for the whole fault, not one per report.
            lines = [r for r in caplog.records if "not stored, so not sent" in r.getMessage()]
            assert len(lines) == 1
            disk.free(spool)
            asyncio.run(tick())
        assert not agent.stats.spool_failing
        metric = agent.registry.get_sample_value("computewatch_agent_reports_unspooled_total")
        assert metric == failed
        assert spool.last_sequence == stored + 1  # no sequence was skipped
        after = _reports(spool)
        assert [r.sequence for r in after] == list(range(1, stored + 2))
        last = after[-1]
        assert last.unspooled_reports == failed
        assert last.interval_seconds == pytest.approx(1.0 + failed)  # covers the lost time
        # Every receipt is still there: none was dropped with an unstored report.
        assert sum(len(r.receipts) for r in after) == 40
        # Chained onto the last stored envelope, never onto an unstored one.
        envs = [e for _, e in spool.pending()]
        assert last.previous_digest == hashlib.sha256(envs[-2]).digest()
        assert any("spool writable again" in r.getMessage() for r in caplog.records)
    finally:
        agent.close()


def test_a_report_over_the_size_limit_is_corrected_before_sealing_not_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Receipts too large for one envelope: the agent seals a minimal report
    (the collector would refuse the big one before it could name its
    sequence), counts it, logs it, and the chain moves on."""
    clock = Clock()
    node = SimNode("node-a", tmp_path, scenario_doc(["node-a"]), clock=clock)
    agent = node.agent()
    spool = agent.open()
    try:
        for n in range(2):
            agent.add_receipt(
                telemetry_pb2.EnforcementReceipt(
                    directive_id=f"d{n}",
                    # Each field within the report limits; together over the size limit.
                    steps=[
                        telemetry_pb2.EnforcementStep(step="stop_process", detail="x" * 1000)
                        for _ in range(dsse.DEFAULT_MAX_ENVELOPE_BYTES // 2 // 1000 + 1)
                    ],
                )
            )
        with caplog.at_level(logging.WARNING, logger="agent.runner"):
            clock.advance(1.0)
            asyncio.run(agent.tick())
        assert spool.last_sequence == 1
        ((_, envelope),) = spool.pending()
        assert len(envelope) <= dsse.DEFAULT_MAX_ENVELOPE_BYTES
        (sealed,) = _reports(spool)
        assert len(sealed.gpus) == 0
        assert len(sealed.receipts) == 0
        assert sealed.nvml_status == telemetry_pb2.NVML_STATUS_ERROR
        assert any("over the" in c for c in sealed.corrections)
        assert agent.stats.reports_corrected == 1
        assert any("corrected before sealing" in r.getMessage() for r in caplog.records)
    finally:
        agent.close()
