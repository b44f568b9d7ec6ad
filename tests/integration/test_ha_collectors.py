"""Two collectors on one real PostgreSQL: agents stream to the leader, it dies,
the standby takes over, the agents fail over and nothing is lost or doubled.

Each collector here is what ``collector serve`` runs, in this process:
``create_server`` on a PostgreSQL URL (its ``StoreLedger`` fenced by its
``Elector``, the same services as on SQLite, enrolments in the database). The
same scenario with ``collector serve`` processes and real agents is
tests/integration/test_ha_serve.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from agent.enforce.lease import LeaseTracker
from agent.enforce.verify import DirectiveVerifier
from collector.config import HaConfig
from collector.server import TELEMETRY, Collector, create_server
from collector.store.ledger_store import LedgerEntry
from collector.store.merkle_log import node_pos
from collector.store.pg_store import PgStore
from collector.store.sequencer import StoreLedger
from protos import dsse, merkle
from protos.computewatch.v1 import control_pb2
from protos.keys import PublicKey
from tests.integration.test_agent_stream import FakeAgent, free_port, until
from tests.pg_support import fresh_database
from tests.stop_support import (
    Control,
    approval,
    authorities,
    manual_halt,
    node_scope,
    open_directive,
)
from tests.support import collector_config, enroll_nodes, new_key
from tests.tls_support import Site, make_site


async def candidate(
    name: str,
    url: str,
    tmp: Path,
    port: int,
    *,
    metrics: CollectorRegistry | None = None,
    **overrides: object,
) -> Collector:
    """One candidate as ``collector serve`` builds it, with the shared key in ``tmp``."""
    config = collector_config(
        tmp,
        ledger=url,
        listen=f"127.0.0.1:{port}",
        ha=HaConfig(candidate=name, leader_lease_seconds=1.0, renew_seconds=0.1),
        **overrides,
    )
    service, _ = await create_server(config, metrics_registry=metrics)
    return service


def elector(c: Collector) -> str:
    assert c.ha is not None
    return c.ha.elector.role


def term(c: Collector) -> int | None:
    assert c.ha is not None
    return c.ha.elector.term


def store_ledger(c: Collector) -> StoreLedger:
    assert isinstance(c.ledger, StoreLedger)
    return c.ledger


async def telemetry_health(port: int, site: Site) -> str:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", site.credentials()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        got = await stub.Check(health_pb2.HealthCheckRequest(service=TELEMETRY))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(got.status)


def test_the_standby_takes_over_and_agents_lose_and_double_nothing(
    tmp_path: Path,
    pg_server: str,
) -> None:
    url = fresh_database(pg_server)
    nodes = enroll_nodes(url, ["node-a", "node-b", "node-c"])  # type: ignore[arg-type]
    port_a, port_b = free_port(), free_port()
    targets = f"127.0.0.1:{port_a},127.0.0.1:{port_b}"
    site = make_site(tmp_path / "tls")  # the secure default: TLS, streams bound by proof
    tls = {"tls_cert": site.server.cert, "tls_key": site.server.key, "insecure_plaintext": False}

    async def scenario() -> None:
        metrics_a, metrics_b = CollectorRegistry(), CollectorRegistry()
        a = await candidate("collector-a", url, tmp_path, port_a, metrics=metrics_a, **tls)
        try:
            b = await candidate("collector-b", url, tmp_path, port_b, metrics=metrics_b, **tls)
        except BaseException:
            await a.stop(0)
            raise
        assert metrics_a.get_sample_value("computewatch_collector_leader") == 1
        assert metrics_b.get_sample_value("computewatch_collector_leader") == 0
        assert metrics_b.get_sample_value("computewatch_collector_leader_term") == 0
        assert (elector(a), elector(b)) == ("leader", "standby")
        assert not b.ledger.writable
        assert b.ledger.unavailable_reason == "standby"
        stop = asyncio.Event()
        agents = [
            FakeAgent(n, tmp_path / n.node_id, targets, credentials=site.credentials())
            for n in nodes
        ]
        tasks = [asyncio.create_task(x.client.run(stop)) for x in agents]
        try:
            assert await telemetry_health(port_a, site) == "SERVING"  # readiness: leader only
            assert await telemetry_health(port_b, site) == "NOT_SERVING"
            for x in agents:
                x.seal(5)
            await until(lambda: all(x.spool.acked_sequence == 5 for x in agents))
            head = (store_ledger(a).store.size, store_ledger(a).store.root())
            await a.stop(0, resign=False)  # gone at once, lease left to lapse
            for x in agents:
                x.seal(4)  # unacknowledged while no collector leads
            await until(lambda: elector(b) == "leader" and b.ledger.writable, timeout=20)
            assert term(b) == 2
            assert metrics_b.get_sample_value("computewatch_collector_leader") == 1
            assert metrics_b.get_sample_value("computewatch_collector_leader_term") == 2
            assert metrics_b.get_sample_value("computewatch_collector_leader_elections_total") == 1
            assert (
                metrics_b.get_sample_value("computewatch_collector_leader_lease_errors_total") == 0
            )
            for _ in range(100):  # bounded: the status is set by a task just started
                if await telemetry_health(port_b, site) == "SERVING":
                    break
                await asyncio.sleep(0.02)
            assert await telemetry_health(port_b, site) == "SERVING"
            for x in agents:
                x.seal(2)
            await until(lambda: all(x.spool.acked_sequence == 11 for x in agents), timeout=30)
            assert all(x.client.target == f"127.0.0.1:{port_b}" for x in agents)
            # every stream's proof answered its challenge, on both leaders
            assert not any(x.stats.rejected.get("stream_binding") for x in agents)
            rows = [
                (e.node_id, e.sequence)
                for e in b.ledger.entries(0, 10_000)
                if e.payload_type == dsse.REPORT_TYPE
            ]
            assert len(rows) == len(set(rows)) == 33
            assert sorted(rows) == sorted((n.node_id, s) for n in nodes for s in range(1, 12))
            store = store_ledger(b).store

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
            await stopped(a, b)

    asyncio.run(scenario())


class Seen:
    """The agent's record of accepted directives (``agent.enforce.verify.SeenCounters``)."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.applied: dict[str, int] = {}

    def highest(self, cls: str) -> int:
        return self.counters.get(cls, 0)

    def applied_counter(self, directive_id: str) -> int | None:
        return self.applied.get(directive_id)


