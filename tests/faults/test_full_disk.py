"""Fault injection: the ledger's filesystem fills and frees again and again
under live agents (the issue's run, made small enough for CI).

A real collector (``create_server``) and real agents (fake NVML underneath)
over loopback; the ledger sits on a small tmpfs that a filler eats up and
then frees a little, cycle after cycle, and finally frees for good. Where
mounting is refused the ledger's page cap stands in (``tests.faults.smallfs``).
Afterwards: every acknowledged report is in the ledger exactly once, every
chain is contiguous from 1, there is no evidence, the log verifies as an
auditor's copy, and every agent made progress once space returned.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.runner import Agent
from collector.nodes.registry import enroll
from collector.server import Collector
from computewatch.audit.follow import Follower, FollowOptions
from computewatch.audit.store import LocalStore
from computewatch.audit.trust import Trust
from computewatch.audit.verify import verify_store
from protos import dsse
from protos.computewatch.v1 import audit_pb2_grpc, telemetry_pb2
from tests.agent_support import SimNode, scenario_doc
from tests.faults.smallfs import Filler, PageCap, TmpfsFiller, small_fs
from tests.support import collector_config, running_collector

AGENTS = 6
CYCLES = 40
FS_BYTES = 8 << 20
LITTLE = 192 << 10  # what each cycle frees before the ledger fills it again
BUDGET = 25.0  # seconds for all cycles together (a loaded 2-core machine)


async def until(cond: Callable[[], bool], timeout: float) -> bool:
    """Wait for ``cond`` at most ``timeout`` seconds; whether it came true."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.01) + 1):
        if cond():
            return True
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    return cond()


def chain_rows(ledger: Path, node_id: str) -> list[tuple[int, bytes]]:
    conn = sqlite3.connect(ledger)
    try:
        rows = conn.execute(
            "SELECT sequence, data FROM log WHERE node_id = ? ORDER BY idx", (node_id,)
        ).fetchall()
    finally:
        conn.close()
    return [(int(s), bytes(d)) for s, d in rows]


def assert_contiguous(rows: list[tuple[int, bytes]], node: SimNode) -> None:
    """Sequences 1..n in log order, each linked to the envelope before it."""
    assert [s for s, _ in rows] == list(range(1, len(rows) + 1)), node.node_id
    previous = bytes(32)
    for _, data in rows:
        report = dsse.verify(data, {node.key.keyid: node.key.public}).parse(
            telemetry_pb2.NodeReport
        )
        assert report.previous_digest == previous, (node.node_id, report.sequence)
        previous = hashlib.sha256(data).digest()


async def health_of(address: str) -> int | None:
    """The overall health status; None if the check itself did not complete
    (a loaded machine: the caller asks again on a later cycle)."""
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
    except grpc.aio.AioRpcError:
        return None
    return int(reply.status)


async def audit_copy(service: Collector, nodes: list[SimNode], out: Path) -> tuple[bool, int]:
    """Follow the log into a local copy like an auditor, then verify it."""
    trust = Trust(
        service.key.public,
        {n.key.keyid: n.key.public for n in nodes},
        origin=service.config.log_origin,
    )
    store = LocalStore(out)
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            await Follower(audit_pb2_grpc.AuditStub(channel), store, trust).run(
                FollowOptions(once=True)
            )
        report = await asyncio.to_thread(verify_store, store, trust, now_ns=time.time_ns())
    finally:
        store.close()
    for finding in report.findings:
        print(f"audit finding: {finding.reason}: {finding.message}")
    return report.ok, report.entries


class Run:
    """What the cycles saw, for the assertions and the closing figures."""

    def __init__(self) -> None:
        self.cycles_full = 0
        self.saw_not_serving = False
        self.saw_gauge_zero = False


async def cycle(service: Collector, filler: Filler, run: Run, deadline: float) -> bool:
    """Fill, wait for the ledger to fail, free a little, wait for recovery."""
    ledger = service.ledger
    await filler.fill()
    if not await until(lambda: not ledger.writable, max(0.0, deadline - time.monotonic())):
        return False
    run.cycles_full += 1
    if not run.saw_not_serving:
        # Health and the gauge say why while the ledger cannot write.
        value = service.metrics_registry.get_sample_value("computewatch_collector_ledger_writable")
        run.saw_gauge_zero = value == 0.0 or run.saw_gauge_zero
        for _ in range(5):
            if await health_of(service.address) == health_pb2.HealthCheckResponse.NOT_SERVING:
                run.saw_not_serving = True
                break
            if ledger.writable:
                break
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # agents meet refusals meanwhile
    await filler.free_some()
    return await until(lambda: ledger.writable, max(0.0, deadline - time.monotonic()))


