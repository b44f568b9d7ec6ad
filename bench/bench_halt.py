"""Figure 4: halt latency with 1,000 real agents on loopback.

From the collector receiving the report that crosses a threshold to each
agent's signed enforcement receipt being logged, and until the directive is
effective. The collector runs in its own process; the agents run in a few
host processes (``bench.halt_hosts``), each a real ``Agent`` (signing, spool,
stream, directive verification, enforcement against ``NvmlBackend(FakeNvml)``
and a real stand-in process that the halt SIGSTOPs). The fleet and the one
cluster rule that crosses on demand are in ``bench.halt_setup``.

Timestamps are wall-clock nanoseconds on one machine:

- crossing: the ledger's ``received_unix_nanos`` of the trigger's first
  report after "go" (the only report that can cross);
- issued: the HALT's ``issued_unix_nanos``; pushed: when its push to every
  stream had been queued (a commit listener in the collector process);
- arrived / handled: when the envelope reached each agent's directive handler
  and when verification and enforcement returned (in the agent hosts);
- enforced: the receipt's ``enforced_unix_nanos``; logged: the ledger's
  ``received_unix_nanos`` of the report carrying it;
- effective: ``Control.ListDirectives`` ``effective_unix_nanos``.

Before "go", the collector's CPU and the time of each tick hook are measured
over a steady window: the cost of the evaluation tick.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import grpc

from bench import halt_hosts, halt_light, halt_setup
from bench.common import (
    BenchError,
    Watch,
    Workdir,
    finish,
    machine,
    pid_of,
    recv,
    start_process,
    workdir,
)
from bench.halt_hosts import CollectorReport, HookTime, HostPlan, HostReport
from protos import dsse
from protos.computewatch.v1 import control_pb2, control_pb2_grpc
from protos.keys import load_private_key, write_public_key

TICKS = (1.0, 0.25, 0.1)
_POLL_SECONDS = 0.25
_SHM = Path("/dev/shm")


@dataclass(frozen=True)
class HaltRun:
    # "agent": real Agent objects; "light": signed responders (bench.halt_light)
    kind: str
    agents: int
    hosts: int
    gpus_per_agent: int
    interval_seconds: float
    tick_seconds: float
    receipts: int
    # Milliseconds after the crossing report was received.
    issue_ms: float
    pushed_ms: float
    arrival_min_ms: float
    arrival_p50_ms: float
    arrival_p99_ms: float
    enforced_p50_ms: float
    enforced_p99_ms: float
    receipt_p50_ms: float
    receipt_p99_ms: float
    receipt_max_ms: float
    receipt_min_ms: float
    effective_ms: float
    effective_after_last_receipt_ms: float
    # Where the time goes (milliseconds).
    tick_wait_ms: float
    evaluation_ms: float
    commit_ms: float
    fanout_ms: float
    handle_p50_ms: float
    handle_p99_ms: float
    report_p50_ms: float
    report_p99_ms: float
    upload_p50_ms: float
    upload_p99_ms: float
    agent_lag_max_ms: float
    agent_cpu_percent: float
    collector_cpu_percent_halt: float
    # Steady state before the crossing: what the tick costs.
    steady_seconds: float
    steady_collector_cpu_percent: float
    # Per tick hook: mean wall and CPU milliseconds per call, and its share
    # of one core (CPU seconds per second).
    steady_hook_ms: dict[str, float]
    steady_hook_cpu_ms: dict[str, float]
    steady_hook_cpu_percent: dict[str, float]
    steady_ticks_per_second: float
    # The collector's garbage collector over the steady window: share of
    # wall time and full (generation 2) collections.
    steady_gc_percent: float
    steady_gc_full_collections: int
    # Checks.
    crossing_in_evidence: bool
    measured_flops: float
    threshold_flops: float
    # Directives refused by agents, by reason (leases included), and refusal
    # receipts for the HALT itself.
    refused: dict[str, int]
    halt_refusals: int
    steps_failed: int
    reconnects: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class HaltResult:
    agents: int
    hosts: int
    interval_seconds: float
    runs: list[HaltRun]

    def summary(self) -> list[dict[str, float]]:
        """Per tick setting: the median over runs of each headline figure."""
        out = []
        for tick in sorted({r.tick_seconds for r in self.runs}, reverse=True):
            runs = [r for r in self.runs if r.tick_seconds == tick]

            def med(name: str, runs: list[HaltRun] = runs) -> float:
                return statistics.median(float(getattr(r, name)) for r in runs)

            out.append(
                {
                    "tick_seconds": tick,
                    "runs": float(len(runs)),
                    "issue_ms": med("issue_ms"),
                    "receipt_p50_ms": med("receipt_p50_ms"),
                    "receipt_p99_ms": med("receipt_p99_ms"),
                    "receipt_max_ms": med("receipt_max_ms"),
                    "receipt_p99_ms_worst": max(r.receipt_p99_ms for r in runs),
                    "effective_ms": med("effective_ms"),
                    "steady_collector_cpu_percent": med("steady_collector_cpu_percent"),
                    "rules_ms_per_tick": statistics.median(
                        r.steady_hook_ms.get("rules", math.nan) for r in runs
                    ),
                    "rules_cpu_ms_per_tick": statistics.median(
                        r.steady_hook_cpu_ms.get("rules", math.nan) for r in runs
                    ),
                    "rules_cpu_percent": statistics.median(
                        r.steady_hook_cpu_percent.get("rules", math.nan) for r in runs
                    ),
                }
            )
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "agents": self.agents,
            "hosts": self.hosts,
            "interval_seconds": self.interval_seconds,
            "by_tick": self.summary(),
            "runs": [r.to_dict() for r in self.runs],
        }


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(ns: float) -> float:
    return ns / 1e6


class _Fleet:
    """The collector and agent host processes of one run."""

    def __init__(self) -> None:
        self.collector: tuple[BaseProcess, Connection] | None = None
        self.hosts: list[tuple[BaseProcess, Connection]] = []

    def ask_collector(self, cmd: str, timeout: float) -> CollectorReport:
        assert self.collector is not None
        self.collector[1].send(cmd)
        msg = recv(self.collector[1], timeout, "collector")
        if not isinstance(msg, CollectorReport):
            raise BenchError(f"collector answered {msg!r}")
        return msg

    def close(self) -> None:
        for proc, conn in [*self.hosts, *([self.collector] if self.collector else [])]:
            conn.close()
            finish(proc)


@dataclass(frozen=True)
class _Hooks:
    """Tick hook costs between two collector reports."""

    wall_ms: dict[str, float]
    cpu_ms: dict[str, float]
    cpu_seconds: dict[str, float]
    calls: int

    @classmethod
    def between(cls, before: dict[str, HookTime], after: dict[str, HookTime]) -> _Hooks:
        wall: dict[str, float] = {}
        cpu: dict[str, float] = {}
        total: dict[str, float] = {}
        calls = 0
        for name, a in after.items():
            b = before.get(name, HookTime())
            n = a.calls - b.calls
            calls = max(calls, n)
            total[name] = a.cpu_seconds - b.cpu_seconds
            wall[name] = 1e3 * (a.wall_seconds - b.wall_seconds) / n if n else math.nan
            cpu[name] = 1e3 * total[name] / n if n else math.nan
        return cls(wall, cpu, total, calls)


def _wait_effective(address: str, deadline: float) -> int:
    """``effective_unix_nanos`` of the first HALT, or 0 if not effective by ``deadline``."""
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = control_pb2_grpc.ControlStub(channel)
        while time.monotonic() < deadline:
            reply = stub.ListDirectives(control_pb2.ListDirectivesRequest(), timeout=10)
            for rec in reply.directives:
                d = dsse.parse_message(
                    control_pb2.Directive, dsse.open_envelope(rec.envelope).payload
                )
                if d.action == control_pb2.ACTION_HALT and rec.effective_unix_nanos:
                    return int(rec.effective_unix_nanos)
            time.sleep(_POLL_SECONDS)
    return 0


def run_once(
    agents: int = 1000,
    tick: float = 1.0,
    *,
    hosts: int = 3,
    interval: float = 5.0,
    gpus: int = 8,
    steady: float = 10.0,
    timeout: float | None = None,
    base: Path | None = None,
    agent_base: Path | None = None,
    profile: Path | None = None,
    light: bool = False,
) -> HaltRun:
    """One fleet, one crossing, one halt; BenchError if it did not happen as planned."""
    if agents < 2 or hosts < 1 or hosts > agents or gpus < 1:
        raise BenchError("agents >= 2 (one is the trigger), 1 <= hosts <= agents, gpus >= 1")
    if tick <= 0 or interval <= 0 or steady <= 0:
        raise BenchError("tick, interval and steady seconds must be positive")
    limit = timeout if timeout is not None else 120.0 + 0.1 * agents
    if agent_base is None and _SHM.is_dir() and os.access(_SHM, os.W_OK):
        agent_base = _SHM  # agents' spools in memory: see bench/README.md
    with tempfile.TemporaryDirectory(prefix="cw-bench-halt-", dir=agent_base) as tmp:
        root = Path(tmp)
        limit_flops = halt_setup.threshold(agents, gpus)
        pack = root / "bench-halt.yaml"
        pack.write_text(halt_setup.pack_yaml(limit_flops), encoding="utf-8")
        with workdir(
            base,
            agents,
            tick_seconds=tick,
            interval_seconds=interval,
            lease_seconds=6 * interval,
            effective_timeout_seconds=limit,
            rule_packs=(str(pack),),
        ) as wd:
            collector_pub = root / "collector.pub"
            write_public_key(load_private_key(wd.config.key).public, collector_pub)
            doc = halt_setup.scenario_doc(wd.node_ids, gpus, interval)
            scenario_file = root / "scenario.json"
            scenario_file.write_text(json.dumps(doc), encoding="utf-8")
            fleet = _Fleet()
            try:
                return _run(
                    fleet,
                    wd,
                    root,
                    doc,
                    scenario_file,
                    collector_pub,
                    limit_flops,
                    tick=tick,
                    hosts=hosts,
                    interval=interval,
                    gpus=gpus,
                    steady=steady,
                    limit=limit,
                    profile=profile,
                    light=light,
                )
            finally:
                fleet.close()


def _run(
    fleet: _Fleet,
    wd: Workdir,
    root: Path,
    doc: dict[str, object],
    scenario_file: Path,
    collector_pub: Path,
    limit_flops: float,
    *,
    tick: float,
    hosts: int,
    interval: float,
    gpus: int,
    steady: float,
    limit: float,
    profile: Path | None,
    light: bool,
) -> HaltRun:
    n = len(wd.node_ids)
    trigger = wd.node_ids[-1]
    proc, conn = start_process(
        halt_hosts.collector_main,
        (wd.config, None if profile is None else profile / "collector.prof"),
        "cw-bench-halt-collector",
    )
    fleet.collector = (proc, conn)
    ready = recv(conn, limit, "collector")
    if not (isinstance(ready, tuple) and ready[0] == "ready"):
        raise BenchError(f"collector did not start: {ready!r}")
    address = f"127.0.0.1:{ready[1]}"
    start = time.time()
    bounds = [n * h // hosts for h in range(hosts + 1)]
    for h in range(hosts):
        lo, hi = bounds[h], bounds[h + 1]
        plan = HostPlan(
            address=address,
            collector_pub=collector_pub,
            scenario_file=scenario_file,
            scenario=doc,
            node_ids=wd.node_ids[lo:hi],
            seeds=wd.seeds[lo:hi],
            phases=[interval * i / n for i in range(lo, hi)],
            trigger=trigger if lo <= n - 1 < hi else None,
            root=root / f"host{h}",
            interval=interval,
            start=start,
            ready_timeout=limit,
            profile=None if profile is None else profile / f"host{h}.prof",
        )
        main = halt_light.light_host_main if light else halt_hosts.agent_host_main
        fleet.hosts.append(start_process(main, (plan,), f"cw-bench-halt-{h}"))
    for h, (_, hconn) in enumerate(fleet.hosts):
        msg = recv(hconn, limit, f"agent host {h}")
        expected = bounds[h + 1] - bounds[h]
        if msg != ("ready", expected):
            raise BenchError(f"agent host {h}: {msg!r}; expected all {expected} agents acked")
    deadline = time.monotonic() + limit
    while (s0 := fleet.ask_collector("stats", limit)).nodes_reporting < n:
        if time.monotonic() > deadline:
            raise BenchError(f"only {s0.nodes_reporting} of {n} nodes reported")
        time.sleep(0.5)

    # Steady state: what the tick costs with the whole fleet reporting.
    watch = Watch(pid_of(proc))
    watch.start()
    time.sleep(steady)
    steady_usage = watch.stop()
    s1 = fleet.ask_collector("stats", limit)
    steady_hooks = _Hooks.between(s0.hooks, s1.hooks)

    # The crossing.
    for h, (_, hconn) in enumerate(fleet.hosts):
        hconn.send("mark")
        recv(hconn, limit, f"agent host {h}")
    fleet.ask_collector("mark", limit)
    watch.start()
    trigger_conn = fleet.hosts[-1][1]
    trigger_conn.send("go")
    if (went := recv(trigger_conn, limit, "trigger host")) != "went":
        raise BenchError(f"trigger host: {went!r}")
    effective_ns = _wait_effective(address, time.monotonic() + limit)
    halt_usage = watch.stop()
    reports: list[HostReport] = []
    for h, (_, hconn) in enumerate(fleet.hosts):
        hconn.send("stop")
        msg = recv(hconn, limit, f"agent host {h}")
        if not isinstance(msg, HostReport):
            raise BenchError(f"agent host {h} answered {msg!r}")
        reports.append(msg)
    final = fleet.ask_collector("stop", limit)
    go_ns = max(r.go_ns for r in reports)
    timeline = halt_setup.read_timeline(wd.config.ledger, trigger, go_ns)
    if timeline is None:
        raise BenchError(f"no HALT (or no crossing report) in the ledger within {limit:.0f} s")
    return _figures(
        timeline,
        reports,
        final,
        effective_ns,
        limit_flops,
        kind="light" if light else "agent",
        hosts=hosts,
        gpus=gpus,
        interval=interval,
        tick=tick,
        agents=n,
        steady=(steady_usage.wall_seconds, steady_usage.cpu_percent, steady_hooks),
        steady_gc=(s1.gc_seconds - s0.gc_seconds, s1.gc_collections[2] - s0.gc_collections[2]),
        halt_cpu=halt_usage.cpu_percent,
    )


def _figures(
    t: halt_setup.Timeline,
    reports: list[HostReport],
    collector: CollectorReport,
    effective_ns: int,
    limit_flops: float,
    *,
    kind: str,
    hosts: int,
    gpus: int,
    interval: float,
    tick: float,
    agents: int,
    steady: tuple[float, float, _Hooks],
    steady_gc: tuple[float, int],
    halt_cpu: float,
) -> HaltRun:
    t0 = t.crossing_received_ns
    d = t.directive
    receipts = list(t.receipts.values())
    arrivals = {k: v for r in reports for k, v in r.arrivals.items() if v.directive_id == d.id}
    committed, pushed = collector.pushes.get(d.id, (0, 0))
    evaluations = [s for s in collector.issuing_ticks if s[1] >= d.issued_unix_nanos]
    eval_start, eval_end = evaluations[0] if evaluations else (0, 0)
    after = [_ms(r.received_ns - t0) for r in receipts]
    cpu = sum(r.cpu_seconds for r in reports)
    wall = max((r.wall_seconds for r in reports), default=0.0)
    steady_wall, steady_cpu, hooks = steady
    nan = math.nan
    return HaltRun(
        kind=kind,
        agents=agents,
        hosts=hosts,
        gpus_per_agent=gpus,
        interval_seconds=interval,
        tick_seconds=tick,
        receipts=len(receipts),
        issue_ms=_ms(d.issued_unix_nanos - t0),
        pushed_ms=_ms(pushed - t0) if pushed else nan,
        arrival_min_ms=min((_ms(a.arrived_ns - t0) for a in arrivals.values()), default=nan),
        arrival_p50_ms=_pct([_ms(a.arrived_ns - t0) for a in arrivals.values()], 0.5),
        arrival_p99_ms=_pct([_ms(a.arrived_ns - t0) for a in arrivals.values()], 0.99),
        enforced_p50_ms=_pct([_ms(r.enforced_ns - t0) for r in receipts], 0.5),
        enforced_p99_ms=_pct([_ms(r.enforced_ns - t0) for r in receipts], 0.99),
        receipt_p50_ms=_pct(after, 0.5),
        receipt_p99_ms=_pct(after, 0.99),
        receipt_max_ms=max(after, default=nan),
        receipt_min_ms=min(after, default=nan),
        effective_ms=_ms(effective_ns - t0) if effective_ns else nan,
        effective_after_last_receipt_ms=(
            _ms(effective_ns - t0) - max(after) if effective_ns and after else nan
        ),
        tick_wait_ms=_ms(eval_start - t0) if eval_start else nan,
        evaluation_ms=_ms(eval_end - eval_start) if eval_start else nan,
        commit_ms=_ms(committed - d.issued_unix_nanos) if committed else nan,
        fanout_ms=_ms(pushed - committed) if pushed else nan,
        handle_p50_ms=_pct([_ms(a.handled_ns - a.arrived_ns) for a in arrivals.values()], 0.5),
        handle_p99_ms=_pct([_ms(a.handled_ns - a.arrived_ns) for a in arrivals.values()], 0.99),
        report_p50_ms=_pct([_ms(r.sampled_ns - r.enforced_ns) for r in receipts], 0.5),
        report_p99_ms=_pct([_ms(r.sampled_ns - r.enforced_ns) for r in receipts], 0.99),
        upload_p50_ms=_pct([_ms(r.received_ns - r.sampled_ns) for r in receipts], 0.5),
        upload_p99_ms=_pct([_ms(r.received_ns - r.sampled_ns) for r in receipts], 0.99),
        agent_lag_max_ms=1e3 * max((r.lag_max_seconds for r in reports), default=nan),
        agent_cpu_percent=100.0 * cpu / wall if wall else nan,
        collector_cpu_percent_halt=halt_cpu,
        steady_seconds=steady_wall,
        steady_collector_cpu_percent=steady_cpu,
        steady_hook_ms=hooks.wall_ms,
        steady_hook_cpu_ms=hooks.cpu_ms,
        steady_hook_cpu_percent={
            k: 100.0 * v / steady_wall if steady_wall else nan for k, v in hooks.cpu_seconds.items()
        },
        steady_ticks_per_second=hooks.calls / steady_wall if steady_wall else nan,
        steady_gc_percent=100.0 * steady_gc[0] / steady_wall if steady_wall else nan,
        steady_gc_full_collections=steady_gc[1],
        crossing_in_evidence=t.crossing_index in d.evidence.log_indices,
        measured_flops=d.evidence.measured_value,
        threshold_flops=limit_flops,
        refused=dict(sum((Counter(r.refused) for r in reports), Counter())),
        halt_refusals=t.refusals,
        steps_failed=sum(r.steps_failed for r in reports),
        reconnects=sum(r.reconnects for r in reports),
    )


def run(
    agents: int = 1000,
    *,
    ticks: Sequence[float] = TICKS,
    runs: int = 3,
    hosts: int = 3,
    interval: float = 5.0,
    steady: float = 10.0,
    timeout: float | None = None,
    base: Path | None = None,
) -> HaltResult:
    """``runs`` fresh fleets at each tick setting."""
    if runs < 1 or not ticks:
        raise BenchError("at least 1 run and one tick setting are required")
    done = [
        run_once(
            agents, tick, hosts=hosts, interval=interval, steady=steady, timeout=timeout, base=base
        )
        for tick in ticks
        for _ in range(runs)
    ]
    return HaltResult(agents, hosts, interval, done)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--ticks", type=float, nargs="+", default=list(TICKS))
    p.add_argument("--runs", type=int, default=3, help="fresh fleets per tick setting")
    p.add_argument("--hosts", type=int, default=3, help="agent host processes")
    p.add_argument("--interval", type=float, default=5.0, help="agent report interval, s")
    p.add_argument("--steady", type=float, default=10.0, help="steady window before the crossing")
    args = p.parse_args(argv)
    result = run(
        args.agents,
        ticks=args.ticks,
        runs=args.runs,
        hosts=args.hosts,
        interval=args.interval,
        steady=args.steady,
    )
    print(json.dumps({"machine": machine(), "halt": result.to_dict()}, indent=2))


if __name__ == "__main__":
    main()
