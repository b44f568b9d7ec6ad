"""One enrolled node tries to grow the collector without bound, over real gRPC.

Each limit: the abuser gets a typed Reject with a stable reason, the counter
for that reason (exported at 0 before), a log line, nothing written; another
node on the same collector keeps being acknowledged meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from prometheus_client import generate_latest

from collector.accounting.snapshot import CLUSTER_KEY, Scope
from collector.config import CollectorConfig
from collector.server import Collector
from protos.computewatch.v1 import status_pb2, status_pb2_grpc, telemetry_pb2
from protos.reports import MAX_ID_CHARS, MAX_JOBS_PER_REPORT, MAX_PARENTS_PER_JOB
from tests.support import (
    Node,
    StreamClient,
    collector_config,
    enroll_nodes,
    gpu,
    running_collector,
)


def _many_jobs(node: Node, first: int, count: int) -> telemetry_pb2.NodeReport:
    report = node.report([gpu(0)])
    for i in range(first, first + count):
        report.gpus[0].processes.add(pid=10_000 + i, job_id=f"{node.node_id}-job-{i}")
    return report


def too_many_jobs_in_a_report(a: Node) -> telemetry_pb2.NodeReport:
    return _many_jobs(a, 0, MAX_JOBS_PER_REPORT + 1)


def huge_boot_id(a: Node) -> telemetry_pb2.NodeReport:
    report = a.report([gpu(0)])
    report.boot_id = "b" * 50_000
    return report


def long_job_id(a: Node) -> telemetry_pb2.NodeReport:
    return a.report([gpu(0, job="j" * (MAX_ID_CHARS + 1))])


def too_many_parents(a: Node) -> telemetry_pb2.NodeReport:
    report = a.report([gpu(0)])
    report.jobs.add(job_id="job-1", parent_job_ids=[f"p{i}" for i in range(65)])
    assert MAX_PARENTS_PER_JOB < 65
    return report


def too_many_receipts(a: Node) -> telemetry_pb2.NodeReport:
    report = a.report([gpu(0)])
    for i in range(65):
        report.receipts.add(directive_id=f"d{i}")
    return report


def sample_in_1970(a: Node) -> telemetry_pb2.NodeReport:
    return a.report([gpu(0)], sample_ns=10**9)


def memory_used_above_total(a: Node) -> telemetry_pb2.NodeReport:
    g = gpu(0)
    g.memory_total_bytes = 80 << 30
    g.memory_used_bytes = 81 << 30
    return a.report([g])


@asynccontextmanager
async def running_collector_and_clients(
    config: CollectorConfig,
) -> AsyncIterator[tuple[Collector, StreamClient, StreamClient]]:
    """A collector and one stream for each of two nodes."""
    async with running_collector(config) as service:
        ca, cb = StreamClient(service.address), StreamClient(service.address)
        try:
            yield service, ca, cb
        finally:
            await ca.close()
            await cb.close()


CASES: list[tuple[str, Callable[[Node], telemetry_pb2.NodeReport], str]] = [
    ("jobs per report", too_many_jobs_in_a_report, "report_limit"),
    ("boot id length", huge_boot_id, "report_limit"),
    ("job id length", long_job_id, "report_limit"),
    ("parents per job", too_many_parents, "report_limit"),
    ("receipts per report", too_many_receipts, "report_limit"),
    ("sample time in 1970", sample_in_1970, "invalid_report"),
    ("memory used above total", memory_used_above_total, "invalid_report"),
]


async def _other_node_is_acknowledged(service: Collector, b: Node, client: StreamClient) -> None:
    seq = b.sequence + 1
    await client.send(b.next([gpu(0, job="b-job")]))
    assert (await client.ack_for(seq, timeout=10.0)).sequence == seq


@pytest.mark.parametrize(("name", "make", "reason"), CASES, ids=[c[0] for c in CASES])
def test_a_report_over_a_limit_is_refused_and_others_are_served(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    make: Callable[[Node], telemetry_pb2.NodeReport],
    reason: str,
) -> None:
    config = collector_config(tmp_path)
    a, b = enroll_nodes(config.ledger, ["node-a", "node-b"])

    async def scenario() -> None:
        async with running_collector_and_clients(config) as (service, ca, cb):
            metrics = generate_latest(service.metrics_registry).decode()
            assert f'computewatch_collector_rejected_total{{reason="{reason}"}} 0.0' in metrics
            await ca.send(a.next([gpu(0)]))
            await ca.ack_for(1)
            await _other_node_is_acknowledged(service, b, cb)
            size = service.ledger.size
            with caplog.at_level(logging.WARNING, logger="collector.telemetry.ingest"):
                await ca.send(a.seal(make(a), advance=False))
                msg = await ca.receive()
            assert msg.reject.reason == reason, msg
            assert msg.reject.sequence == 2
            assert service.ledger.size == size
            assert service.ingestor.stats.rejected[reason] == 1
            metrics = generate_latest(service.metrics_registry).decode()
            assert f'computewatch_collector_rejected_total{{reason="{reason}"}} 1.0' in metrics
            assert any(reason in r.getMessage() for r in caplog.records)
            await _other_node_is_acknowledged(service, b, cb)
            # The abuser's chain continues where it was.
            await ca.send(a.next([gpu(0)]))
            assert (await ca.ack_for(2)).sequence == 2

    asyncio.run(scenario())


def test_a_node_naming_ever_new_jobs_hits_its_limit_and_others_are_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's attack: every report names a fresh batch of running jobs."""
    config = collector_config(tmp_path, max_jobs_per_node=250, max_job_states=1000)
    a, b = enroll_nodes(config.ledger, ["node-a", "node-b"])

    async def scenario() -> None:
        async with running_collector_and_clients(config) as (service, ca, cb):
            refused = 0
            for i in range(5):
                # 100 jobs a report, the old ones still running (kept in gpu 0).
                report = _many_jobs(a, 0, 100 * (i + 1))
                seq = a.sequence + 1
                data = a.seal(report, advance=False)
                await ca.send(data)
                msg = await ca.receive()
                if msg.HasField("reject"):
                    assert msg.reject.reason == "node_jobs_limit", msg
                    refused += 1
                else:
                    assert msg.ack.sequence == seq
                    a.seal(report)  # the agent's chain advances on acceptance
                await _other_node_is_acknowledged(service, b, cb)
            assert refused == 3
            # 200 jobs and gpu 0's own "job-1"; node-b's one job.
            assert service.aggregator.bounds.node_jobs("node-a") == 201
            assert len(service.aggregator.jobs) == 202
            metrics = generate_latest(service.metrics_registry).decode()
            assert 'computewatch_collector_rejected_total{reason="node_jobs_limit"} 3.0' in metrics
            assert 'computewatch_collector_rejected_total{reason="job_states_limit"} 0.0' in metrics

    asyncio.run(scenario())


