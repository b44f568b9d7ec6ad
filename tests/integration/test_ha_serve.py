"""Issue 12, "Done when": kill -9 of the leading collector while agents stream
and a halt is in force.

Two ``computewatch collector serve`` processes (``bench.ha_cluster``) share
one real PostgreSQL and the same collector key; two real ``computewatch agent
run`` processes (fake NVML, fail-closed leases) stream to whichever leads. An
authority halts both nodes with the CLI, the leader is killed with SIGKILL,
and then: the standby takes over; the halt stays in force (no agent halts
on its own for a lapsed lease: no spurious halt-all); a quorum RESUME, both
approvals given with the CLI after the failover, is obeyed; every report an
agent saw acknowledged is in the ledger exactly once; ``audit subscribe``
before and after the failover and ``audit verify`` check the log end to end,
including a consistency proof from the last checkpoint the old leader signed
to the first the new one signed. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from bench.ha_cluster import CLI, HaCluster
from collector.nodes.registry import enroll
from collector.store.pg_store import PgStore
from protos import dsse
from protos.computewatch.v1 import telemetry_pb2
from protos.keys import PrivateKey, write_private_key, write_public_key
from tests.pg_support import fresh_database

NODES = ("node-a", "node-b")
H100 = "NVIDIA H100 80GB HBM3"


def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def reports(url: str) -> list[telemetry_pb2.NodeReport]:
    """Every report in the ledger, in log order."""
    store = PgStore(url)
    try:
        entries = store.entries(0, store.reload())
    finally:
        store.close()
    out = []
    for e in entries:
        if e.payload_type == dsse.REPORT_TYPE:
            env = dsse.open_envelope(e.data)
            out.append(dsse.parse_message(telemetry_pb2.NodeReport, env.payload))
    return out


def log_size(url: str) -> int:
    store = PgStore(url)
    try:
        return store.reload()
    finally:
        store.close()


def copy_checkpoint_size(copy: Path) -> int:
    """Tree size of the newest checkpoint in the auditor's local copy."""
    conn = sqlite3.connect(copy / "audit.db")
    try:
        (size,) = conn.execute(
            "SELECT size FROM checkpoint ORDER BY timestamp_unix_nanos DESC, id DESC LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    return int(size)


def latest(url: str) -> dict[str, telemetry_pb2.NodeReport]:
    return {r.node_id: r for r in reports(url)}


def test_kill_9_of_the_leader_with_a_halt_in_force(tmp_path: Path, pg_server: str) -> None:
    url = fresh_database(pg_server)
    cluster = HaCluster(tmp_path, url, agent_lease_seconds=6.0)
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(
        yaml.safe_dump(
            {
                "name": "ha",
                "duration_seconds": 86400,
                "interval_seconds": cluster.interval_seconds,
                "nodes": [{"id": n, "gpus": [{"model": H100, "count": 1}]} for n in NODES],
                "jobs": [
                    {
                        "id": "7001",
                        "nodes": list(NODES),
                        "utilization": [[0, 80]],
                        "tensor_fraction": 0.5,
                        "memory_gib": 8,
                    }
                ],
            }
        )
    )
    (tmp_path / "node-keys").mkdir()
    for node in NODES:
        key = PrivateKey.generate()
        write_private_key(key, tmp_path / f"{node}.key")
        write_public_key(key.public, tmp_path / "node-keys" / f"{node}.pub")
        enroll(url, node, key.public)
    agents: dict[str, subprocess.Popen[bytes]] = {}
    trust = [
        "--collector-key", str(tmp_path / "collector.key.pub"),
        "--node-keys", str(tmp_path / "node-keys"),
        *[f"--authority-keys={p.with_suffix('.pub')}" for p in cluster.authority_keys],
    ]  # fmt: skip
    copy = tmp_path / "audit-copy"

    def subscribe(c_address: str) -> None:
        done = cluster.cli(
            "audit", "subscribe", "--collector", c_address, "--key",
            str(tmp_path / "auditor.key"), "--out", str(copy), "--once",
            *cluster.tls_args(), *trust,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

    try:
        a = cluster.start("collector-a")
        cluster.wait_leader(30)  # a alone: it leads
        b = cluster.start("collector-b")
        cluster.wait_up(b, 30)
        assert cluster.leader() is a
        assert cluster.health(b) == "NOT_SERVING"  # readiness: the leader only
        assert cluster.health(b, "computewatch.v1.Status") == "SERVING"
        assert cluster.health(b, "") == "SERVING"  # liveness
        authority = [f"--authority-key={p.with_suffix('.pub')}" for p in cluster.authority_keys]
        for node in NODES:
            with (tmp_path / f"{node}.log").open("ab") as log:
                agents[node] = subprocess.Popen(
                    [
                        *CLI, "agent", "run", "--node-id", node, "--collector", cluster.targets,
                        "--key", str(tmp_path / f"{node}.key"), "--backend", "fake",
                        "--scenario", str(scenario), "--interval", str(cluster.interval_seconds),
                        "--state-dir", str(tmp_path / f"state-{node}"),
                        "--collector-key", str(tmp_path / "collector.key.pub"),
                        *authority, "--quorum", "2", "--fail-mode", "closed",
                        "--lease-grace", "30", "--tls-ca", str(cluster.tls_ca),
                        "--backoff-min", "0.05", "--backoff-max", "0.3",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
        until(
            lambda: (
                all(r.enforcement.lease_valid for r in latest(url).values())
                and set(latest(url)) == set(NODES)
            ),
            30,
            "both agents stream under a valid lease",
        )
        halted = cluster.cli(
            "halt", "--collector", a.address, *cluster.tls_args(), "--scope", "node:node-a",
            "--scope", "node:node-b", "--reason", "HA test",
            "--key", str(cluster.authority_keys[0]),
        )  # fmt: skip
        assert halted.returncode == 0, halted.stdout + halted.stderr
        halt_id = halted.stdout.strip().splitlines()[-1]  # the message, then the id
        until(
            lambda: all(
                halt_id in r.enforcement.active_directive_ids for r in latest(url).values()
            ),
            30,
            "both agents report the halt in force",
        )
        subscribe(a.address)  # the last checkpoint before the failover
        before = copy_checkpoint_size(copy)
        cluster.kill(a)  # kill -9 with the halt in force
        size_at_kill = log_size(url)
        assert before <= size_at_kill
        killed_at = len(reports(url))
        new = cluster.wait_leader(30, other_than=a)
        assert new is b
        until(
            lambda: len(reports(url)) >= killed_at + 4 * len(NODES),
            30,
            "the agents stream to the new leader",
        )
        for r in latest(url).values():  # still halted, by the directive, not by a lapse
            assert halt_id in r.enforcement.active_directive_ids
        for key in cluster.authority_keys[1:]:  # the quorum, after the failover
            approved = cluster.cli(
                "approve", halt_id, "--collector", b.address, *cluster.tls_args(),
                "--key", str(key),
            )  # fmt: skip
            assert approved.returncode == 0, approved.stdout + approved.stderr
        until(
            lambda: all(
                halt_id not in r.enforcement.active_directive_ids for r in latest(url).values()
            ),
            30,
            "both agents obey the RESUME",
        )
        subscribe(b.address)  # consistency from the old leader's checkpoint to the new one's
        assert copy_checkpoint_size(copy) > size_at_kill  # signed by the new leader
        verified = cluster.cli("audit", "verify", str(copy), *trust)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        for proc in agents.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in agents.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        cluster.close()
    seen = reports(url)
    assert not any(r.enforcement.locally_halted for r in seen), "a lease lapsed somewhere"
    stored = [(r.node_id, r.sequence) for r in seen]
    assert len(stored) == len(set(stored))  # nothing twice
    for node in NODES:
        conn = sqlite3.connect(tmp_path / f"state-{node}" / "spool.sqlite3")
        try:
            (acked,) = conn.execute("SELECT acked_sequence FROM chain WHERE id = 1").fetchone()
        finally:
            conn.close()
        assert acked > 0
        assert {(node, s) for s in range(1, acked + 1)} <= set(stored)  # nothing acked lost
    assert os.path.exists(copy)
