"""The halt benchmark's figures: one run's timeline turned into milliseconds
after the crossing, where the time went, and what the tick costs; and the
median over runs for each tick setting.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from bench import halt_setup
from bench.halt_collector import CollectorReport, HookTime
from bench.halt_hosts import HostReport


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
    # The agent hosts' CPU over the same window as a share of the whole
    # machine (all cores): the simulated fleet shares the collector's cores.
    agent_cpu_share_of_machine_percent: float
    collector_cpu_percent_halt: float
    # CPU the collector process spent from "go" until the HALT was effective
    # (less sensitive to other load on the machine than the latencies).
    collector_cpu_ms_halt: float
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
    # When it is not: the nodes that kept the trigger's report from crossing.
    crossing_note: str
    measured_flops: float
    threshold_flops: float
    # Directives refused by agents, by reason (leases included), and refusal
    # receipts for the HALT itself.
    refused: dict[str, int]
    halt_refusals: int
    # Other load on the machine: the 1-minute load average before the run.
    load_average_1m: float
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
                    "collector_cpu_ms_halt": med("collector_cpu_ms_halt"),
                    "agent_cpu_share_of_machine_percent": med("agent_cpu_share_of_machine_percent"),
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


@dataclass(frozen=True)
class Hooks:
    """Tick hook costs between two collector reports."""

    wall_ms: dict[str, float]
    cpu_ms: dict[str, float]
    cpu_seconds: dict[str, float]
    calls: int

    @classmethod
    def between(cls, before: dict[str, HookTime], after: dict[str, HookTime]) -> Hooks:
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


def figures(
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
    steady: tuple[float, float, Hooks],
    steady_gc: tuple[float, int],
    load_average_1m: float,
    note: str = "",
    halt_cpu: float,
    halt_cpu_seconds: float = math.nan,
    cores: int = 1,
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
        agent_cpu_share_of_machine_percent=100.0 * cpu / (wall * max(cores, 1)) if wall else nan,
        collector_cpu_percent_halt=halt_cpu,
        collector_cpu_ms_halt=1e3 * halt_cpu_seconds,
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
        crossing_note=note,
        measured_flops=d.evidence.measured_value,
        threshold_flops=limit_flops,
        refused=dict(sum((Counter(r.refused) for r in reports), Counter())),
        halt_refusals=t.refusals,
        load_average_1m=load_average_1m,
        steps_failed=sum(r.steps_failed for r in reports),
        reconnects=sum(r.reconnects for r in reports),
    )
