"""The agent loop, tick by tick, on a fake-NVML node with a hand-driven clock."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from agent.runner import Agent
from protos import dsse
from protos.computewatch.v1 import telemetry_pb2
from protos.keys import PrivateKey
from tests.agent_support import H100, Clock, SimNode, scenario_doc


def reports(agent: Agent, key: PrivateKey) -> list[telemetry_pb2.NodeReport]:
    assert agent.spool is not None
    out = []
    for _, env in agent.spool.pending():
        verified = dsse.verify(env, {key.keyid: key.public}, expected_type=dsse.REPORT_TYPE)
        out.append(verified.parse(telemetry_pb2.NodeReport))
    return out


def sim(tmp_path: Path, **kw: object) -> SimNode:
    return SimNode("node-a", tmp_path, scenario_doc(["node-a"], **kw), clock=Clock())  # type: ignore[arg-type]


def test_each_tick_seals_a_chained_report_of_the_attributed_sample(tmp_path: Path) -> None:
    node = sim(tmp_path)
    assert node.clock is not None
    agent = node.agent()
    agent.open()
    try:

        async def ticks() -> None:
            for _ in range(3):
                node.clock.advance(1.0)
                await agent.tick()

        asyncio.run(ticks())
        assert agent.spool is not None
        envs = [e for _, e in agent.spool.pending()]
        got = reports(agent, node.key)
        assert [r.sequence for r in got] == [1, 2, 3]
        assert got[0].previous_digest == bytes(32)
        assert got[1].previous_digest == hashlib.sha256(envs[0]).digest()
        assert got[2].previous_digest == hashlib.sha256(envs[1]).digest()
        first = got[0]
        assert first.node_id == "node-a"
        assert first.boot_id == "6f1c9a52-0d7e-4a43-9a3b-2f4c1e5d7a90"
        assert first.agent_version == "test"
        assert first.sample_unix_nanos == node.clock.wall_ns - 2 * 10**9
        assert first.interval_seconds == 0.05  # the configured interval, for the first
        assert got[1].interval_seconds == 1.0  # measured on the monotonic clock after
        assert first.nvml_status == telemetry_pb2.NVML_STATUS_OK
        assert [g.product_name for g in first.gpus] == [H100, H100]
        procs = [p for g in first.gpus for p in g.processes]
        assert procs
        assert {(p.job_id, p.attribution) for p in procs} == {("77", "slurm")}
        (job,) = first.jobs
        assert (job.job_id, list(job.parent_job_ids), job.model_id) == ("77", ["76"], "acme-7b")
        assert first.enforcement.fail_mode == "open"
        s = agent.stats
        assert (s.samples, s.reports_sealed, s.last_sequence, s.unacked) == (3, 3, 3, 3)
        assert s.nvml_up
        assert len(s.gpus) == 2
    finally:
        agent.close()


def test_a_full_spool_drops_samples_and_folds_them_into_the_next_interval(
    tmp_path: Path,
) -> None:
    node = sim(tmp_path)
    assert node.clock is not None
    agent = node.agent(max_unacked=2)
    spool = agent.open()
    try:

        async def tick() -> None:
            node.clock.advance(1.0)
            await agent.tick()

        for _ in range(4):  # 2 sealed, 2 dropped
            asyncio.run(tick())
        assert agent.stats.reports_sealed == 2
        assert agent.stats.reports_dropped == 2
        assert spool.next_link()[0] == 3  # the chain did not move
        spool.ack(2)
        asyncio.run(tick())
        (third,) = reports(agent, node.key)
        assert third.sequence == 3
        assert third.interval_seconds == 3.0  # its own second plus the two dropped
    finally:
        agent.close()


def test_receipts_go_into_the_next_report_only(tmp_path: Path) -> None:
    node = sim(tmp_path)
    assert node.clock is not None
    agent = node.agent()
    agent.open()
    try:
        agent.add_receipt(telemetry_pb2.EnforcementReceipt(directive_id="d-1"))
        agent.add_receipt(telemetry_pb2.EnforcementReceipt(directive_id="d-2"))

        async def two() -> None:
            await agent.tick()
            node.clock.advance(1.0)
            await agent.tick()

        asyncio.run(two())
        first, second = reports(agent, node.key)
        assert [r.directive_id for r in first.receipts] == ["d-1", "d-2"]
        assert list(second.receipts) == []
    finally:
        agent.close()


def test_receipts_wait_for_room_in_the_spool(tmp_path: Path) -> None:
    node = sim(tmp_path)
    assert node.clock is not None
    agent = node.agent(max_unacked=1)
    spool = agent.open()
    try:
        asyncio.run(agent.tick())
        agent.add_receipt(telemetry_pb2.EnforcementReceipt(directive_id="d-9"))
        asyncio.run(agent.tick())  # dropped: the receipt must not be lost with it
        spool.ack(1)
        asyncio.run(agent.tick())
        (report,) = reports(agent, node.key)
        assert [r.directive_id for r in report.receipts] == ["d-9"]
    finally:
        agent.close()


def test_the_enforcement_state_comes_from_the_provider(tmp_path: Path) -> None:
    node = sim(tmp_path)
    agent = node.agent()
    agent.open()
    try:
        asyncio.run(agent.tick())
        agent.set_enforcement_provider(
            lambda: telemetry_pb2.EnforcementState(
                fail_mode="closed", active_directive_ids=["halt-1"], lease_valid=True
            )
        )
        asyncio.run(agent.tick())
        default, provided = reports(agent, node.key)
        assert default.enforcement == telemetry_pb2.EnforcementState(fail_mode="open")
        assert list(provided.enforcement.active_directive_ids) == ["halt-1"]
        assert provided.enforcement.lease_valid
    finally:
        agent.close()


def test_nvml_not_loaded_is_reported_not_fatal(tmp_path: Path) -> None:
    node = sim(
        tmp_path,
        faults=[{"node": "node-a", "kind": "nvml_not_loaded", "at": 0}],
    )
    agent = node.agent()
    agent.open()
    try:
        asyncio.run(agent.tick())
        (report,) = reports(agent, node.key)
        assert report.nvml_status == telemetry_pb2.NVML_STATUS_NOT_LOADED
        assert report.nvml_error
        assert len(report.gpus) == 0
        assert not agent.stats.nvml_up
        assert agent.stats.reports_sealed == 1
    finally:
        agent.close()


def test_request_report_now_seals_out_of_cycle(tmp_path: Path) -> None:
    node = SimNode("node-a", tmp_path, scenario_doc(["node-a"]))
    # An hour between samples: any second report is the out-of-cycle one.
    agent = node.agent(interval_seconds=3600)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await _until(lambda: agent.stats.reports_sealed == 1)
            agent.request_report_now()
            await _until(lambda: agent.stats.reports_sealed == 2)
            agent.request_report_now()
            await _until(lambda: agent.stats.reports_sealed == 3)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert agent.spool is None  # run() closed it
    reopened = SimNode("node-a", tmp_path, scenario_doc(["node-a"]), key=node.key).agent()
    spool = reopened.open()
    try:
        assert spool.next_link()[0] == 4
    finally:
        reopened.close()


def test_a_restarted_agent_continues_the_sequence(tmp_path: Path) -> None:
    node = sim(tmp_path)
    first = node.agent()
    first.open()
    asyncio.run(first.tick())
    asyncio.run(first.tick())
    first.close()
    second = node.agent()
    spool = second.open()
    try:
        asyncio.run(second.tick())
        assert [r.sequence for r in reports(second, node.key)] == [1, 2, 3]
        assert second.stats.last_sequence == 3
        assert spool.unacked == 3
    finally:
        second.close()


async def _until(cond: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
