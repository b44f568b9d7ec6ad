"""Issue 13: what a report, a rules tick, a ``/metrics`` scrape and a
``Status`` listing cost at fleet size, in one process.

An ``Aggregator`` is fed N nodes x 8 H100s (the reports ``bench.common``
builds, 8 nodes per job, jobs declared with one of ``--actors`` actors), 1 %
of the nodes silent. Timed, each the median of ``--reps``:

- ``ingest_us``: one report folded into the aggregate (mean over a round);
- ``snapshot_ms``: every figure of every scope (``Aggregator.snapshot``);
- ``tick_ms``: the rules tick, a snapshot evaluated by the shipped packs
  ``operator-default`` and ``eu-ai-act`` (the scopes those rules use only,
  where the tree supports it);
- ``scrape_ms``: ``generate_latest`` of a registry holding ``CollectorMetrics``;
  ``scrape_served_ms``: the body the collector's metrics server sends
  (``collector.services.exposition``, where the tree has it; the same lines, checked);
- ``status_first_ms`` / ``status_walk_ms``: ``Status.GetStatus`` over real
  gRPC on loopback, first page and every page (500 items each).

``--trees A,B``: run the same measurement on several checkouts (each in a
child process with that tree first on ``PYTHONPATH``), interleaved round by
round, so old and new compare on the same machine at the same time. The
counts are checked: every report ingested, every node and job listed once.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

T0 = 1000.0
INTERVAL = 1.0
PACKS = ("operator-default", "eu-ai-act")


# The clock of the in-process figures (``--clock``): wall time, or this
# process's CPU time, which others' work on a shared machine disturbs less.
CLOCK = {"fn": time.perf_counter}
# How the reps of one figure are summed up (``--stat``): the median, or the
# fastest (what the code costs, with less of others' work on a shared machine).
STAT: dict[str, Callable[[list[float]], float]] = {"fn": statistics.median}


def _median_ms(
    fn: Callable[[], object], reps: int, setup: Callable[[], object] | None = None
) -> float:
    clock = CLOCK["fn"]
    times = []
    for _ in range(reps):
        if setup is not None:
            setup()
        start = clock()
        fn()
        times.append((clock() - start) * 1e3)
    return STAT["fn"](times)


def _module(name: str, flat: str) -> Any:
    """``name``, or its flat-layout ``flat`` in a tree from before the re-layout."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        return importlib.import_module(flat)


