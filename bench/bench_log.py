"""The public record's figures: log appends/s with checkpointing, proof time at
1M entries, and how fast ``audit verify`` re-checks a copy.

1. Appends: pre-sealed ~1 KB report envelopes written the way the ledger does
   (a ``log`` row and the Merkle nodes in one WAL transaction, synchronous=FULL,
   then ``committed()``), in batches, with the Checkpointer consulted after
   every batch (it signs at most once per ``--min-interval``, and the
   "every batch" variant signs a checkpoint after each commit).
2. Proofs: a tree of ``--proof-entries`` leaves on disk; the time of inclusion
   and consistency proofs at random indices, from a cold read connection.
3. Verify: a regulator's copy of ``--verify-entries`` chained, signed reports
   from 100 nodes and its checkpoint, re-checked by ``verify_store`` (every
   signature, chain and root) with ``--threads`` threads.

Figures are printed as JSON; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from collector.store.checkpoints import Checkpointer
from collector.store.merkle_log import MerkleLog
from collector.store.sql import open_db
from computewatch.audit.entries import EntryChecker
from computewatch.audit.store import FollowState, LocalStore
from computewatch.audit.trust import Trust
from computewatch.audit.verify import verify_store
from protos import checkpoint as cpmod
from protos import dsse, merkle
from protos.computewatch.v1 import telemetry_pb2
from protos.keys import PrivateKey

ORIGIN = "bench.computewatch/log"
LOG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, data BLOB NOT NULL,"
    " payload_type TEXT NOT NULL, node_id TEXT, keyid TEXT, sequence INTEGER,"
    " received_unix_nanos INTEGER NOT NULL)"
)


def _report(node: str, seq: int, previous: bytes, gpus: int = 8) -> telemetry_pb2.NodeReport:
    r = telemetry_pb2.NodeReport(
        node_id=node,
        boot_id="bench",
        sequence=seq,
        previous_digest=previous,
        sample_unix_nanos=time.time_ns(),
        interval_seconds=1.0,
        agent_version="bench",
    )
    for i in range(gpus):
        g = r.gpus.add(uuid=f"GPU-{node}-{i}", index=i, product_name="NVIDIA H100 80GB HBM3")
        g.utilization_gpu_percent = 90.0
        g.power_watts = 650.0
        g.processes.add(pid=1000 + i, job_id="job-1", attribution="slurm")
    return r


def _connect(path: Path, *, with_log: bool = True) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    if with_log:
        conn.execute(LOG_SCHEMA)
    return conn


def bench_appends(
    workdir: Path, entries: int, batch: int, min_interval: float, every_batch: bool
) -> dict[str, object]:
    key = PrivateKey.generate()
    pool = [dsse.seal(_report("n0", i + 1, bytes(32)), key) for i in range(512)]
    conn = _connect(workdir / f"append-{batch}-{every_batch}.db")
    tree = MerkleLog(conn)
    store = open_db(workdir / f"append-{batch}-{every_batch}.db")
    cps = Checkpointer(
        tree, key, ORIGIN, store, interval_seconds=10.0, min_interval_seconds=min_interval
    )
    signed = 0
    start = time.perf_counter()
    done = 0
    while done < entries:
        n = min(batch, entries - done)
        datas = [pool[(done + i) % len(pool)] for i in range(n)]
        now = time.time_ns()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO log(idx, data, payload_type, received_unix_nanos) VALUES (?, ?, ?, ?)",
            [(done + i, d, dsse.REPORT_TYPE, now) for i, d in enumerate(datas)],
        )
        tree.append_leaves(conn, done, datas)
        conn.execute("COMMIT")
        tree.committed()
        done += n
        if every_batch:
            cps.sign_now()
            signed += 1
        elif cps.maybe_checkpoint() is not None:
            signed += 1
    elapsed = time.perf_counter() - start
    tree.close()
    conn.close()
    store.close()
    return {
        "entries": entries,
        "batch": batch,
        "checkpoint": "every batch" if every_batch else f"at most every {min_interval} s",
        "checkpoints_signed": signed,
        "seconds": round(elapsed, 3),
        "entries_per_second": round(entries / elapsed),
        "envelope_bytes": len(pool[0]),
    }


def _timed(fn: Callable[[], object], samples: int) -> dict[str, float]:
    times = []
    for _ in range(samples):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e6)
    times.sort()
    return {
        "median_us": round(statistics.median(times), 1),
        "p99_us": round(times[int(len(times) * 0.99) - 1], 1),
    }


def bench_proofs(workdir: Path, entries: int, samples: int) -> dict[str, object]:
    path = workdir / "proofs.db"
    conn = _connect(path, with_log=False)  # the tree alone
    tree = MerkleLog(conn)
    t = time.perf_counter()
    step = 20_000
    for first in range(0, entries, step):
        n = min(step, entries - first)
        conn.execute("BEGIN IMMEDIATE")
        tree.append_leaves(conn, first, [b"entry %d" % (first + i) for i in range(n)])
        conn.execute("COMMIT")
        tree.committed()
    build = time.perf_counter() - t
    size, root = tree.snapshot()
    tree.close()
    conn.close()
    reader = MerkleLog(sqlite3.connect(path, isolation_level=None))  # a cold instance
    rng = random.Random(1)

    def inclusion() -> None:
        i = rng.randrange(size)
        proof = reader.inclusion_proof(i, size)
        merkle.verify_inclusion(reader.leaf_hash(i), i, size, proof, root)

    def consistency() -> None:
        old = rng.randrange(1, size)
        reader.consistency_proof(old, size)

    inc = _timed(inclusion, samples)
    con = _timed(consistency, samples)
    reader.close()
    return {
        "entries": size,
        "tree_build_seconds": round(build, 2),
        "tree_file_bytes": path.stat().st_size + Path(f"{path}-wal").stat().st_size
        if Path(f"{path}-wal").exists()
        else path.stat().st_size,
        "inclusion_proof_and_verify": inc,
        "consistency_proof": con,
    }


def _build_copy(directory: Path, entries: int, nodes: int) -> Trust:
    keys = [PrivateKey.generate() for _ in range(nodes)]
    collector = PrivateKey.generate()
    store = LocalStore(directory)
    checker = EntryChecker(Trust(collector.public, {k.keyid: k.public for k in keys}))
    frontier = merkle.Frontier()
    previous = [bytes(32)] * nodes
    seqs = [0] * nodes
    chunk: list[bytes] = []
    first = 0
    for i in range(entries):
        n = i % nodes
        seqs[n] += 1
        payload = _report(f"node-{n}", seqs[n], previous[n]).SerializeToString()
        data = dsse.seal_payload(dsse.REPORT_TYPE, payload, keys[n])
        previous[n] = dsse.digest(data)
        chunk.append(data)
        frontier.append(merkle.leaf_hash(data))
        # The chain heads the follower would have saved (the bench signed it: no need
        # to verify here; verify_store below checks everything from scratch).
        checker.advance(i, dsse.Verified(dsse.REPORT_TYPE, payload, keys[n].public, data))
        if len(chunk) == 20_000 or i == entries - 1:
            cp = cpmod.Checkpoint(ORIGIN, frontier.size, frontier.root(), time.time_ns())
            state = FollowState(frontier.copy(), checker.heads, 0, ORIGIN)
            store.commit(first, chunk, cpmod.sign(cp, collector), state)
            first += len(chunk)
            chunk = []
    store.close()
    return checker.trust


def bench_verify(workdir: Path, entries: int, threads: int) -> dict[str, object]:
    directory = workdir / "copy"
    t = time.perf_counter()
    trust = _build_copy(directory, entries, nodes=100)
    build = time.perf_counter() - t
    store = LocalStore(directory, create=False)
    t = time.perf_counter()
    report = verify_store(store, trust, now_ns=time.time_ns(), threads=threads)
    elapsed = time.perf_counter() - t
    store.close()
    if not report.ok:
        raise RuntimeError(f"the bench copy did not verify: {report.findings[:3]}")
    return {
        "entries": report.entries,
        "threads": threads,
        "cores": os.cpu_count(),
        "build_seconds": round(build, 1),
        "verify_seconds": round(elapsed, 2),
        "entries_per_second": round(report.entries / elapsed),
        "projected_seconds_per_million": round(elapsed * 1_000_000 / report.entries, 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--append-entries", type=int, default=200_000)
    p.add_argument("--batches", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--min-interval", type=float, default=1.0)
    p.add_argument("--proof-entries", type=int, default=1_000_000)
    p.add_argument("--proof-samples", type=int, default=2000)
    p.add_argument("--verify-entries", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip", nargs="*", default=[], choices=["append", "proofs", "verify"])
    args = p.parse_args(argv)
    out: dict[str, object] = {"cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-log-") as tmp:
        work = Path(tmp)
        if "append" not in args.skip:
            out["append"] = [
                bench_appends(work, args.append_entries, b, args.min_interval, every)
                for b in args.batches
                for every in (False, True)
            ]
        if "proofs" not in args.skip:
            out["proofs"] = bench_proofs(work, args.proof_entries, args.proof_samples)
        if "verify" not in args.skip:
            out["verify"] = bench_verify(work, args.verify_entries, args.threads)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