@pytest.mark.parametrize("filesystem", ["tmpfs", "page_cap"])
def test_a_ledger_on_a_filling_disk_loses_nothing_acknowledged(
    tmp_path: Path, filesystem: str
) -> None:
    """``tmpfs``: a real full filesystem (the page cap where mounting is
    refused); ``page_cap``: SQLite's max_page_count, everywhere."""
    names = [f"node-{i:02d}" for i in range(AGENTS)]
    doc = scenario_doc(names)
    nodes = [SimNode(n, tmp_path / "agents", doc) for n in names]
    with small_fs(tmp_path / "fs", FS_BYTES, mount=filesystem == "tmpfs") as mounted:
        ledger_dir = tmp_path / "fs" if mounted else tmp_path / "disk"
        ledger_dir.mkdir(exist_ok=True)
        config = collector_config(
            tmp_path, ledger=ledger_dir / "ledger.db", ledger_retry_max_seconds=0.2
        )
        for node in nodes:
            enroll(config.ledger, node.node_id, node.key.public)
        figures = asyncio.run(_scenario(config, nodes, tmp_path, mounted))
    acked, stored, failures, cycles_full, recoveries, kind = figures
    print(
        f"\nfault run ({kind}, {AGENTS} agents): {cycles_full} of at most {CYCLES} cycles ran"
        " the ledger out of space,"
        f" {failures} failed writes, {recoveries} recoveries; {acked} reports acknowledged,"
        f" {stored} stored, 0 lost"
    )


async def _scenario(
    config: object, nodes: list[SimNode], tmp_path: Path, mounted: bool
) -> tuple[int, int, int, int, int, str]:
    from collector.config import CollectorConfig

    assert isinstance(config, CollectorConfig)
    async with running_collector(config) as service:
        filler: Filler = (
            TmpfsFiller(config.ledger.parent, LITTLE)
            if mounted
            else PageCap(service.ledger, LITTLE // 4096)
        )
        agents: list[Agent] = [n.agent(service.address) for n in nodes]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(a.run(stop)) for a in agents]
        run = Run()
        try:
            assert await until(lambda: all(a.stats.acked_sequence >= 3 for a in agents), 30)
            deadline = time.monotonic() + BUDGET
            for _ in range(CYCLES):
                if time.monotonic() > deadline:
                    break
                if not await cycle(service, filler, run, deadline):
                    break
            # Space returns for good: every agent must make progress again.
            await filler.free_all()
            assert await until(lambda: service.ledger.writable, 10)
            before = {id(a): a.stats.acked_sequence for a in agents}
            progressed = await until(
                lambda: all(a.stats.acked_sequence >= before[id(a)] + 5 for a in agents), 30
            )
            assert progressed, [(a.stats.acked_sequence, before[id(a)]) for a in agents]
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 20)
        assert run.cycles_full >= 3, f"only {run.cycles_full} cycles ran the ledger out of space"
        assert run.saw_not_serving
        assert run.saw_gauge_zero
        ledger = service.ledger
        assert ledger.evidence_count() == 0
        # Every acknowledged report is stored (once: the chain index is unique).
        acked = 0
        for node, agent in zip(nodes, agents, strict=True):
            rows = chain_rows(config.ledger, node.node_id)
            assert_contiguous(rows, node)
            assert len(rows) >= agent.stats.acked_sequence > 0
            acked += agent.stats.acked_sequence
        failures = sum(ledger.write_errors.values())
        assert failures >= run.cycles_full
        assert ledger.write_errors["disk_full"] >= 1
        # A checkpoint covers the whole log, then an auditor's copy verifies.
        audit = service.audit
        assert audit is not None
        # (leases keep the log growing a little after the agents stopped)
        assert await until(
            lambda: (cp := audit.checkpointer.latest()) is not None and cp.size == ledger.size,
            10,
        )
        size = ledger.size
        ok, entries = await audit_copy(service, nodes, tmp_path / "audit-copy")
        assert ok
        assert entries >= size
        kind = filler.kind
        return acked, size, failures, run.cycles_full, ledger.recoveries, kind
