"""kill -9 of the leading collector while agents stream at 1 Hz (issue 12).

Two ``computewatch collector serve`` processes (``bench.ha_cluster``: one
PostgreSQL, the same collector key, TLS, leader lease + fencing, exactly what
users run) and ``--agents`` agents in this process (a real ``Spool`` and
``StreamClient`` each, given both addresses, sealing one report a second).
Each round kills the leader with SIGKILL, measures the time until the
standby sequences (the first acknowledgement of a report sealed after the
kill) and until every agent has caught up (its acknowledgements reach what it
had sealed at the kill), then restarts the dead one as the new standby. At
the end every acknowledged report must be in the ledger exactly once, and a
consistency proof from the tree head before each kill to the one after it
must verify.

    python -m bench.bench_agent_failover --agents 200 --kills 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc

from agent.metrics import AgentStats
from agent.spool import Spool
from agent.stream import StreamClient
from bench.common import ReportChain
from bench.ha_cluster import HaCluster
from collector.nodes.registry import enroll
from collector.store.merkle_log import node_pos
from collector.store.pg_store import PgStore
from protos import merkle
from protos.keys import PrivateKey


class Agent:
    def __init__(
        self,
        name: str,
        key: PrivateKey,
        state: Path,
        targets: str,
        credentials: grpc.ChannelCredentials,
    ) -> None:
        self.name = name
        self.chain = ReportChain(name, key, 1, job=f"job-{name}")
        self.spool = Spool(state, node_id=name, keyid=key.keyid, max_unacked=100_000)
        self.stats = AgentStats()
        self.client = StreamClient(
            targets,
            name,
            self.spool,
            self.stats,
            backoff_min_seconds=0.05,
            backoff_max_seconds=0.5,
            key=key,  # answers each stream's challenge (collector.telemetry.binding)
            credentials=credentials,
        )

    def seal(self) -> None:
        seq, _ = self.spool.next_link()
        self.spool.append(seq, self.chain.next())
        self.client.notify()


async def _until(cond: object, timeout: float) -> float:
    """Seconds until ``cond()`` holds (bounded); raises on timeout."""
    assert callable(cond)
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise RuntimeError("timed out waiting")
        await asyncio.sleep(0.01)
    return time.monotonic()


def _head(store: PgStore) -> tuple[int, bytes]:
    return store.reload(), store.root()


def _consistent(store: PgStore, old: tuple[int, bytes], new: tuple[int, bytes]) -> bool:
    def subtree(level: int, index: int) -> bytes:
        h = store.merkle_node(node_pos(level, index))
        assert h is not None
        return h

    try:
        proof = merkle.consistency_proof(old[0], new[0], subtree)
        merkle.verify_consistency(old[0], new[0], proof, old[1], new[1])
    except Exception:
        return False
    return True


async def run(url: str, tmp: Path, args: argparse.Namespace) -> dict[str, object]:
    keys = {f"gpu-{i:04d}": PrivateKey.generate() for i in range(args.agents)}
    for name, key in keys.items():
        enroll(url, name, key.public)
    cluster = HaCluster(
        tmp / "collectors",
        url,
        leader_lease_seconds=args.lease,
        renew_seconds=args.renew,
        interval_seconds=1.0,
        tick_seconds=0.5,
        checkpoint_interval_seconds=5.0,
    )
    names = list(cluster.names)
    cluster.start(names[0])
    leader = cluster.wait_leader(60)
    standby = cluster.start(names[1])
    cluster.wait_up(standby, 60)
    credentials = grpc.ssl_channel_credentials(cluster.tls_ca.read_bytes())
    agents = [Agent(n, k, tmp / n, cluster.targets, credentials) for n, k in keys.items()]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(a.client.run(stop)) for a in agents]

    async def sealer(a: Agent, offset: float) -> None:
        await asyncio.sleep(offset)
        while not stop.is_set():
            a.seal()
            await asyncio.sleep(1.0)

    sealers = [asyncio.create_task(sealer(a, i / len(agents))) for i, a in enumerate(agents)]
    observer = PgStore(url)
    sequencing: list[float] = []
    caught_up: list[float] = []
    consistent = 0
    try:
        await _until(lambda: all(a.spool.acked_sequence >= 2 for a in agents), 120)
        for _ in range(args.kills):
            await asyncio.sleep(args.settle)
            before = _head(observer)
            sealed = [a.spool.last_sequence for a in agents]
            killed_at = time.monotonic()
            cluster.kill(leader)  # SIGKILL
            pairs = list(zip(agents, sealed, strict=True))
            first = await _until(lambda p=pairs: any(a.spool.acked_sequence > s for a, s in p), 60)
            sequencing.append(first - killed_at)
            done = await _until(lambda p=pairs: all(a.spool.acked_sequence >= s for a, s in p), 120)
            caught_up.append(done - killed_at)
            consistent += _consistent(observer, before, _head(observer))
            dead, leader = leader, await asyncio.to_thread(cluster.wait_leader, 60)
            cluster.start(dead.name)  # back as the standby
            await asyncio.to_thread(cluster.wait_up, dead, 60)
        await asyncio.sleep(2)
    finally:
        stop.set()
        for t in sealers:
            t.cancel()
        await asyncio.gather(*sealers, return_exceptions=True)
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        cluster.close()
    size = observer.reload()
    # Reports only: directives, leases and key events carry no (node, sequence).
    stored = Counter(
        (e.node_id, e.sequence) for e in observer.entries(0, size) if e.sequence is not None
    )
    observer.close()
    acked = sum(a.spool.acked_sequence for a in agents)
    lost = sum(
        1 for a in agents for s in range(1, a.spool.acked_sequence + 1) if stored[(a.name, s)] != 1
    )
    duplicated = sum(1 for n in stored.values() if n > 1)
    for a in agents:
        a.spool.close()

    def pct(xs: list[float], q: float) -> float:
        ordered = sorted(xs)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "agents": args.agents,
        "kills": len(caught_up),
        "standby_sequencing_seconds_p50": round(statistics.median(sequencing), 3),
        "standby_sequencing_seconds_p99": pct(sequencing, 0.99),
        "all_agents_caught_up_seconds_p50": round(statistics.median(caught_up), 3),
        "all_agents_caught_up_seconds_p99": pct(caught_up, 0.99),
        "reports_acknowledged": acked,
        "acknowledged_then_lost": lost,
        "stored_twice": duplicated,
        "consistency_proofs_verified": f"{consistent}/{len(caught_up)}",
        "lease_seconds": args.lease,
        "renew_seconds": args.renew,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=200)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--lease", type=float, default=1.0)
    p.add_argument("--renew", type=float, default=0.2)
    p.add_argument("--settle", type=float, default=2.0, help="seconds between kills")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    from bench.pg_temp import create_database, temp_server

    with temp_server() as server, tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(create_database(server, "agents"), Path(tmp), args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
