"""Crash loop: kill -9 the collector and the agent at random moments, then
check that nothing acknowledged was lost and nothing was stored twice.

Both run as real processes (``computewatch collector serve`` from a TOML
file, ``computewatch agent run --backend fake``), each restarted after it is
killed. Every iteration waits a random moment, kills the collector, the agent
or both with SIGKILL, and checks at once (everything dead or not) that every
report the agent's spool records as acknowledged (``chain.acked_sequence``,
written when the ack arrives) is in the ledger exactly once. At the end both
run until the agent has nothing unacknowledged, and the whole record is
checked: every sealed report (1..the spool's chain head) in the ledger
exactly once, the chain contiguous and linked (digests, signatures), no
evidence rows, and ``computewatch audit subscribe`` + ``audit verify`` ok.

    python -m bench.crash_loop --iterations 50 [--seed 1] [--out FILE]

Prints iterations survived and reports lost (must be 0). Bounded: each wait
has a timeout, each child is killed on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from bench.common import BenchError
from collector.nodes.registry import enroll
from computewatch.tlsca import init_site
from protos import dsse
from protos.computewatch.v1 import telemetry_pb2
from protos.keys import PrivateKey, write_private_key, write_public_key

NODE = "crash-node"
H100 = "NVIDIA H100 80GB HBM3"
INTERVAL = 0.1
_CLI = [sys.executable, "-m", "computewatch.cli", "--log-level", "warning"]


@dataclass
class CrashResult:
    iterations: int
    survived: int = 0
    collector_kills: int = 0
    agent_kills: int = 0
    reports_sealed: int = 0
    reports_acked: int = 0
    reports_lost: int = 0
    duplicates: int = 0
    chain_breaks: int = 0
    evidence_rows: int = 0
    audit_ok: bool = False
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read(path: Path, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Read another process's SQLite file (WAL: readers never block its writer)."""
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