class LeaseHolder:
    """A fail-closed agent's lease side: the real verifier and lease tracker."""

    def __init__(self, node_id: str, collector_key: PublicKey, lease_seconds: float) -> None:
        self.verifier = DirectiveVerifier(node_id, collector_key)
        self.tracker = LeaseTracker(
            "closed", started_at=time.monotonic(), grace_seconds=lease_seconds
        )
        self.seen = Seen()
        self.counters: list[int] = []

    async def on_directive(self, envelope: bytes) -> None:
        accepted = self.verifier.check(envelope, now_ns=time.time_ns(), seen=self.seen)
        d = accepted.directive
        if accepted.duplicate:
            return
        self.seen.counters[accepted.counter_class] = d.counter
        self.seen.applied[d.id] = d.counter
        if d.action == control_pb2.ACTION_LEASE:
            self.tracker.renew(d, time.monotonic())
            self.counters.append(d.counter)


def test_fail_closed_agents_keep_a_valid_lease_across_the_failover(
    tmp_path: Path,
    pg_server: str,
) -> None:
    """Database lease 1 s + renewal 0.1 s + reconnect < the agents' 4 s lease:
    sampled every 20 ms, no fail-closed agent is ever without a valid lease, and
    the new leader's leases verify with the same key and higher counters."""
    url = fresh_database(pg_server)
    nodes = enroll_nodes(url, ["node-a", "node-b"])  # type: ignore[arg-type]
    key = new_key(tmp_path / "collector.key")  # the same key on every candidate
    port_a, port_b = free_port(), free_port()
    targets = f"127.0.0.1:{port_a},127.0.0.1:{port_b}"
    agent_lease = 4.0

    async def start_with_key(name: str, port: int) -> Collector:
        # Plain text: about leases, not transport (test 1 runs TLS).
        return await candidate(
            name, url, tmp_path, port, lease_seconds=agent_lease, interval_seconds=0.5
        )

    async def scenario() -> None:
        a = await start_with_key("collector-a", port_a)
        b = await start_with_key("collector-b", port_b)
        stop = asyncio.Event()
        agents = [FakeAgent(n, tmp_path / n.node_id, targets) for n in nodes]
        holders = [LeaseHolder(n.node_id, key.public, agent_lease) for n in nodes]
        for agent, holder in zip(agents, holders, strict=True):
            agent.client.set_directive_handler(holder.on_directive)
        tasks = [asyncio.create_task(x.client.run(stop)) for x in agents]
        lapses = 0

        async def watch() -> None:
            nonlocal lapses
            while not stop.is_set():
                now = time.monotonic()
                lapses += sum(h.tracker.should_halt(now, locally_halted=False) for h in holders)
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())

        async def sealing() -> None:
            while not stop.is_set():
                for x in agents:
                    x.seal(1)
                await asyncio.sleep(0.25)

        sealer = asyncio.create_task(sealing())
        try:
            await until(lambda: all(len(h.counters) >= 2 for h in holders), timeout=20)
            before = [h.counters[-1] for h in holders]
            await a.stop(0, resign=False)
            await until(lambda: elector(b) == "leader", timeout=20)
            await until(
                lambda: all(h.counters[-1] > c + 1 for h, c in zip(holders, before, strict=True)),
                timeout=20,
            )
            assert all(x.client.target == f"127.0.0.1:{port_b}" for x in agents)
        finally:
            stop.set()
            await asyncio.gather(watcher, sealer, return_exceptions=True)
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
            for x in agents:
                x.spool.close()
            await stopped(a, b)
        assert lapses == 0
        for h in holders:
            assert h.tracker.leased
            assert h.verifier.stats.refused == {}
            assert h.counters == sorted(set(h.counters))  # strictly rising across leaders

    asyncio.run(scenario())


