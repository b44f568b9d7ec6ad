"""Reports checked in worker processes (``ingest_processes``, issue 13): every
accepted report is in the ledger exactly once, a worker killed mid-run costs
nothing acknowledged, and the registry, not a worker's copy of the keys,
decides which keys are trusted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from collector.nodes.registry import enroll
from protos.keys import PrivateKey
from tests.integration.test_agent_stream import ledger_rows, until
from tests.support import (
    Node,
    StreamClient,
    collector_config,
    enroll_nodes,
    gpu,
    running_collector,
)


async def _send(client: StreamClient, node: Node, count: int) -> None:
    for _ in range(count):
        await client.send(node.next([gpu(0, job=f"job-{node.node_id}")]))


def test_reports_from_several_nodes_are_each_stored_once(tmp_path: Path) -> None:
    config = collector_config(tmp_path, ingest_processes=2)
    nodes = enroll_nodes(config.ledger, [f"node-{i}" for i in range(3)])

    async def scenario() -> None:
        async with running_collector(config) as service:
            checks = service.ingestor.checks
            assert checks is not None
            checks.inline_below = 0  # every envelope to a worker, however few wait
            clients = [StreamClient(service.address) for _ in nodes]
            await asyncio.gather(*(_send(c, n, 30) for c, n in zip(clients, nodes, strict=True)))
            for c in clients:
                await c.ack_for(30)
            assert checks.batched == 90  # every one went through a worker
            assert checks.fallbacks == 0
            # A lone envelope with the pool idle is checked on the loop instead.
            checks.inline_below = 4
            await _send(clients[0], nodes[0], 1)
            await clients[0].ack_for(31)
            assert (checks.inline, checks.batched) == (1, 90)
            assert service.ingestor.stats.accepted == 91
            for c in clients:
                await c.close()
        rows = ledger_rows(config.ledger)
        assert len(rows) == len(set(rows)) == 91
        expected = [(n.node_id, s) for n in nodes for s in range(1, 31)] + [("node-0", 31)]
        assert sorted(rows) == sorted(expected)

    asyncio.run(scenario())


def test_a_killed_worker_loses_nothing_and_the_collector_keeps_accepting(
    tmp_path: Path,
) -> None:
    config = collector_config(tmp_path, ingest_processes=2)
    nodes = enroll_nodes(config.ledger, ["node-a", "node-b"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            checks = service.ingestor.checks
            assert checks is not None
            checks.inline_below = 0
            clients = [StreamClient(service.address) for _ in nodes]
            await asyncio.gather(*(_send(c, n, 5) for c, n in zip(clients, nodes, strict=True)))
            for c in clients:
                await c.ack_for(5)
            pids = checks.worker_pids()
            assert pids
            # Kill a worker while the next reports are on their way.
            sending = asyncio.gather(
                *(_send(c, n, 40) for c, n in zip(clients, nodes, strict=True))
            )
            os.kill(pids[0], signal.SIGKILL)
            await sending
            for c in clients:
                await c.ack_for(45, timeout=30)
            await until(lambda: checks.restarts >= 1)
            # After the pause, a fresh pool checks the next reports again.
            await asyncio.sleep(1.2)
            await asyncio.gather(*(_send(c, n, 5) for c, n in zip(clients, nodes, strict=True)))
            for c in clients:
                await c.ack_for(50, timeout=30)
            assert set(checks.worker_pids()).isdisjoint(pids[:1])
            assert service.ingestor.stats.rejected == {}
            assert service.ingestor.stats.accepted == 100
            for c in clients:
                await c.close()
        rows = ledger_rows(config.ledger)
        assert len(rows) == len(set(rows)) == 100
        assert sorted(rows) == sorted((n.node_id, s) for n in nodes for s in range(1, 51))

    asyncio.run(scenario())


def test_a_key_enrolled_after_the_workers_started_is_taught_to_them(tmp_path: Path) -> None:
    config = collector_config(tmp_path, ingest_processes=1)
    (first,) = enroll_nodes(config.ledger, ["node-a"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            checks = service.ingestor.checks
            assert checks is not None
            checks.inline_below = 0
            client = StreamClient(service.address)
            await _send(client, first, 2)
            await client.ack_for(2)  # the workers run, with node-a's key only
            key = PrivateKey.generate()
            enroll(config.ledger, "node-b", key.public)
            late = Node("node-b", key)
            await until(lambda: service.registry.by_keyid(key.keyid) is not None)
            other = StreamClient(service.address)
            await _send(other, late, 1)
            await other.ack_for(1)  # checked here: the worker lacked the key
            taught = checks.rechecked
            assert taught >= 1
            await _send(other, late, 10)
            await other.ack_for(11)
            assert checks.rechecked == taught  # the worker has it now
            assert service.ingestor.stats.accepted == 13
            await client.close()
            await other.close()

    asyncio.run(scenario())


_OWNER = """
import json, os, time
from multiprocessing import forkserver
from collector.telemetry.ingest_pool import ProcessChecks

checks = ProcessChecks(2, list, max_bytes=1 << 20)
pool = checks._start()
for f in [pool.submit(os.getpid) for _ in range(8)]:
    f.result(timeout=60)
server = forkserver._forkserver._forkserver_pid
print(json.dumps({"workers": checks.worker_pids(), "forkserver": server}), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_bytes().rsplit(b")", 1)[-1].split()[0] == b"Z")


def test_the_workers_and_fork_server_end_with_a_collector_killed_by_sigkill() -> None:
    """kill -9 of the collector leaves no worker (nor its fork server) behind:
    a pool's worker would otherwise wait forever on its call queue."""
    with subprocess.Popen(
        [sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True
    ) as owner:
        try:
            assert owner.stdout is not None
            started = json.loads(owner.stdout.readline())
            children = [*started["workers"], started["forkserver"]]
            assert started["workers"]
            assert all(_alive(p) for p in children)
        finally:
            owner.kill()
            owner.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in children if _alive(p)] == []
