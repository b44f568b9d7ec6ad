"""Agents with several collector addresses fail over to the one that serves.

Collector A runs on one port; it dies; collector B (a standby that takes over
the same shared ledger) starts on another. Agents configured with every
address (a dead one first) rotate to whichever answers, resend what A never
acknowledged, and the ledger holds every report exactly once.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import AgentConfig
from tests.integration.test_agent_stream import FakeAgent, free_port, ledger_rows, until
from tests.support import collector_config, enroll_nodes, running_collector


def test_agents_fail_over_to_the_next_collector_and_lose_or_duplicate_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead, port_a, port_b = free_port(), free_port(), free_port()
    config_a = collector_config(tmp_path, listen=f"127.0.0.1:{port_a}")
    config_b = replace(config_a, listen=f"127.0.0.1:{port_b}")
    nodes = enroll_nodes(config_a.ledger, ["node-a", "node-b", "node-c"])
    targets = f"127.0.0.1:{dead}, 127.0.0.1:{port_a},127.0.0.1:{port_b}"

    async def scenario() -> None:
        stop = asyncio.Event()
        agents = [FakeAgent(n, tmp_path / n.node_id, targets) for n in nodes]
        tasks = [asyncio.create_task(a.client.run(stop)) for a in agents]
        async with running_collector(config_a):
            for a in agents:
                a.seal(5)
            await until(lambda: all(a.spool.acked_sequence == 5 for a in agents))
            assert all(a.client.target == f"127.0.0.1:{port_a}" for a in agents)
        for a in agents:  # A is gone: these pile up unacknowledged
            a.seal(4)
        await until(lambda: not any(a.stats.stream_connected for a in agents))
        assert all(a.spool.unacked == 4 for a in agents)
        async with running_collector(config_b) as service_b:
            for a in agents:
                a.seal(2)
            await until(lambda: all(a.spool.acked_sequence == 11 for a in agents))
            assert all(a.client.target == f"127.0.0.1:{port_b}" for a in agents)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            assert service_b.ingestor.stats.rejected == {}
        for a in agents:
            assert not a.stats.rejected
            assert a.spool.pending() == []
            a.spool.close()
        # A collector going away is no agent error (no "stream failed" traceback).
        assert not [r for r in caplog.records if r.name == "agent.stream" and r.levelno >= 40]
        rows = ledger_rows(config_a.ledger)
        assert len(rows) == len(set(rows)) == 33
        assert sorted(rows) == sorted((n.node_id, s) for n in nodes for s in range(1, 12))

    asyncio.run(scenario())


def test_the_agent_config_takes_a_list_of_collectors_and_names_a_bad_one(tmp_path: Path) -> None:
    from protos.errors import ConfigError

    ok = AgentConfig(node_id="n", key=tmp_path / "k", collector="a:1, b.example:7443")
    assert ok.collector == "a:1, b.example:7443"
    with pytest.raises(ConfigError, match="collector"):
        AgentConfig(node_id="n", key=tmp_path / "k", collector="a:1,b")
