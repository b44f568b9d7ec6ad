"""Run the benchmarks, print the machine and a table of figures; with
``--out FILE`` also write them as JSON (``bench/results.json`` by convention).

    python -m bench.run_all                 # every benchmark at full size
    python -m bench.run_all --quick         # small sizes, a minute in all
    python -m bench.run_all ingest fleet --out bench/results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import bench_agent, bench_fleet, bench_halt, bench_ingest, crash_loop
from bench.common import BenchError, machine
from computewatch.render import table

_MB = 1 << 20


@dataclass(frozen=True)
class Sizes:
    """How big each run is; ``QUICK`` keeps all of them to about a minute."""

    ingest_agents: int = 64
    ingest_reports: int = 250
    fleet_agents: int = 1000
    fleet_seconds: float = 30.0
    fleet_warmup: float = 5.0
    agent_samples: int = 500
    halt_agents: int = 1000
    halt_ticks: tuple[float, ...] = bench_halt.TICKS
    halt_runs: int = 3
    halt_steady: float = 10.0
    crash_iterations: int = 50


FULL = Sizes()
QUICK = Sizes(
    ingest_agents=16,
    ingest_reports=50,
    fleet_agents=100,
    fleet_seconds=5.0,
    fleet_warmup=2.0,
    agent_samples=100,
    halt_agents=100,
    halt_ticks=(0.25,),
    halt_runs=1,
    halt_steady=2.0,
    crash_iterations=5,
)


def _ingest(s: Sizes) -> dict[str, object]:
    return bench_ingest.run(s.ingest_agents, s.ingest_reports).to_dict()


def _fleet(s: Sizes) -> dict[str, object]:
    return bench_fleet.run(s.fleet_agents, s.fleet_seconds, warmup=s.fleet_warmup).to_dict()


def _agent(s: Sizes) -> dict[str, object]:
    return bench_agent.run(s.agent_samples).to_dict()


def _halt(s: Sizes) -> dict[str, object]:
    return bench_halt.run(
        s.halt_agents, ticks=s.halt_ticks, runs=s.halt_runs, steady=s.halt_steady
    ).to_dict()


def _crash(s: Sizes) -> dict[str, object]:
    result = crash_loop.run(s.crash_iterations)
    crash_loop.check(result)
    return result.to_dict()


# name -> runner; run in this order.
BENCHMARKS: dict[str, Callable[[Sizes], dict[str, object]]] = {
    "ingest": _ingest,
    "fleet": _fleet,
    "agent": _agent,
    "halt": _halt,
    "crash": _crash,
}
# Benchmarks an issue still has to add (shown as not measured).
PLANNED: tuple[str, ...] = ()


def _f(value: object, fmt: str = "{:,.0f}") -> str:
    return fmt.format(value) if isinstance(value, int | float) else "-"


def rows(results: dict[str, dict[str, object]]) -> list[list[str]]:
    """Table rows (figure, value, context) for whatever ran."""
    out: list[list[str]] = []
    if (r := results.get("ingest")) is not None:
        out += [
            [
                "ingest: reports/s verified, stored, aggregated",
                _f(r["reports_per_second"]),
                f"{r['agents']} agents x {r['reports'] // r['agents']} reports"  # type: ignore[operator]
                f", {r['gpus_per_report']} GPUs each",
            ],
            [
                "ingest: raw Ed25519 verifications/s, 1 thread",
                _f(r["raw_verify_per_second"]),
                f"{_f(r['raw_verify_per_second_all_cores'])}/s on all cores",
            ],
            [
                "ingest: ratio (aim >= 0.5)",
                _f(r["ratio"], "{:.2f}"),
                f"reports/s over raw; load average {_f(r['load_average_1m'], '{:.1f}')} before",
            ],
            [
                "ingest: collector CPU, RSS",
                f"{_f(r['collector_cpu_percent'])} %",
                f"{_f(r['collector_rss_bytes'] / _MB)} MiB"  # type: ignore[operator]
                f"; {_f(r['acks_per_report'], '{:.2f}')} acks/report",
            ],
        ]
    if (r := results.get("fleet")) is not None:
        out += [
            [
                f"fleet: collector CPU, {r['agents']} agents at {r['interval_seconds']} s",
                f"{_f(r['collector_cpu_percent'], '{:.1f}')} %",
                f"of one core over {_f(r['window_seconds'], '{:.0f}')} s; load average"
                f" {_f(r['load_average_1m'], '{:.1f}')} before",
            ],
            [
                "fleet: collector RSS",
                f"{_f(r['collector_rss_bytes'] / _MB)} MiB",  # type: ignore[operator]
                f"max {_f(r['collector_rss_max_bytes'] / _MB)} MiB",  # type: ignore[operator]
            ],
            [
                "fleet: ack latency p50 / p99",
                f"{_f(r['ack_latency_p50_ms'], '{:.1f}')} ms",
                f"p99 {_f(r['ack_latency_p99_ms'], '{:.1f}')} ms; generator lag max"
                f" {_f(r['generator_max_lag_ms'], '{:.1f}')} ms",
            ],
        ]
    if (r := results.get("agent")) is not None:
        out.append(
            [
                f"agent: CPU per sample, {r['gpus']} fake GPUs",
                f"{_f(r['cpu_ms_per_sample'], '{:.2f}')} ms",
                f"fake NVML {_f(r['backend_cpu_ms_per_sample'], '{:.2f}')} ms"
                f" ({_f(r['nvml_calls_per_sample'])} calls), seal"
                f" {_f(r['seal_cpu_ms_per_sample'], '{:.2f}')} ms",
            ]
        )
    if (r := results.get("halt")) is not None:
        out += _halt_rows(r)
    if (r := results.get("crash")) is not None:
        out.append(
            [
                "crash: kill -9 loop, reports lost",
                _f(r["reports_lost"]),
                f"{_f(r['survived'])}/{_f(r['iterations'])} iterations survived;"
                f" {_f(r['reports_acked'])} reports acknowledged, {_f(r['evidence_rows'])}"
                f" evidence rows, audit verify {'ok' if r['audit_ok'] else 'FAILED'}",
            ]
        )
    out += [[f"{name}: (issue 3)", "not measured yet", ""] for name in PLANNED]
    return out


def _halt_rows(r: dict[str, object]) -> list[list[str]]:
    """Per tick setting: receipt latency and what the rules tick costs (medians over runs)."""
    out: list[list[str]] = []
    by_tick = r["by_tick"]
    assert isinstance(by_tick, list)
    for t in by_tick:
        tick = f"tick {t['tick_seconds']:g} s"
        out += [
            [
                f"halt: last receipt p99, {r['agents']} agents, {tick}",
                f"{_f(t['receipt_p99_ms'])} ms",
                f"p50 {_f(t['receipt_p50_ms'])} ms; issued {_f(t['issue_ms'])} ms and"
                f" effective {_f(t['effective_ms'])} ms after the crossing;"
                f" median of {_f(t['runs'])}",
            ],
            [
                f"halt: rules evaluation, {tick}",
                f"{_f(t['rules_cpu_ms_per_tick'], '{:.1f}')} ms CPU",
                f"{_f(t['rules_cpu_percent'], '{:.1f}')} % of a core; collector"
                f" {_f(t['steady_collector_cpu_percent'])} % before the crossing",
            ],
        ]
    return out


def run(names: Sequence[str], sizes: Sizes = FULL) -> dict[str, object]:
    """Run ``names`` (all when empty); the document ``--out`` writes."""
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise BenchError(f"unknown benchmark(s) {unknown}; expected some of {list(BENCHMARKS)}")
    results: dict[str, dict[str, object]] = {}
    for name in names or list(BENCHMARKS):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = BENCHMARKS[name](sizes)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "results": results,
    }


def render(doc: dict[str, object]) -> str:
    m = doc["machine"]
    assert isinstance(m, dict)
    results = doc["results"]
    assert isinstance(results, dict)
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    head = (
        f"{doc['date']}  {m['logical_cores']} cores ({m['cpu_model']}),"
        f" {m['memory_bytes'] // (1 << 30)} GiB, {m['platform']}\n{versions}\n"
    )
    return head + table(["figure", "value", "context"], rows(results))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help=f"some of {list(BENCHMARKS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    try:
        doc = run(args.names, QUICK if args.quick else FULL)
    except BenchError as exc:
        raise SystemExit(f"bench: {exc}") from exc
    print(render(doc))
    if args.out is not None:
        args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