class Cluster:
    """One collector and one agent, as processes, in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ledger = root / "ledger.db"
        self.state = root / "agent"
        self.spool = self.state / "spool.sqlite3"
        self.key = PrivateKey.generate()
        write_private_key(self.key, root / "node.key")
        write_public_key(self.key.public, root / "node.key.pub")
        collector_key = PrivateKey.generate()
        write_private_key(collector_key, root / "collector.key")
        write_public_key(collector_key.public, root / "collector.key.pub")
        auditor = PrivateKey.generate()
        write_private_key(auditor, root / "auditor.key")
        write_public_key(auditor.public, root / "auditor.pub")
        enroll(self.ledger, NODE, self.key.public)
        site = init_site(root / "tls")  # the shipped defaults: TLS and tokens
        self.tls_ca = str(site["ca"].cert)
        (root / "collector.toml").write_text(
            f'[collector]\nledger = "{self.ledger}"\nkey = "{root / "collector.key"}"\n'
            f'listen = "{self.address}"\ninterval_seconds = {INTERVAL}\ntick_seconds = 0.2\n'
            f"checkpoint_interval_seconds = 0.5\n"
            f'auditor_keys = ["{root / "auditor.pub"}"]\n'
            f'tls_cert = "{site["collector"].cert}"\ntls_key = "{site["collector"].key}"\n'
        )
        (root / "scenario.yaml").write_text(
            yaml.safe_dump(
                {
                    "name": "crash-loop",
                    "duration_seconds": 86400,
                    "interval_seconds": INTERVAL,
                    "nodes": [{"id": NODE, "gpus": [{"model": H100, "count": 2}]}],
                    "jobs": [
                        {
                            "id": "9001",
                            "nodes": [NODE],
                            "utilization": [[0, 80]],
                            "tensor_fraction": 0.5,
                            "memory_gib": 8,
                        }
                    ],
                }
            )
        )
        self.collector: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = (self.root / log_name).open("ab")
        try:
            return subprocess.Popen(
                [*_CLI, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "COMPUTEWATCH_AGENT_NODE_ID": NODE},
            )
        finally:
            log.close()

    def start(self) -> None:
        if self.collector is None or self.collector.poll() is not None:
            self.collector = self._spawn(
                ["collector", "serve", "--config", str(self.root / "collector.toml")],
                "collector.log",
            )
        if self.agent is None or self.agent.poll() is not None:
            self.agent = self._spawn(
                [
                    "agent", "run", "--collector", self.address,
                    "--key", str(self.root / "node.key"), "--backend", "fake",
                    "--scenario", str(self.root / "scenario.yaml"),
                    "--interval", str(INTERVAL), "--state-dir", str(self.state),
                    "--backoff-min", "0.05", "--backoff-max", "0.3", "--tls-ca", self.tls_ca,
                ],
                "agent.log",
            )  # fmt: skip

    def serving(self) -> bool:
        with socket.socket() as s:
            s.settimeout(1.0)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def kill_collector(self) -> None:
        self._kill(self.collector)

    def kill_agent(self) -> None:
        self._kill(self.agent)

    def stop(self) -> None:
        """Graceful: SIGTERM, agent first (it drains its acks)."""
        self._kill(self.agent, signal.SIGTERM)
        self._kill(self.collector, signal.SIGTERM)

    def close(self) -> None:
        self.kill_agent()
        self.kill_collector()

    # --- what is on disk ------------------------------------------------------------
    def spool_head(self) -> tuple[int, int]:
        """(last sealed, last acknowledged) sequence, from the agent's spool file."""
        rows = _read(self.spool, "SELECT last_sequence, acked_sequence FROM chain WHERE id = 1")
        if not rows:
            return 0, 0
        last, acked = rows[0]
        return int(last), int(acked)  # type: ignore[call-overload]

    def spool_pending(self) -> set[int]:
        """Sequences still in the agent's spool (sealed, not yet acknowledged: resent later)."""
        rows = _read(self.spool, "SELECT sequence FROM pending")
        return {int(r[0]) for r in rows}  # type: ignore[call-overload]

    def stored(self) -> list[tuple[int, bytes]]:
        rows = _read(
            self.ledger,
            "SELECT sequence, data FROM log WHERE node_id = ? ORDER BY idx",
            (NODE,),
        )
        return [(int(s), bytes(d)) for s, d in rows]  # type: ignore[call-overload]

    def evidence(self) -> int:
        rows = _read(self.ledger, "SELECT COUNT(*) FROM evidence")
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    def audit(self) -> tuple[bool, str]:
        """``audit subscribe --once`` from the running collector, then ``audit verify``."""
        trust = [
            "--collector-key", str(self.root / "collector.key.pub"),
            "--node-keys", str(self.root / "node.key.pub"),
        ]  # fmt: skip
        copy = self.root / "audit-copy"
        out = ""
        for args in (
            ["audit", "subscribe", "--collector", self.address, "--key",
             str(self.root / "auditor.key"), "--out", str(copy), *trust, "--once",
             "--tls-ca", self.tls_ca],
            ["audit", "verify", str(copy), *trust],
        ):  # fmt: skip
            done = subprocess.run(
                [*_CLI, *args], capture_output=True, text=True, timeout=120, check=False
            )
            out += done.stdout + done.stderr
            if done.returncode != 0:
                return False, out
        return True, out


def _lost_acked(cluster: Cluster) -> tuple[int, int]:
    """(acknowledged reports missing from the ledger, sequences stored twice)."""
    _, acked = cluster.spool_head()
    seqs = [s for s, _ in cluster.stored()]
    present = set(seqs)
    return sum(1 for s in range(1, acked + 1) if s not in present), len(seqs) - len(present)


def _check_chain(cluster: Cluster, result: CrashResult) -> None:
    rows = cluster.stored()
    previous = bytes(32)
    trusted = {cluster.key.keyid: cluster.key.public}
    for expected, (seq, data) in enumerate(rows, start=1):
        report = dsse.verify(data, trusted, expected_type=dsse.REPORT_TYPE).parse(
            telemetry_pb2.NodeReport
        )
        if seq != expected or report.sequence != seq or report.previous_digest != previous:
            result.chain_breaks += 1
            result.problems.append(f"chain breaks at ledger row {expected} (sequence {seq})")
        previous = hashlib.sha256(data).digest()


