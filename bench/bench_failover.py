"""Failover of the sequencing collector on PostgreSQL, and PostgreSQL's ingest
rate next to SQLite's (issue 12's figures; measured, never asserted in tests).

Failover: two candidate processes share one PostgreSQL (a temporary server
from Debian's binaries). Each runs the leader lease (``LeaderLease``) and,
while it leads, sequences a stream at ``--rate`` entries/s (the load of
``--rate`` agents at 1 Hz) through ``PgStore.append_batch`` with its fencing
term, printing every committed batch (the acknowledgement). The driver kills
the leader with SIGKILL at a random moment, measures the time until the
standby's first committed batch, starts a fresh standby, and repeats. At the
end it checks that every acknowledged entry is in the log exactly once and
that a consistency proof from the tree head before each kill to the one after
it verifies. What it does not measure yet: agents reconnecting over gRPC (the
collector does not run on PostgreSQL end to end yet; see docs/architecture.md).

    python -m bench.bench_failover --kills 10 --rate 200 --lease 1.0 --renew 0.2
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from collector.ledger_store import Entry
from collector.merkle_log import node_pos
from collector.store.interface import LedgerStore
from collector.store.leader import LeaderLease
from collector.store.pg_store import PgStore
from collector.store.sqlite_store import SqliteStore
from protos import merkle
from protos.errors import FencedError

TICK = 0.05


def candidate(url: str, name: str, rate: int, lease: float, renew: float) -> None:
    """One collector candidate: lead when it can, sequence while leading."""
    store = PgStore(url)
    elected = LeaderLease(url, name, lease_seconds=lease)
    term: int | None = None
    last_renew = 0.0
    n = 0
    per_tick = max(1, round(rate * TICK))
    while True:
        now = time.monotonic()
        if now - last_renew >= renew:
            last_renew = now
            try:
                got = elected.try_acquire()
            except Exception:
                got = None
            if got is not None and got != term:
                store.reload()
                print(f"LEAD {got}", flush=True)
            term = got
        if term is not None:
            first = store.size
            batch = [Entry(f"{name}/{n + i}".encode(), "bench") for i in range(per_tick)]
            try:
                store.append_batch(first, batch, time.time_ns(), term=term)
            except FencedError:
                term = None
            except Exception:
                store.reload()
            else:
                print(f"ACK {first} {per_tick} {name} {n}", flush=True)
                n += per_tick
        time.sleep(TICK)


@dataclass
class Candidate:
    name: str
    proc: subprocess.Popen[str]
    lines: queue.Queue[tuple[float, str]] = field(default_factory=queue.Queue)
    pump: threading.Thread | None = None

    def stop(self) -> None:
        """Kill (if still running), reap, and close the pipe."""
        self.proc.kill()
        self.proc.wait(10)
        if self.pump is not None:
            self.pump.join(10)


def _spawn(url: str, name: str, args: argparse.Namespace) -> Candidate:
    cmd = [sys.executable, "-m", "bench.bench_failover", "--candidate", name, "--url", url]
    cmd += ["--rate", str(args.rate), "--lease", str(args.lease), "--renew", str(args.renew)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    c = Candidate(name, proc)

    def pump() -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                c.lines.put((time.monotonic(), line.strip()))

    c.pump = threading.Thread(target=pump, daemon=True)
    c.pump.start()
    return c


def _wait_for(c: Candidate, word: str, acks: dict[int, bytes], timeout: float) -> float:
    """Read ``c``'s lines until one starts with ``word``; the time it came."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"{c.name}: no {word} within {timeout} s")
        try:
            at, line = c.lines.get(timeout=left)
        except queue.Empty:
            continue
        _record(line, acks)
        if line.startswith(word):
            return at


def _record(line: str, acks: dict[int, bytes]) -> None:
    parts = line.split()
    if parts and parts[0] == "ACK":
        first, count, name, n = int(parts[1]), int(parts[2]), parts[3], int(parts[4])
        for i in range(count):
            acks[first + i] = f"{name}/{n + i}".encode()


def _drain(c: Candidate, acks: dict[int, bytes]) -> None:
    while True:
        try:
            _, line = c.lines.get_nowait()
        except queue.Empty:
            return
        _record(line, acks)


def _consistent(store: LedgerStore, old: tuple[int, bytes], new: tuple[int, bytes]) -> bool:
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