def measure(nodes: int, gpus: int, actors: int, reps: int) -> dict[str, Any]:
    """One tree's figures (imports resolve against ``sys.path``)."""
    import grpc
    from prometheus_client import CollectorRegistry, generate_latest

    import collector
    from bench.common import gpu_samples, job_of, machine
    from collector.rules import RuleEngine
    from collector.rules.load import load_packs

    # A tree from before the collector's sub-packages (the base) has them flat.
    Aggregator = _module("collector.accounting.aggregate", "collector.aggregate").Aggregator  # noqa: N806
    Sessions = _module("collector.nodes.sessions", "collector.sessions").Sessions  # noqa: N806
    CollectorMetrics = _module("collector.services.metrics", "collector.metrics").CollectorMetrics  # noqa: N806
    StatusServicer = _module("collector.services.status", "collector.status_service").StatusServicer  # noqa: N806
    Ledger = _module("collector.store.ledger", "collector.ledger").Ledger  # noqa: N806
    IngestStats = _module("collector.telemetry.ingest", "collector.ingest").IngestStats  # noqa: N806
    from protos.computewatch.v1 import status_pb2, status_pb2_grpc, telemetry_pb2

    agg = Aggregator(expected_interval_seconds=INTERVAL)
    silent = {i for i in range(nodes) if i % 100 == 7}

    def report(i: int, seq: int, at: float) -> telemetry_pb2.NodeReport:
        node_id = f"node-{i:05d}"
        job = job_of(i)
        r = telemetry_pb2.NodeReport(
            node_id=node_id,
            sequence=seq,
            interval_seconds=INTERVAL,
            sample_unix_nanos=int(at * 1e9),
            nvml_status=telemetry_pb2.NVML_STATUS_OK,
            gpus=gpu_samples(gpus, node_id=node_id, job=job),
        )
        r.jobs.add(job_id=job, actor=f"org:bench-{int(job) % actors:03d}")
        return r

    first = [report(i, 1, T0 - 3 if i in silent else T0) for i in range(nodes)]
    live = [report(i, 2, T0 + 1) for i in range(nodes) if i not in silent]
    for n, r in enumerate(first):
        agg.ingest(r, n, T0 - 3 if n in silent else T0)
    state = {"round": 1, "index": nodes, "now": T0 + 0.5}

    def round_() -> None:
        """Every live node reports once more (the silent ones stay silent)."""
        state["round"] += 1
        at = T0 + state["round"] - 1
        for r in live:
            r.sequence = int(state["round"])
            r.sample_unix_nanos = int(at * 1e9)
            agg.ingest(r, int(state["index"]), at)
            state["index"] += 1
        state["now"] = at + 0.5
        # The round's garbage is collected before the clock starts: a full
        # collection of the heap would otherwise land in whichever call comes
        # next (at 5,000 nodes ~0.2 s; the collector pauses it for its tick).
        gc.collect()

    start = CLOCK["fn"]()
    round_()
    ingest_us = (CLOCK["fn"]() - start) / max(len(live), 1) * 1e6
    if sum(s.reports for s in agg.nodes.values()) != len(first) + len(live):
        raise RuntimeError("a report was not ingested")

    engine = RuleEngine(load_packs(PACKS))
    scoped = "scopes" in inspect.signature(agg.snapshot).parameters
    wanted = getattr(engine, "scopes", None)

    def tick() -> None:
        now = state["now"]
        snap = agg.snapshot(now, scopes=wanted) if scoped and wanted else agg.snapshot(now)
        engine.evaluate(snap)

    tick()  # the first evaluation says "unknown" for keys once; time the steady state
    figures: dict[str, Any] = {
        "tree": str(Path(collector.__file__).resolve().parent.parent),
        "nodes": nodes,
        "gpus": nodes * gpus,
        "jobs": len(agg.jobs),
        "actors": actors,
        "silent_nodes": len(silent),
        "ingest_us": round(ingest_us, 1),
    }
    # "_fresh": right after every live node reported (no figure of theirs
    # reused: the collector at 1 Hz); the others: nothing reported since the
    # last call (a second reader of the same state).
    snapshot = lambda: agg.snapshot(state["now"])  # noqa: E731
    figures["snapshot_ms"] = round(_median_ms(snapshot, reps), 2)
    figures["snapshot_fresh_ms"] = round(_median_ms(snapshot, reps, round_), 2)
    gc_was = gc.isenabled()
    gc.disable()  # as the collector's tick does (collector.stop.decisions.gc_paused)
    figures["tick_ms"] = round(_median_ms(tick, reps), 2)
    figures["tick_fresh_ms"] = round(_median_ms(tick, reps, round_), 2)
    if gc_was:
        gc.enable()

    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.sqlite3")
        registry = CollectorRegistry()
        stats = IngestStats()
        metrics = CollectorMetrics(stats, ledger, agg, Sessions(), clock=lambda: state["now"])
        registry.register(metrics)
        body = generate_latest(registry)
        if body.count(b"computewatch_node_achieved_flops{") != nodes - len(silent) + len(silent):
            raise RuntimeError("the scrape lists the wrong number of nodes")
        scrape = lambda: generate_latest(registry)  # noqa: E731
        figures["scrape_ms"] = round(_median_ms(scrape, reps), 2)
        figures["scrape_fresh_ms"] = round(_median_ms(scrape, reps, round_), 2)
        figures["scrape_bytes"] = len(body)
        figures["scrape_served_ms"] = figures["scrape_ms"]
        figures["scrape_served_fresh_ms"] = figures["scrape_fresh_ms"]
        # The collector's own /metrics app, where the tree has one (an
        # editable install elsewhere must not lend it one).
        here = Path(collector.__file__).parent
        if (here / "services" / "exposition.py").exists() or (here / "exposition.py").exists():
            exposition = _module("collector.services.exposition", "collector.exposition")
            app = exposition.MetricsApp(registry, metrics)
            served, _ = app.body("", {})
            expected = generate_latest(registry)  # nothing reported in between
            if sorted(served.splitlines()) != sorted(expected.splitlines()):
                raise RuntimeError("the served exposition differs from generate_latest's")
            serve = lambda: app.body("", {})  # noqa: E731
            figures["scrape_served_ms"] = round(_median_ms(serve, reps), 2)
            figures["scrape_served_fresh_ms"] = round(_median_ms(serve, reps, round_), 2)
        walk = asyncio.run(
            _status(
                grpc,
                status_pb2,
                status_pb2_grpc,
                StatusServicer(agg, stats, ledger, clock=lambda: state["now"]),
                reps,
                round_,
            )
        )
        ledger_close = getattr(ledger, "close", None)
        if callable(ledger_close):
            result = ledger_close()
            if inspect.iscoroutine(result):
                asyncio.run(result)
    if walk.pop("nodes") != nodes or walk.pop("jobs") != len(agg.jobs):
        raise RuntimeError(f"the Status walk listed {walk}, expected {nodes} nodes")
    figures.update(walk)
    figures["machine"] = machine()
    return figures