def _up(cluster: Cluster, before: int) -> bool:
    return cluster.serving() and cluster.spool_head()[0] > before


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def run(
    iterations: int,
    *,
    seed: int = 1,
    min_wait: float = 0.0,
    max_wait: float = 1.5,
    settle_seconds: float = 90.0,
    root: Path | None = None,
) -> CrashResult:
    """Kill and restart ``iterations`` times; raise BenchError if anything was lost."""
    rng = random.Random(seed)  # moments to kill, not cryptography
    result = CrashResult(iterations)
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crash-")))
        cluster = Cluster(root)
        stack.callback(cluster.close)
        for _ in range(iterations):
            before = cluster.spool_head()[0]
            cluster.start()
            # Both up (the port answers, the agent seals again), then a random moment.
            if not _wait(functools.partial(_up, cluster, before), 60):
                result.problems.append("the processes did not come up within 60 s")
            time.sleep(rng.uniform(min_wait, max_wait))
            victim = rng.choice(("collector", "agent", "both"))
            if victim in ("collector", "both"):
                cluster.kill_collector()
                result.collector_kills += 1
            if victim in ("agent", "both"):
                cluster.kill_agent()
                result.agent_kills += 1
            lost, dup = _lost_acked(cluster)
            if lost or dup:
                result.problems.append(f"after a kill: {lost} acked reports lost, {dup} twice")
                result.reports_lost = max(result.reports_lost, lost)
                result.duplicates = max(result.duplicates, dup)
            else:
                result.survived += 1
        cluster.start()
        # The audit below needs the collector listening, not only a drained agent.
        if not _wait(cluster.serving, 60):
            result.problems.append("the collector did not come back within 60 s")

        def drained() -> bool:
            last, acked = cluster.spool_head()
            return last > 0 and acked == last

        if not _wait(drained, settle_seconds):
            result.problems.append(f"the agent did not drain its spool: {cluster.spool_head()}")
        cluster.kill_agent()  # nothing left in flight: a kill here loses nothing either
        last, acked = cluster.spool_head()
        seqs = [s for s, _ in cluster.stored()]
        result.reports_sealed, result.reports_acked = last, acked
        # A report sealed between the drain check and the kill is still in the spool: it is
        # resent on the next start, not lost. Lost is sealed, not stored and not spooled.
        missing = sorted(set(range(1, last + 1)) - set(seqs) - cluster.spool_pending())
        result.reports_lost = max(result.reports_lost, len(missing))
        result.duplicates = max(result.duplicates, len(seqs) - len(set(seqs)))
        if missing:
            result.problems.append(f"sealed but not stored: {missing[:10]}")
        _check_chain(cluster, result)
        result.evidence_rows = cluster.evidence()
        result.audit_ok, audit_out = cluster.audit()
        if not result.audit_ok:
            result.problems.append(f"audit failed: {audit_out[-2000:]}")
        cluster.stop()
    result.seconds = time.monotonic() - start
    return result


def check(result: CrashResult) -> None:
    """BenchError unless nothing was lost, duplicated, broken or disputed."""
    bad = (
        result.reports_lost
        or result.duplicates
        or result.chain_breaks
        or result.evidence_rows
        or not result.audit_ok
        or result.survived != result.iterations
        or result.reports_acked < 1
    )
    if bad:
        raise BenchError("crash loop failed: " + "; ".join(result.problems or ["see counts"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args.iterations, seed=args.seed)
    doc = result.to_dict()
    print(
        f"iterations survived: {result.survived}/{result.iterations}"
        f" (collector killed {result.collector_kills}x, agent {result.agent_kills}x)\n"
        f"reports sealed {result.reports_sealed}, acknowledged {result.reports_acked},"
        f" lost {result.reports_lost}, stored twice {result.duplicates},"
        f" chain breaks {result.chain_breaks}, evidence rows {result.evidence_rows},"
        f" audit verify {'ok' if result.audit_ok else 'FAILED'}; {result.seconds:.0f} s"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    check(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