class Obeying(LeaseHolder):
    """The agent's directive side with authority keys: every HALT and RESUME it accepts."""

    def __init__(self, node_id: str, collector_key: PublicKey, authority: list[PublicKey]) -> None:
        super().__init__(node_id, collector_key, 30.0)
        self.verifier = DirectiveVerifier(
            node_id, collector_key, authority_keys=authority, quorum=2
        )
        self.actions: list[tuple[int, str]] = []  # (action, directive id)

    async def on_directive(self, envelope: bytes) -> None:
        await super().on_directive(envelope)
        d = open_directive(envelope, self.verifier_key)
        if d.action != control_pb2.ACTION_LEASE and (d.action, d.id) not in self.actions:
            self.actions.append((d.action, d.id))

    verifier_key: PublicKey


def test_a_halt_in_force_survives_the_failover_and_a_quorum_resume_after_it_is_obeyed(
    tmp_path: Path,
    pg_server: str,
) -> None:
    url = fresh_database(pg_server)
    nodes = enroll_nodes(url, ["node-a", "node-b"])  # type: ignore[arg-type]
    key = new_key(tmp_path / "collector.key")
    auth_keys, auth_paths = authorities(tmp_path, 3)
    port_a, port_b = free_port(), free_port()
    targets = f"127.0.0.1:{port_a},127.0.0.1:{port_b}"

    async def start_halting(name: str, port: int) -> Collector:
        # Plain text: about halts, not transport (test 1 runs TLS).
        return await candidate(
            name,
            url,
            tmp_path,
            port,
            lease_seconds=30.0,
            interval_seconds=0.5,
            authority_keys=tuple(auth_paths),
            quorum=2,
        )

    async def scenario() -> None:
        a = await start_halting("collector-a", port_a)
        b = await start_halting("collector-b", port_b)
        stop = asyncio.Event()
        agents = [FakeAgent(n, tmp_path / n.node_id, targets) for n in nodes]
        holders = [Obeying(n.node_id, key.public, [k.public for k in auth_keys]) for n in nodes]
        for agent, holder in zip(agents, holders, strict=True):
            holder.verifier_key = key.public
            agent.client.set_directive_handler(holder.on_directive)
        tasks = [asyncio.create_task(x.client.run(stop)) for x in agents]
        control_a, control_b = Control(f"127.0.0.1:{port_a}"), Control(f"127.0.0.1:{port_b}")

        async def sealing() -> None:
            while not stop.is_set():
                for x in agents:
                    x.seal(1)
                await asyncio.sleep(0.25)

        sealer = asyncio.create_task(sealing())
        try:
            await until(lambda: all(h.counters for h in holders), timeout=20)  # bound, leased
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # a standby writes nothing
                await control_b.halt(manual_halt(auth_keys[0], node_scope("node-a")))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            halted = await control_a.halt(manual_halt(auth_keys[0], node_scope("node-a", "node-b")))
            (halt_id,) = halted.directive_ids
            await until(lambda: all((1, halt_id) in h.actions for h in holders), timeout=20)
            first = await control_a.approve(approval(auth_keys[1], halt_id))
            assert list(first.directive_ids) == []  # 1 of 2: not yet
            await a.stop(0, resign=False)  # the leader dies with the halt in force
            await until(lambda: elector(b) == "leader" and b.ledger.writable, timeout=20)
            in_force = [
                open_directive(r.envelope, key.public).id
                for r in await control_b.list(in_force_only=True)
            ]
            assert halt_id in in_force  # the halt stays in force on the new leader
            assert b.stop_protocol is not None
            assert b.stop_protocol.tracker.tracks(halt_id)  # its effect is judged there too
            sealed = [x.spool.last_sequence for x in agents]
            await until(  # the agents stream to the new leader (their sessions are bound)
                lambda: all(
                    x.spool.acked_sequence >= s for x, s in zip(agents, sealed, strict=True)
                ),
                timeout=20,
            )
            second = await control_b.approve(approval(auth_keys[2], halt_id))
            (resume_id,) = second.directive_ids  # quorum: one approval each side of the failover
            resume = control_pb2.ACTION_RESUME
            await until(lambda: all((resume, resume_id) in h.actions for h in holders), timeout=20)
            for h in holders:
                assert h.verifier.stats.refused == {}
                assert [act for act, _ in h.actions] == [control_pb2.ACTION_HALT, resume]
            in_force = [
                open_directive(r.envelope, key.public).id
                for r in await control_b.list(in_force_only=True)
            ]
            assert halt_id not in in_force
        finally:
            stop.set()
            await asyncio.gather(sealer, return_exceptions=True)
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
            for x in agents:
                x.spool.close()
            await control_a.close()
            await control_b.close()
            await stopped(a, b)
        rows = [
            (e.node_id, e.sequence)
            for e in stored_entries(url)
            if e.payload_type == dsse.REPORT_TYPE
        ]
        assert len(rows) == len(set(rows))  # every acknowledged report once
        for x in agents:
            acked = x.spool.acked_sequence
            assert {(x.node.node_id, s) for s in range(1, acked + 1)} <= set(rows)

    asyncio.run(scenario())


def stored_entries(url: str) -> list[LedgerEntry]:
    store = PgStore(url)
    try:
        return store.entries(0, store.reload())
    finally:
        store.close()


async def stopped(*collectors: Collector) -> None:
    """Stop each (one the test already stopped is skipped)."""
    for c in collectors:
        await c.stop(0)