def test_conflicting_reports_keep_one_evidence_row_per_key_and_a_count(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    a, b = enroll_nodes(config.ledger, ["node-a", "node-b"])

    async def scenario() -> None:
        async with running_collector_and_clients(config) as (service, ca, cb):
            await ca.send(a.next([gpu(0)]))
            await ca.ack_for(1)
            for i in range(20):
                conflict = a.report([gpu(0, util=float(i))], sequence=1, previous=bytes(32))
                conflict.boot_id = "x" * 200
                await ca.send(a.seal(conflict, advance=False))
                msg = await ca.receive()
                assert msg.reject.reason == "equivocation"
            await _other_node_is_acknowledged(service, b, cb)
            assert service.ledger.evidence_seen(a.key.keyid, "equivocation") == 20
            assert service.ledger.evidence_count("equivocation") == 1
            assert service.ingestor.stats.evidence_counted_only == 19
            metrics = generate_latest(service.metrics_registry).decode()
            assert "computewatch_collector_evidence_not_kept_total 19.0" in metrics

    asyncio.run(scenario())
    conn = sqlite3.connect(config.ledger)
    try:
        (rows,) = conn.execute("SELECT COUNT(*) FROM evidence").fetchone()
        (first,) = conn.execute("SELECT accepted_data FROM evidence").fetchone()
    finally:
        conn.close()
    assert rows == 1
    assert first == a.sent[0]


def test_a_restart_replays_job_churn_into_the_same_bounded_set(tmp_path: Path) -> None:
    """Job state was replayed whole after a restart; now replay ages out too."""
    config = collector_config(tmp_path, max_jobs_per_node=100, max_job_states=5)
    (a,) = enroll_nodes(config.ledger, ["node-a"])
    totals: list[float | None] = []

    def cluster_flop(service: Collector) -> float | None:
        return service.aggregator.snapshot(0.0).get(Scope.CLUSTER, CLUSTER_KEY, "cumulative_flop")

    async def churn() -> None:
        async with running_collector(config) as service:
            client = StreamClient(service.address)
            for i in range(30):  # one new job a report; the previous one ends
                await client.send(a.next([gpu(0, job=f"churn-{i}")]))
            await client.ack_for(30)
            assert len(service.aggregator.jobs) <= 5
            totals.append(cluster_flop(service))
            await client.close()

    async def restart() -> None:
        async with running_collector(config) as service:
            assert service.ledger.chain_heads()[a.key.keyid].last_sequence == 30
            assert len(service.aggregator.jobs) <= 5
            assert "churn-29" in service.aggregator.jobs
            # Forgotten jobs' FLOP stays in the cluster's total.
            assert cluster_flop(service) == pytest.approx(totals[0])
            async with grpc.aio.insecure_channel(service.address) as channel:
                page = await status_pb2_grpc.StatusStub(channel).GetStatus(
                    status_pb2.StatusRequest()
                )
            assert page.jobs_total <= 5

    asyncio.run(churn())
    asyncio.run(restart())


def test_the_total_of_job_states_is_bounded_and_held_jobs_keep_reporting(
    tmp_path: Path,
) -> None:
    config = collector_config(tmp_path, max_jobs_per_node=10, max_job_states=15)
    a, b, c = enroll_nodes(config.ledger, ["node-a", "node-b", "node-c"])

    def running(node: Node, count: int) -> bytes:
        gpus = [gpu(i, job=f"{node.node_id}-{i}", pid=100 + i) for i in range(count)]
        return node.seal(node.report(gpus), advance=False)

    async def scenario() -> None:
        async with running_collector_and_clients(config) as (service, ca, cb):
            await _other_node_is_acknowledged(service, b, cb)  # b holds 1 job
            await ca.send(a.next([gpu(i, job=f"node-a-{i}", pid=100 + i) for i in range(10)]))
            await ca.ack_for(1)
            cc = StreamClient(service.address)
            try:
                await cc.send(c.next([gpu(i, job=f"node-c-{i}", pid=100 + i) for i in range(4)]))
                await cc.ack_for(1)
                assert len(service.aggregator.jobs) == 15
                await cc.send(running(c, 5))  # one more job: none has ended
                msg = await cc.receive()
                assert msg.reject.reason == "job_states_limit", msg
                # The nodes' held jobs keep reporting.
                await _other_node_is_acknowledged(service, b, cb)
                await cc.send(c.next([gpu(i, job=f"node-c-{i}", pid=100 + i) for i in range(4)]))
                await cc.ack_for(2)
            finally:
                await cc.close()
            metrics = generate_latest(service.metrics_registry).decode()
            assert 'computewatch_collector_rejected_total{reason="job_states_limit"} 1.0' in metrics

    asyncio.run(scenario())