def failover(url: str, args: argparse.Namespace) -> dict[str, object]:
    rng = random.Random(args.seed)
    observer = PgStore(url)
    acks: dict[int, bytes] = {}
    leader = _spawn(url, "c0", args)
    _wait_for(leader, "LEAD", acks, 30)
    standby = _spawn(url, "c1", args)
    spawned = 2
    times: list[float] = []
    consistent = 0
    try:
        for _ in range(args.kills):
            for _ in range(3):
                _wait_for(leader, "ACK", acks, 30)
            time.sleep(rng.uniform(0.1, 0.5))
            _drain(leader, acks)
            before = (observer.reload(), observer.root())
            killed_at = time.monotonic()
            os.kill(leader.proc.pid, signal.SIGKILL)
            leader.stop()
            _drain(leader, acks)  # acknowledgements printed before the kill
            _wait_for(standby, "LEAD", acks, 30)
            sequencing_at = _wait_for(standby, "ACK", acks, 30)
            times.append(sequencing_at - killed_at)
            after = (observer.reload(), observer.root())
            consistent += _consistent(observer, before, after)
            leader, standby = standby, _spawn(url, f"c{spawned}", args)
            spawned += 1
    finally:
        for c in (leader, standby):
            c.stop()
            _drain(c, acks)
    size = observer.reload()
    stored = {e.index: e.data for e in observer.entries(0, size)}
    lost = sum(1 for idx, data in acks.items() if stored.get(idx) != data)
    observer.close()
    ordered = sorted(times)
    return {
        "kills": len(times),
        "failover_seconds_p50": statistics.median(ordered),
        "failover_seconds_p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "failover_seconds_max": ordered[-1],
        "acknowledged": len(acks),
        "acknowledged_then_lost": lost,
        "entries_in_log": size,
        "consistency_proofs_verified": f"{consistent}/{len(times)}",
        "lease_seconds": args.lease,
        "renew_seconds": args.renew,
        "rate_entries_per_second": args.rate,
    }


def ingest_rate(store: LedgerStore, reports: int, batch: int) -> float:
    """Reports/s through ``append_batch`` (log, chain and tree rows, one commit per batch)."""
    payload = os.urandom(900)
    start = time.perf_counter()
    for first in range(0, reports, batch):
        entries = [
            Entry(
                payload + i.to_bytes(8, "big"),
                "bench",
                f"n{i % 64}",
                f"k{i % 64}",
                i // 64 + 1,
                i.to_bytes(32, "big"),
            )
            for i in range(first, min(reports, first + batch))
        ]
        store.append_batch(first, entries, time.time_ns(), term=1)
    return reports / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--rate", type=int, default=200)
    p.add_argument("--lease", type=float, default=1.0)
    p.add_argument("--renew", type=float, default=0.2)
    p.add_argument("--reports", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path)
    p.add_argument("--candidate", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.candidate:
        candidate(args.url, args.candidate, args.rate, args.lease, args.renew)
        return
    from bench.pg_temp import create_database, temp_server

    with temp_server() as server:
        result: dict[str, object] = {"failover": failover(create_database(server, "fo"), args)}
        pg = PgStore(create_database(server, "ingest"))
        with tempfile.TemporaryDirectory() as tmp:
            lite = SqliteStore(Path(tmp) / "ledger.db")
            sqlite_rate = ingest_rate(lite, args.reports, args.batch)
            lite.close()
        with psycopg_leader(pg.url):
            pg_rate = ingest_rate(pg, args.reports, args.batch)
        pg.close()
    result["ingest"] = {
        "reports": args.reports,
        "batch": args.batch,
        "sqlite_reports_per_second": round(sqlite_rate),
        "postgresql_reports_per_second": round(pg_rate),
        "postgresql_to_sqlite": round(pg_rate / sqlite_rate, 3),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")


class psycopg_leader:  # noqa: N801 - a context manager used like a function
    """Hold term 1 of the ingest database's lease, so the writes pay for the fence."""

    def __init__(self, url: str) -> None:
        self._lease = LeaderLease(url, "ingest", lease_seconds=3600)

    def __enter__(self) -> None:
        self._lease.try_acquire()

    def __exit__(self, *exc: object) -> None:
        self._lease.close()


if __name__ == "__main__":
    main()
