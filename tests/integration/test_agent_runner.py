"""Whole agents (fake NVML underneath) streaming to a real collector over loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from collector.nodes.registry import enroll
from protos import dsse
from protos.computewatch.v1 import telemetry_pb2
from tests.agent_support import SimNode, scenario_doc
from tests.support import collector_config, running_collector


async def until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def stored(ledger: Path, node_id: str) -> list[tuple[int, bytes]]:
    conn = sqlite3.connect(ledger)
    try:
        rows = conn.execute(
            "SELECT sequence, data FROM log WHERE node_id = ? ORDER BY sequence", (node_id,)
        ).fetchall()
    finally:
        conn.close()
    return [(s, bytes(d)) for s, d in rows]


def check_chain(rows: list[tuple[int, bytes]], node: SimNode) -> list[telemetry_pb2.NodeReport]:
    """Sequences 1..n, each linked to the digest of the envelope before it."""
    assert [s for s, _ in rows] == list(range(1, len(rows) + 1))
    previous = bytes(32)
    out = []
    for _, data in rows:
        verified = dsse.verify(data, {node.key.keyid: node.key.public})
        report = verified.parse(telemetry_pb2.NodeReport)
        assert report.previous_digest == previous
        previous = hashlib.sha256(data).digest()
        out.append(report)
    return out


def test_many_agents_in_one_loop_stream_chained_reports(tmp_path: Path) -> None:
    names = [f"node-{i}" for i in range(6)]
    doc = scenario_doc(names)
    nodes = [SimNode(n, tmp_path, doc) for n in names]
    config = collector_config(tmp_path)
    for node in nodes:
        enroll(config.ledger, node.node_id, node.key.public)

    async def scenario() -> None:
        async with running_collector(config) as service:
            agents = [n.agent(service.address) for n in nodes]
            stop = asyncio.Event()
            tasks = [asyncio.create_task(a.run(stop)) for a in agents]
            await until(lambda: all(a.stats.acked_sequence >= 5 for a in agents))
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 15)
            assert service.ingestor.stats.rejected == {}
            for a in agents:
                assert a.stats.rejected == {}
                assert a.stats.reports_dropped == 0

    asyncio.run(scenario())
    for node in nodes:
        reports = check_chain(stored(config.ledger, node.node_id), node)
        assert len(reports) >= 5
        last = reports[-1]
        assert last.node_id == node.node_id
        assert len(last.gpus) == 2
        assert {p.job_id for g in last.gpus for p in g.processes} == {"77"}
        assert [j.job_id for j in last.jobs] == ["77"]


def test_an_agent_restarted_mid_run_continues_its_chain_at_the_collector(
    tmp_path: Path,
) -> None:
    (node,) = nodes = [SimNode("node-a", tmp_path, scenario_doc(["node-a"]))]
    config = collector_config(tmp_path)
    enroll(config.ledger, node.node_id, node.key.public)

    async def scenario() -> None:
        async with running_collector(config) as service:
            for round_ in range(2):
                agent = nodes[0].agent(service.address)
                stop = asyncio.Event()
                task = asyncio.create_task(agent.run(stop))
                target = 3 * (round_ + 1)
                await until(lambda a=agent, t=target: a.stats.acked_sequence >= t)  # type: ignore[misc]
                stop.set()
                await asyncio.wait_for(task, 15)
            assert service.ingestor.stats.rejected == {}

    asyncio.run(scenario())
    reports = check_chain(stored(config.ledger, node.node_id), node)
    assert len(reports) >= 6


def test_agent_run_cli_streams_to_a_collector(tmp_path: Path) -> None:
    """``computewatch agent run --backend fake`` in its own process, for a few seconds."""
    node = SimNode("node-a", tmp_path, scenario_doc(["node-a"]))
    scenario_file = tmp_path / "scenario.yaml"
    scenario_file.write_text(yaml.safe_dump(node.doc))
    config = collector_config(tmp_path)
    enroll(config.ledger, node.node_id, node.key.public)

    async def scenario() -> None:
        async with running_collector(config) as service:
            env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")} | {
                "COMPUTEWATCH_AGENT_STATE_DIR": str(node.dir / "state")
            }
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "computewatch.cli",
                "agent",
                "run",
                "--node-id",
                node.node_id,
                "--key",
                str(node.key_path),
                "--collector",
                service.address,
                "--insecure-plaintext",
                "true",
                "--backend",
                "fake",
                "--scenario",
                str(scenario_file),
                "--procfs-root",
                str(node.procfs),
                "--job-metadata-dir",
                str(node.jobs_dir),
                "--boot-id-path",
                str(node.boot_id_path),
                "--interval",
                "0.1",
                "--duration",
                "1.5",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
            assert service.ingestor.stats.rejected == {}

    asyncio.run(scenario())
    reports = check_chain(stored(config.ledger, node.node_id), node)
    assert len(reports) >= 3
    assert {p.job_id for g in reports[-1].gpus for p in g.processes} == {"77"}
