"""The halt benchmark's collector process: ``collector.server.create_server``
unchanged, plus timing.

Each tick hook is wrapped to count its wall and CPU time; a ``DirectiveBook``
commit listener notes when each directive was committed and when its push to
every stream had been queued (``_push`` runs right after the listeners, in
the same callback); ``gc.callbacks`` add up garbage-collector pauses.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.halt_hosts import command, reply
from collector.config import CollectorConfig


@dataclass
class HookTime:
    calls: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    max_seconds: float = 0.0


@dataclass(frozen=True)
class CollectorReport:
    hooks: dict[str, HookTime]
    # directive id -> (committed ns, pushes queued ns)
    pushes: dict[str, tuple[int, int]]
    # (start ns, end ns) of each rules evaluation that issued a directive
    issuing_ticks: list[tuple[int, int]]
    accepted: int
    sessions: int
    nodes_reporting: int
    cpu_seconds: float
    # Garbage collector pauses in the collector process: seconds and
    # collections of each generation, since start.
    gc_seconds: float
    gc_collections: tuple[int, int, int]


class GcClock:
    """Total time spent in the garbage collector (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.collections[info["generation"]] += 1


def _hook_name(hook: object) -> str:
    name = getattr(hook, "__name__", "") or type(hook).__name__
    return {"DecisionHook": "rules", "LeaseIssuer": "leases", "tick": "effectiveness"}.get(
        name, name
    )


def collector_main(config: CollectorConfig, profile: Path | None, conn: Connection) -> None:
    """The collector; with ``profile``, a cProfile from "mark" to "stop" is written there."""
    logging.basicConfig(level=logging.ERROR, format="collector: %(levelname)s %(message)s")
    asyncio.run(_serve_collector(config, profile, conn))


async def _serve_collector(config: CollectorConfig, profile: Path | None, conn: Connection) -> None:
    from collector.runtime import tune_gc
    from collector.server import create_server

    service, port = await create_server(config)
    tune_gc()  # as `computewatch collector serve` does
    stop = service.stop_protocol
    assert stop is not None
    gc_clock = GcClock()
    hooks: dict[str, HookTime] = {}
    issuing: list[tuple[int, int]] = []
    pushes: dict[str, tuple[int, int]] = {}
    loop = asyncio.get_running_loop()

    def timed(name: str, hook: Callable[[float], None]) -> Callable[[float], None]:
        stat = hooks.setdefault(name, HookTime())

        def run(now: float) -> None:
            issued = stop.decisions.stats.directives
            start_ns, wall, cpu = time.time_ns(), time.perf_counter(), time.thread_time()
            try:
                hook(now)
            finally:
                took = time.perf_counter() - wall
                stat.calls += 1
                stat.wall_seconds += took
                stat.cpu_seconds += time.thread_time() - cpu
                stat.max_seconds = max(stat.max_seconds, took)
                if stop.decisions.stats.directives > issued:
                    issuing.append((start_ns, time.time_ns()))

        return run

    service.tick_hooks[:] = [timed(_hook_name(h), h) for h in service.tick_hooks]

    def committed(record: Any) -> None:
        at = time.time_ns()
        # ``_push`` runs right after the listeners, in the same callback.
        loop.call_soon(lambda: pushes.setdefault(record.id, (at, time.time_ns())))

    stop.book.add_commit_listener(committed)
    conn.send(("ready", port))
    profiler = cProfile.Profile() if profile is not None else None
    while True:
        cmd = await loop.run_in_executor(None, command, conn)
        if cmd == "mark" and profiler is not None:
            profiler.enable()
        if cmd == "stop":
            if profiler is not None and profile is not None:
                profiler.disable()
                profiler.dump_stats(profile)
            await service.stop(0)
        times = os.times()
        reply(
            conn,
            CollectorReport(
                hooks={k: HookTime(**vars(v)) for k, v in hooks.items()},
                pushes=dict(pushes),
                issuing_ticks=list(issuing),
                accepted=service.ingestor.stats.accepted,
                sessions=len(service.sessions),
                nodes_reporting=sum(1 for n in service.aggregator.nodes.values() if n.reports),
                cpu_seconds=times.user + times.system,
                gc_seconds=gc_clock.seconds,
                gc_collections=(
                    gc_clock.collections[0],
                    gc_clock.collections[1],
                    gc_clock.collections[2],
                ),
            ),
        )
        if cmd == "stop":
            return