async def _status(
    grpc: Any,
    status_pb2: Any,
    status_pb2_grpc: Any,
    servicer: Any,
    reps: int,
    round_: Callable[[], None],
) -> dict[str, Any]:
    """Status over gRPC on loopback: a first page with nothing reported since
    the last listing, then, after a round of reports each time, a first page
    and a whole listing (every page followed)."""
    server = grpc.aio.server()
    status_pb2_grpc.add_StatusServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
        ) as channel:
            stub = status_pb2_grpc.StatusStub(channel)
            await stub.GetStatus(status_pb2.StatusRequest())  # warm the channel
            warm, firsts, walks = [], [], []
            for _ in range(reps):
                start = time.perf_counter()
                await stub.GetStatus(status_pb2.StatusRequest())
                warm.append((time.perf_counter() - start) * 1e3)
            listed = {"nodes": 0, "jobs": 0, "status_pages": 0}
            for _ in range(reps):
                round_()
                start = time.perf_counter()
                page = await stub.GetStatus(status_pb2.StatusRequest())
                firsts.append((time.perf_counter() - start) * 1e3)
                nodes, jobs, pages = len(page.nodes), len(page.jobs), 1
                for _ in range(10_000):
                    if not page.next_page_token:
                        break
                    page = await stub.GetStatus(
                        status_pb2.StatusRequest(page_token=page.next_page_token)
                    )
                    nodes, jobs, pages = nodes + len(page.nodes), jobs + len(page.jobs), pages + 1
                walks.append((time.perf_counter() - start) * 1e3)
                listed = {"nodes": nodes, "jobs": jobs, "status_pages": pages}
    finally:
        await server.stop(None)
    return {
        **listed,
        "status_first_ms": round(STAT["fn"](warm), 2),
        "status_first_fresh_ms": round(STAT["fn"](firsts), 2),
        "status_walk_fresh_ms": round(STAT["fn"](walks), 2),
    }


def _child(tree: str, args: argparse.Namespace) -> dict[str, Any]:
    """This file run as a script with ``tree`` first on ``PYTHONPATH``: its
    ``collector`` and ``bench.common`` are the tree's (an old tree needs no
    copy of this file)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tree, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--compact"]
    for name in ("nodes", "gpus", "actors", "reps", "clock", "stat"):
        cmd += [f"--{name}", str(getattr(args, name))]
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, check=False, timeout=args.timeout
    )
    if out.returncode:
        raise RuntimeError(f"{tree}: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--actors", type=int, default=20)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds per tree")
    p.add_argument("--trees", default="", help="comma-separated checkouts to compare")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="in-process figures in wall time or this process's CPU time (Status: always wall)",
    )
    p.add_argument("--stat", choices=("median", "min"), default="median", help="of the reps")
    p.add_argument("--compact", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.clock == "cpu":
        CLOCK["fn"] = time.process_time
    if args.stat == "min":
        STAT["fn"] = min
    if not args.trees:
        figures = measure(args.nodes, args.gpus, args.actors, args.reps)
        figures["clock"], figures["stat"] = args.clock, args.stat
        print(json.dumps(figures, indent=None if args.compact else 2))
        return
    results: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for tree in args.trees.split(","):
            results.append(_child(str(Path(tree).resolve()), args))
    machine_info = results[0].pop("machine")
    for r in results:
        r.pop("machine", None)
    print(json.dumps({"machine": machine_info, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
