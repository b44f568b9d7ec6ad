"""The agent's stream client against a real collector over loopback gRPC.

Each agent here is a real ``Spool`` plus a real ``StreamClient``; reports are
sealed like the runner seals them. Covers resend after reconnect, a collector
restart mid-stream, idempotent resends, rejects, directives and backoff.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.metrics import AgentStats
from agent.spool import Spool
from agent.stream import StreamClient
from collector.config import CollectorConfig
from collector.nodes.registry import enroll
from protos.keys import PrivateKey
from tests.support import Node, collector_config, enroll_nodes, gpu, running_collector
from tests.support import StreamClient as RawStream

FAST = {"backoff_min_seconds": 0.05, "backoff_max_seconds": 0.2}


class FakeAgent:
    """A node's spool and stream client (the runner's sealing, minus sampling)."""

    def __init__(self, node: Node, state_dir: Path, address: str, **kw: object) -> None:
        self.node = node
        self.spool = Spool(state_dir, node_id=node.node_id, keyid=node.key.keyid, max_unacked=1000)
        self.stats = AgentStats()
        self.directives: list[bytes] = []
        options = {**FAST, **kw}
        self.client = StreamClient(
            address,
            node.node_id,
            self.spool,
            self.stats,
            on_directive=self._directive,
            key=node.key,
            **options,  # type: ignore[arg-type]
        )

    async def _directive(self, envelope: bytes) -> None:
        self.directives.append(envelope)

    def seal(self, count: int = 1, **report: object) -> None:
        for _ in range(count):
            seq, prev = self.spool.next_link()
            assert (seq, prev) == (self.node.sequence + 1, self.node.previous)
            data = self.node.next([gpu(0, job=f"job-{self.node.node_id}")], **report)
            self.spool.append(seq, data)
            self.client.notify()


async def until(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def ledger_rows(path: Path) -> list[tuple[str, int]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT node_id, sequence FROM log WHERE sequence IS NOT NULL ORDER BY idx"
        ).fetchall()
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fixed_port_config(tmp_path: Path) -> CollectorConfig:
    return collector_config(tmp_path, listen=f"127.0.0.1:{free_port()}")


def test_several_agents_resend_their_spool_then_stream_new_reports(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    nodes = enroll_nodes(config.ledger, [f"node-{i}" for i in range(4)])

    async def scenario() -> None:
        async with running_collector(config) as service:
            agents = [FakeAgent(n, tmp_path / n.node_id, service.address) for n in nodes]
            for a in agents:
                a.seal(3)  # spooled before the stream exists
            stop = asyncio.Event()
            tasks = [asyncio.create_task(a.client.run(stop)) for a in agents]
            await until(lambda: all(a.spool.acked_sequence == 3 for a in agents))
            for a in agents:
                a.seal(4)  # streamed as they are sealed
            await until(lambda: all(a.spool.acked_sequence == 7 for a in agents))
            assert all(a.stats.stream_connected for a in agents)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            for a in agents:
                assert a.spool.pending() == []
                assert a.stats.acked_sequence == 7
                assert a.stats.unacked == 0
                assert a.stats.stream_connected is False
                assert not a.stats.rejected
                a.spool.close()
        rows = ledger_rows(config.ledger)
        assert sorted(rows) == sorted((n.node_id, s) for n in nodes for s in range(1, 8))

    asyncio.run(scenario())


def test_collector_restart_mid_stream_resends_and_nothing_is_stored_twice(
    tmp_path: Path,
) -> None:
    config = fixed_port_config(tmp_path)
    nodes = enroll_nodes(config.ledger, ["node-a", "node-b", "node-c"])

    async def scenario() -> None:
        stop = asyncio.Event()
        async with running_collector(config) as service:
            agents = [FakeAgent(n, tmp_path / n.node_id, service.address) for n in nodes]
            tasks = [asyncio.create_task(a.client.run(stop)) for a in agents]
            for a in agents:
                a.seal(5)
            await until(lambda: all(a.spool.acked_sequence == 5 for a in agents))
        # Collector down: reports pile up in the spools.
        for a in agents:
            a.seal(5)
        await until(lambda: not any(a.stats.stream_connected for a in agents))
        await asyncio.sleep(0.3)  # a few failed reconnects
        assert all(a.spool.unacked == 5 for a in agents)
        async with running_collector(config) as service:
            for a in agents:
                a.seal(2)
            await until(lambda: all(a.spool.acked_sequence == 12 for a in agents))
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            assert service.ingestor.stats.rejected == {}
        for a in agents:
            assert a.stats.stream_reconnects >= 1
            assert not a.stats.rejected
            a.spool.close()
        rows = ledger_rows(config.ledger)
        assert len(rows) == len(set(rows)) == 36
        assert sorted(rows) == sorted((n.node_id, s) for n in nodes for s in range(1, 13))

    asyncio.run(scenario())


def test_resending_reports_the_collector_already_committed_is_idempotent(
    tmp_path: Path,
) -> None:
    """Acks lost (the collector committed, the agent never heard): the agent
    resends; the collector acknowledges again and stores nothing twice."""
    config = collector_config(tmp_path)
    (node,) = enroll_nodes(config.ledger, ["node-a"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            agent = FakeAgent(node, tmp_path / "state", service.address)
            agent.seal(4)
            raw = RawStream(service.address)
            for _, data in agent.spool.pending():
                await raw.send(data)
            await raw.ack_for(4)
            await raw.close()
            assert agent.spool.unacked == 4  # the agent did not see those acks
            agent.seal(2)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.client.run(stop))
            await until(lambda: agent.spool.acked_sequence == 6)
            stop.set()
            await asyncio.wait_for(task, 10)
            assert service.ingestor.stats.replayed == 4
            assert service.ingestor.stats.accepted == 6
            agent.spool.close()
        assert ledger_rows(config.ledger) == [("node-a", s) for s in range(1, 7)]

    asyncio.run(scenario())


def test_an_unenrolled_node_keeps_its_reports_until_it_is_enrolled(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    enroll_nodes(config.ledger, ["someone-else"])  # creates the ledger
    node = Node("late-node", PrivateKey.generate())

    async def scenario() -> None:
        async with running_collector(config) as service:
            agent = FakeAgent(node, tmp_path / "state", service.address)
            agent.seal(3)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.client.run(stop))
            await until(lambda: agent.stats.rejected["unknown_node"] >= 2)
            # Rejected as unknown, yet nothing was dropped: the chain must start at 1.
            assert agent.spool.unacked == 3
            assert agent.stats.stream_reconnects >= 1
            enroll(config.ledger, node.node_id, node.key.public)
            await until(lambda: agent.spool.acked_sequence == 3)
            stop.set()
            await asyncio.wait_for(task, 10)
            agent.spool.close()
        assert ledger_rows(config.ledger) == [("late-node", s) for s in (1, 2, 3)]

    asyncio.run(scenario())


def test_a_rejected_report_is_counted_by_reason(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    (node,) = enroll_nodes(config.ledger, ["node-a"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            agent = FakeAgent(node, tmp_path / "state", service.address)
            agent.seal(1)
            # A sample an hour in the future: the collector refuses it for good.
            agent.seal(1, sample_ns=time.time_ns() + 3600 * 10**9)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.client.run(stop))
            await until(lambda: agent.stats.rejected["invalid_report"] == 1)
            await until(lambda: agent.spool.acked_sequence == 1)
            stop.set()
            await asyncio.wait_for(task, 10)
            assert service.ingestor.stats.rejected["invalid_report"] >= 1
            agent.spool.close()
        assert ledger_rows(config.ledger) == [("node-a", 1)]

    asyncio.run(scenario())


def test_a_rejected_report_is_dropped_from_the_spool(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    (node,) = enroll_nodes(config.ledger, ["node-a"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            agent = FakeAgent(node, tmp_path / "state", service.address)
            agent.seal(1, sample_ns=time.time_ns() + 3600 * 10**9)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.client.run(stop))
            try:
                await until(lambda: agent.stats.rejected["invalid_report"] == 1)
                await until(lambda: agent.spool.unacked == 0, timeout=2.0)
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)
                agent.spool.close()

    asyncio.run(scenario())


def test_directives_reach_the_handler(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    (node,) = enroll_nodes(config.ledger, ["node-a"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            agent = FakeAgent(node, tmp_path / "state", service.address)
            agent.seal(1)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.client.run(stop))
            await until(lambda: agent.spool.acked_sequence == 1)
            await until(lambda: bool(list(service.sessions.for_node("node-a"))))
            for session in service.sessions.for_node("node-a"):
                assert session.send_directive(b"signed directive bytes")
            await until(lambda: agent.directives == [b"signed directive bytes"])
            assert agent.stats.directives_received == 1
            stop.set()
            await asyncio.wait_for(task, 10)
            agent.spool.close()

    asyncio.run(scenario())


def test_no_collector_means_bounded_reconnects_not_a_busy_loop(tmp_path: Path) -> None:
    node = Node("node-a", PrivateKey.generate())

    async def scenario() -> None:
        agent = FakeAgent(
            node,
            tmp_path / "state",
            f"127.0.0.1:{free_port()}",
            backoff_min_seconds=0.2,
            backoff_max_seconds=0.4,
        )
        agent.seal(2)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.client.run(stop))
        started = time.monotonic()
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.wait_for(task, 10)
        elapsed = time.monotonic() - started
        # Every attempt after the first waits at least backoff_min_seconds.
        assert agent.stats.stream_reconnects <= elapsed / 0.2 + 1
        assert agent.stats.stream_reconnects >= 1
        assert agent.spool.unacked == 2
        assert agent.stats.stream_connected is False
        agent.spool.close()

    asyncio.run(scenario())


def test_backoff_delays_grow_with_jitter_up_to_the_cap(tmp_path: Path) -> None:
    import random

    with Spool(tmp_path, node_id="n", keyid="k", max_unacked=1) as spool:
        client = StreamClient(
            "127.0.0.1:1",
            "n",
            spool,
            AgentStats(),
            backoff_min_seconds=0.5,
            backoff_max_seconds=4.0,
            rng=random.Random(7),
        )
        for attempt, cap in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (9, 4.0), (500, 4.0)]:
            delays = [client.backoff_delay(attempt) for _ in range(50)]
            assert all(0.5 <= d <= cap for d in delays)
            if cap > 0.5:
                assert len(set(delays)) > 1  # jittered
        with pytest.raises(ValueError, match="backoff"):
            StreamClient("x:1", "n", spool, AgentStats(), backoff_min_seconds=0)


def test_stop_while_connected_returns_promptly(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    (node,) = enroll_nodes(config.ledger, ["node-a"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            agent = FakeAgent(node, tmp_path / "state", service.address)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.client.run(stop))
            agent.seal(1)
            await until(lambda: agent.spool.acked_sequence == 1)
            stop.set()
            await asyncio.wait_for(task, 5)
            assert agent.stats.stream_connected is False
            agent.spool.close()

    asyncio.run(scenario())


def test_a_small_in_flight_window_still_delivers_everything_once(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    (node,) = enroll_nodes(config.ledger, ["node-a"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            agent = FakeAgent(node, tmp_path / "state", service.address, max_in_flight=2)
            agent.seal(20)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.client.run(stop))
            await until(lambda: agent.spool.acked_sequence == 20)
            stop.set()
            await asyncio.wait_for(task, 10)
            # One connection, a window of two: each report written exactly once.
            assert agent.stats.envelopes_sent == 20
            assert agent.stats.stream_reconnects == 0
            agent.spool.close()
        assert ledger_rows(config.ledger) == [("node-a", s) for s in range(1, 21)]

    asyncio.run(scenario())
