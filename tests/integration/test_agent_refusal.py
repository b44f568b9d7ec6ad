"""A report the collector refuses for its content is kept on the node as
evidence and replaced at the same sequence; the node keeps reporting with no
gap, and the collector records no evidence (a refused envelope leaves no
chain state there). Whole agents, a real collector, loopback gRPC."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from pathlib import Path

from agent.refusal import MAX_CORRECTIONS
from agent.spool import Spool
from collector.nodes.registry import enroll
from protos import dsse
from protos.computewatch.v1 import telemetry_pb2
from tests.agent_support import SimNode, scenario_doc
from tests.integration.test_agent_runner import check_chain, stored, until
from tests.support import collector_config, gpu, running_collector


def old_report(node: SimNode, sequence: int, previous: bytes, **gpu_kw: float) -> bytes:
    """A report as an agent without validation before sealing could spool it."""
    g = gpu(0)
    for name, value in gpu_kw.items():
        setattr(g, name, value)
    report = telemetry_pb2.NodeReport(
        node_id=node.node_id,
        boot_id="boot-old",
        sequence=sequence,
        previous_digest=previous,
        sample_unix_nanos=time.time_ns(),
        interval_seconds=1.0,
        agent_version="old",
        nvml_status=telemetry_pb2.NVML_STATUS_OK,
        gpus=[g, gpu(1)],
    )
    return dsse.seal(report, node.key)


def evidence(ledger: Path) -> int:
    conn = sqlite3.connect(ledger)
    try:
        (count,) = conn.execute("SELECT COUNT(*) FROM evidence").fetchone()
    finally:
        conn.close()
    return int(count)


def spool_of(node: SimNode, max_unacked: int = 100) -> Spool:
    return Spool(
        node.dir / "state", node_id=node.node_id, keyid=node.key.keyid, max_unacked=max_unacked
    )


def test_a_refused_report_is_replaced_at_its_sequence_and_the_chain_continues(
    tmp_path: Path,
) -> None:
    node = SimNode("node-a", tmp_path, scenario_doc(["node-a"]))
    config = collector_config(tmp_path)
    enroll(config.ledger, node.node_id, node.key.public)
    one = old_report(node, 1, bytes(32))
    bad = old_report(node, 2, dsse.digest(one), utilization_gpu_percent=150.0)
    three = old_report(node, 3, dsse.digest(bad))
    with spool_of(node) as spool:
        for seq, env in ((1, one), (2, bad), (3, three)):
            spool.append(seq, env)
    agents = []

    async def scenario() -> None:
        async with running_collector(config) as service:
            agent = node.agent(service.address)
            agents.append(agent)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            await until(lambda: agent.stats.acked_sequence >= 6)
            stop.set()
            await asyncio.wait_for(task, 15)
            # Reports already sent behind the refused one were refused as
            # gaps (they chained onto it); the replacements were accepted.
            rejected = service.ingestor.stats.rejected
            assert rejected["invalid_report"] == 1
            assert set(rejected) <= {"invalid_report", "gap"}

    asyncio.run(scenario())
    (agent,) = agents
    rows = stored(config.ledger, node.node_id)
    reports = check_chain(rows, node)  # 1..n, each linked to the one before: no gap
    assert len(reports) >= 6
    assert rows[0][1] == one  # stored before the refusal: untouched
    replaced = reports[1]
    assert replaced.sequence == 2
    assert replaced.replaces_refused_digest == hashlib.sha256(bad).digest()
    assert replaced.refused_reason == "invalid_report"
    assert replaced.gpus[0].health == telemetry_pb2.GPU_HEALTH_ERROR
    assert not replaced.gpus[0].HasField("utilization_gpu_percent")
    assert replaced.gpus[1] == gpu(1)
    assert any("utilization_gpu_percent" in c for c in replaced.corrections)
    # The report after it keeps its content, re-chained onto the replacement.
    original_three = dsse.parse_message(telemetry_pb2.NodeReport, dsse.open_envelope(three).payload)
    assert reports[2].sample_unix_nanos == original_three.sample_unix_nanos
    assert list(reports[2].gpus) == list(original_three.gpus)
    assert not reports[2].refused_reason
    assert agent.stats.refusals_replaced == 1
    assert evidence(config.ledger) == 0
    with spool_of(node) as reopened:
        (kept,) = reopened.refusals()
    assert (kept.sequence, kept.reason, kept.envelope) == (2, "invalid_report", bad)


def test_a_refusal_no_correction_cures_is_kept_not_deleted(tmp_path: Path) -> None:
    """A report naming another node (``wrong_key``): each correction is refused
    too; after MAX_CORRECTIONS the report stays spooled for the operator."""
    node = SimNode("node-a", tmp_path, scenario_doc(["node-a"]))
    config = collector_config(tmp_path)
    enroll(config.ledger, node.node_id, node.key.public)
    report = telemetry_pb2.NodeReport(
        node_id="node-b",
        sequence=1,
        previous_digest=bytes(32),
        sample_unix_nanos=time.time_ns(),
        interval_seconds=1.0,
    )
    with spool_of(node) as spool:
        spool.append(1, dsse.seal(report, node.key))
    agents = []

    async def scenario() -> None:
        async with running_collector(config) as service:
            agent = node.agent(service.address)
            agents.append(agent)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            await until(lambda: service.ingestor.stats.rejected["wrong_key"] > MAX_CORRECTIONS)
            stop.set()
            await asyncio.wait_for(task, 15)

    asyncio.run(scenario())
    (agent,) = agents
    assert agent.stats.refusals_replaced == MAX_CORRECTIONS
    assert stored(config.ledger, node.node_id) == []
    assert evidence(config.ledger) == 0
    with spool_of(node) as reopened:
        assert len(reopened.refusals(1)) == MAX_CORRECTIONS
        pending = reopened.pending()
        assert pending[0][0] == 1  # still there: never deleted
        assert [s for s, _ in pending] == list(range(1, len(pending) + 1))
