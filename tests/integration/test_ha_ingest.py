"""Two collectors on one real PostgreSQL: agents stream to the leader, it dies,
the standby takes over, the agents fail over and nothing is lost or doubled.

Each collector here is ``collector.store.ha_ingest``: the real ingest path
(``Ingestor``, ``TelemetryServicer`` over loopback gRPC) on a ``StoreLedger``
fenced by its ``Elector``; enrolments come from a SQLite registry file
(``collector serve`` does not run on PostgreSQL yet).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from collector.merkle_log import node_pos
from collector.store.ha_ingest import TELEMETRY, HaIngest, start_ha_ingest
from protos import merkle
from tests.integration.test_agent_stream import FakeAgent, free_port, until
from tests.pg_support import fresh_database, pg_server  # noqa: F401 - a fixture
from tests.support import enroll_nodes


async def start(
    name: str, url: str, registry_path: Path, port: int, metrics: CollectorRegistry
) -> HaIngest:
    return await start_ha_ingest(
        name,
        url,
        registry_path,
        f"127.0.0.1:{port}",
        lease_seconds=1.0,
        renew_seconds=0.1,
        metrics_registry=metrics,
    )


async def telemetry_health(port: int) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        got = await stub.Check(health_pb2.HealthCheckRequest(service=TELEMETRY))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(got.status)


def test_the_standby_takes_over_and_agents_lose_and_double_nothing(
    tmp_path: Path,
    pg_server: str,  # noqa: F811 - the imported fixture
) -> None:
    url = fresh_database(pg_server)
    registry_path = tmp_path / "enrolments.db"
    nodes = enroll_nodes(registry_path, ["node-a", "node-b", "node-c"])
    port_a, port_b = free_port(), free_port()
    targets = f"127.0.0.1:{port_a},127.0.0.1:{port_b}"

    async def scenario() -> None:
        metrics_a, metrics_b = CollectorRegistry(), CollectorRegistry()
        a = await start("collector-a", url, registry_path, port_a, metrics_a)
        b = await start("collector-b", url, registry_path, port_b, metrics_b)
        assert metrics_a.get_sample_value("computewatch_collector_leader") == 1
        assert metrics_b.get_sample_value("computewatch_collector_leader") == 0
        assert metrics_b.get_sample_value("computewatch_collector_leader_term") == 0
        assert (a.elector.role, b.elector.role) == ("leader", "standby")
        assert not b.ledger.writable
        assert b.ledger.unavailable_reason == "standby"
        assert await telemetry_health(port_a) == "SERVING"  # readiness: leader only
        assert await telemetry_health(port_b) == "NOT_SERVING"
        stop = asyncio.Event()
        agents = [FakeAgent(n, tmp_path / n.node_id, targets) for n in nodes]
        tasks = [asyncio.create_task(x.client.run(stop)) for x in agents]
        try:
            for x in agents:
                x.seal(5)
            await until(lambda: all(x.spool.acked_sequence == 5 for x in agents))
            head = (a.ledger.store.size, a.ledger.store.root())
            await a.stop(resign=False)  # gone at once, lease left to lapse
            for x in agents:
                x.seal(4)  # unacknowledged while no collector leads
            await until(lambda: b.elector.role == "leader" and b.ledger.writable, timeout=20)
            assert b.elector.term == 2
            assert metrics_b.get_sample_value("computewatch_collector_leader") == 1
            assert metrics_b.get_sample_value("computewatch_collector_leader_term") == 2
            assert metrics_b.get_sample_value("computewatch_collector_leader_elections_total") == 1
            assert (
                metrics_b.get_sample_value("computewatch_collector_leader_lease_errors_total") == 0
            )
            for _ in range(100):  # bounded: the status is set by a task just started
                if await telemetry_health(port_b) == "SERVING":
                    break
                await asyncio.sleep(0.02)
            assert await telemetry_health(port_b) == "SERVING"
            for x in agents:
                x.seal(2)
            await until(lambda: all(x.spool.acked_sequence == 11 for x in agents), timeout=30)
            assert all(x.client.target == f"127.0.0.1:{port_b}" for x in agents)
            rows = [(e.node_id, e.sequence) for e in b.ledger.entries(0, 10_000)]
            assert len(rows) == len(set(rows)) == 33
            assert sorted(rows) == sorted((n.node_id, s) for n in nodes for s in range(1, 12))
            store = b.ledger.store

            def subtree(level: int, index: int) -> bytes:
                h = store.merkle_node(node_pos(level, index))
                assert h is not None
                return h

            proof = merkle.consistency_proof(head[0], store.size, subtree)
            merkle.verify_consistency(head[0], store.size, proof, head[1], store.root())
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
            for x in agents:
                x.spool.close()
            await b.stop()

    asyncio.run(scenario())
