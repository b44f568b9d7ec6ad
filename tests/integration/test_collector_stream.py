"""Agents' envelopes over real loopback gRPC into a real collector and ledger."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest

from collector.accounting.snapshot import CLUSTER_KEY, Scope
from protos import devices
from protos.computewatch.v1 import status_pb2, status_pb2_grpc
from tests.support import (
    StreamClient,
    collector_config,
    enroll_nodes,
    gpu,
    running_collector,
)

H100 = devices.lookup("NVIDIA H100 80GB HBM3")
assert H100 is not None


def test_several_agents_stream_and_are_acknowledged_after_commit(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    nodes = enroll_nodes(config.ledger, [f"node-{i}" for i in range(4)])

    async def scenario() -> None:
        async with running_collector(config) as service:
            clients = [StreamClient(service.address) for _ in nodes]
            for _ in range(5):
                for node, client in zip(nodes, clients, strict=True):
                    await client.send(node.next([gpu(0, job=f"job-{node.node_id}")]))
            acks = [await c.ack_for(5) for c in clients]
            assert [a.node_id for a in acks] == [n.node_id for n in nodes]
            # Acknowledged means committed: the rows are in the file.
            conn = sqlite3.connect(config.ledger)
            rows = conn.execute(
                "SELECT node_id, sequence FROM log WHERE sequence IS NOT NULL ORDER BY idx"
            ).fetchall()
            conn.close()
            assert len(rows) == 20
            assert sorted(rows) == sorted((n.node_id, s) for n in nodes for s in range(1, 6))
            assert service.ingestor.stats.accepted == 20
            for c in clients:
                await c.close()

    asyncio.run(scenario())


def test_aggregates_and_status_reflect_committed_reports(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    (node,) = enroll_nodes(config.ledger, ["node-a"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            client = StreamClient(service.address)
            gpus = [gpu(0, util=50.0, job="train"), gpu(1, util=100.0, tensor=40.0, job="train")]
            for _ in range(3):
                await client.send(node.next(gpus, interval=2.0))
            await client.ack_for(3)
            snap = service.aggregator.snapshot(service.aggregator.nodes["node-a"].last_received)
            assert H100 is not None
            assert snap.get(Scope.CLUSTER, CLUSTER_KEY, "installed_flops") == 2 * H100.peak_flops
            achieved = H100.peak_flops * (0.5 + 0.4)  # utilization on 0, tensor activity on 1
            assert snap.get(Scope.NODE, "node-a", "achieved_flops") == achieved
            assert snap.get(Scope.JOB, "train", "cumulative_flop") == achieved * 2.0 * 3

            async with grpc.aio.insecure_channel(service.address) as channel:
                st = await status_pb2_grpc.StatusStub(channel).GetStatus(status_pb2.StatusRequest())
                health = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="computewatch.v1.Telemetry")
                )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            assert st.reports_accepted == 3
            (job,) = st.jobs
            assert job.job_id == "train"
            assert job.upper_bound
            assert st.nodes[0].node_id == "node-a"
            assert st.nodes[0].state == status_pb2.NODE_STATE_OK
            text = generate_latest(service.metrics_registry).decode()
            assert "computewatch_collector_reports_accepted_total 3.0" in text
            assert 'computewatch_nodes{state="ok"} 1.0' in text
            await client.close()

    asyncio.run(scenario())


def test_resends_after_reconnect_are_idempotent(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    (node,) = enroll_nodes(config.ledger, ["node-r"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            first = StreamClient(service.address)
            for _ in range(3):
                await first.send(node.next([gpu(0)]))
            await first.ack_for(3)
            await first.close()
            second = StreamClient(service.address)
            for data in node.sent:  # an agent that lost its acks resends everything
                await second.send(data)
            await second.send(node.next([gpu(0)]))
            ack = await second.ack_for(4)
            assert ack.sequence == 4
            assert service.ledger.size == 1 + 4  # its enrolment, then four reports
            assert service.ingestor.stats.replayed == 3
            await second.close()

    asyncio.run(scenario())


def test_collector_restart_keeps_chain_and_aggregates(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    (node,) = enroll_nodes(config.ledger, ["node-s"])

    async def run_once(count: int) -> float:
        async with running_collector(config) as service:
            client = StreamClient(service.address)
            for _ in range(count):
                await client.send(node.next([gpu(0, job="long")]))
            await client.ack_for(node.sequence)
            await client.close()
            return service.aggregator.jobs["long"].cumulative_flop

    async def scenario() -> None:
        first = await run_once(2)
        second = await run_once(2)  # continues at sequence 3 after the restart
        assert second == 2 * first

    asyncio.run(scenario())
