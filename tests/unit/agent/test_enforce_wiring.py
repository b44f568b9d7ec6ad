"""Enforcement wired into the agent: directive hook -> receipt in the next sealed report."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.enforce.state import LOCAL_HALT_ID
from agent.enforce.wiring import AgentEnforcement
from agent.fakenvml.fake import FakeNvml
from agent.fakenvml.scenario import parse_scenario
from agent.nvml.real import NvmlBackend
from agent.runner import Agent
from protos import dsse
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import ConfigError, KeyFileError
from protos.keys import PrivateKey, write_private_key, write_public_key
from tests.enforce_support import (
    HALT,
    NODE,
    PROHIBITED,
    Children,
    Clock,
    directive,
    fake_process_state,
    scenario_doc,
    wait_state,
)


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    yield c
    c.close()


class Setup:
    def __init__(self, tmp: Path, children: Children, **overrides: object) -> None:
        self.tmp = tmp
        self.collector = PrivateKey.generate()
        self.node_key = PrivateKey.generate()
        write_private_key(self.node_key, tmp / "node.key")
        write_public_key(self.collector.public, tmp / "collector.pub")
        (tmp / "boot_id").write_text("boot-1\n")
        self.clock = Clock()
        self.pid = children.spawn().pid
        self.fake = FakeNvml(
            parse_scenario(scenario_doc({"4242": (0,)})),
            NODE,
            clock=self.clock.fake_time,
            process_state=fake_process_state,
            pids={"4242": self.pid},
        )
        self.clock.advance(1.0)
        base = AgentConfig(
            node_id=NODE,
            key=tmp / "node.key",
            collector_key=tmp / "collector.pub",
            state_dir=tmp / "state",
            boot_id_path=tmp / "boot_id",
            lease_grace_seconds=5.0,
        )
        self.config = replace(base, **overrides)  # type: ignore[arg-type]

    def agent(self) -> Agent:
        return Agent(
            self.config,
            NvmlBackend(self.fake, clock=self.clock.fake_time),
            None,
            None,
            self.node_key,
            clock_ns=self.clock.time_ns,
            monotonic=self.clock.monotonic,
            version="test",
        )


def hooks(agent: Agent) -> AgentEnforcement:
    assert agent.enforcement is not None
    return agent.enforcement


def last_report(agent: Agent) -> telemetry_pb2.NodeReport:
    assert agent.spool is not None
    _, envelope = agent.spool.pending()[-1]
    verified = dsse.verify(envelope, {agent._key.keyid: agent._key.public})
    return verified.parse(telemetry_pb2.NodeReport)


def test_a_directive_becomes_a_receipt_in_the_next_report_at_once(
    tmp_path: Path, children: Children
) -> None:
    s = Setup(tmp_path, children)
    agent = s.agent()
    agent.open()
    halt = directive(HALT, counter=1)
    asyncio.run(hooks(agent).on_directive(dsse.seal(halt, s.collector)))
    assert agent._report_now.is_set()  # an out-of-cycle report is due
    asyncio.run(agent.tick())
    report = last_report(agent)
    (receipt,) = report.receipts
    assert receipt.directive_id == halt.id
    assert all(step.ok for step in receipt.steps)
    assert list(report.enforcement.active_directive_ids) == [halt.id]
    assert sorted(report.enforcement.halted_gpu_uuids) == sorted(g.uuid for g in report.gpus)
    assert all(g.compute_mode == PROHIBITED for g in report.gpus)
    assert wait_state(s.pid, {"T"}) == "T"
    # Receipts go out once.
    asyncio.run(agent.tick())
    assert list(last_report(agent).receipts) == []
    value = agent.registry.get_sample_value
    assert value("computewatch_agent_directives_applied_total", {"action": "halt"}) == 1.0
    agent.close()


def test_a_refusal_rides_with_the_next_regular_report(tmp_path: Path, children: Children) -> None:
    s = Setup(tmp_path, children)
    agent = s.agent()
    agent.open()
    forged = dsse.seal(directive(HALT, counter=1), PrivateKey.generate())
    asyncio.run(hooks(agent).on_directive(forged))
    assert not agent._report_now.is_set()
    asyncio.run(agent.tick())
    (receipt,) = last_report(agent).receipts
    assert receipt.refused_reason == "unknown_key"
    value = agent.registry.get_sample_value
    assert value("computewatch_agent_directives_refused_total", {"reason": "unknown_key"}) == 1
    agent.close()


def test_fail_closed_agent_halts_itself_and_says_so_in_its_report(
    tmp_path: Path, children: Children
) -> None:
    s = Setup(tmp_path, children, fail_mode="closed")
    agent = s.agent()
    agent.open()
    asyncio.run(agent.tick())
    assert not last_report(agent).enforcement.locally_halted
    s.clock.advance(5.0)
    asyncio.run(agent.tick())
    report = last_report(agent)
    assert report.enforcement.locally_halted
    assert not report.enforcement.lease_valid
    assert report.enforcement.fail_mode == "closed"
    assert [r.directive_id for r in report.receipts] == [LOCAL_HALT_ID]
    assert wait_state(s.pid, {"T"}) == "T"
    agent.close()
    # A restarted agent keeps the local halt and reports it.
    again = s.agent()
    again.open()
    asyncio.run(again.tick())
    assert last_report(again).enforcement.locally_halted
    again.close()


def test_fail_closed_without_a_collector_key_is_refused(tmp_path: Path, children: Children) -> None:
    with pytest.raises(ConfigError, match="collector_key"):
        Setup(tmp_path, children, fail_mode="closed", collector_key=None)


def test_an_unreadable_authority_key_fails_at_open(tmp_path: Path, children: Children) -> None:
    s = Setup(tmp_path, children, authority_keys=(tmp_path / "missing.pub",), quorum=1)
    agent = s.agent()
    with pytest.raises(KeyFileError, match="missing.pub"):
        agent.open()
    assert agent.spool is None  # closed again, its lock released
    s.config = replace(s.config, authority_keys=())
    s.agent().open().close()
