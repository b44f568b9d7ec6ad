"""Issue 13 (throughput), ingest rows: collector variants compared in one run,
rounds interleaved (A B C A B C ...) so others' work on the machine falls on
every variant alike.

``verify``: raw single-core Ed25519 verifications/s, ``cryptography`` next to
libsodium (PyNaCl), interleaved rounds.
``ingest``: ``bench.bench_ingest`` once per variant and round: reports/s,
its ratio to the raw single-core ``cryptography`` rate measured in that same
run, the collector's CPU per report (with its ingest workers) and its event
loop's alone. Every run checks its counts (acknowledged, accepted, in the
ledger) or fails.
``fleet``: ``bench.bench_fleet`` for each fleet size and variant: N nodes
at 1 Hz over real gRPC from several load processes; ack p50/p99 and the
collector's CPU in percent of the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass

from bench import bench_fleet, bench_ingest
from bench.common import machine, raw_verify_rate


@dataclass(frozen=True)
class Variant:
    ingest_processes: int
    verify_threads: int = 2
    batch: int = 1
    loop: str = "asyncio"
    verifier: str = "nacl"


VARIANTS: dict[str, Variant] = {
    # Before issue 13: cryptography's verifier on two threads, the rest on the loop.
    "before": Variant(0, verifier="cryptography"),
    # Each lever alone, then together.
    "threads": Variant(0),
    "threads+batch": Variant(0, batch=32),
    "procs1": Variant(1),
    "procs2": Variant(2),
    "procs2+batch": Variant(2, batch=32),
    "procs2+uvloop": Variant(2, loop="uvloop"),
    "procs2+batch+uvloop": Variant(2, batch=32, loop="uvloop"),
}


def _verify(rounds: int, seconds: float) -> dict[str, object]:
    rates: dict[str, list[float]] = {"cryptography": [], "nacl": []}
    for _ in range(rounds):
        for lib, got in rates.items():
            got.append(raw_verify_rate(1612, seconds=seconds, library=lib))
    best = {lib: max(v) for lib, v in rates.items()}
    return {
        "rounds": rates,
        "best": best,
        "median": {lib: statistics.median(v) for lib, v in rates.items()},
        "nacl_over_cryptography_best": best["nacl"] / best["cryptography"],
    }


def _ingest(args: argparse.Namespace) -> dict[str, object]:
    runs: dict[str, list[dict[str, object]]] = {name: [] for name in args.variants}
    for r in range(args.rounds):
        for name in args.variants:
            v = VARIANTS[name]
            result = bench_ingest.run(
                args.agents,
                args.reports,
                timeout=args.timeout,
                verify_threads=v.verify_threads,
                ingest_processes=v.ingest_processes,
                batch=v.batch,
                loop=v.loop,
                verifier=v.verifier,
            ).to_dict()
            runs[name].append(result)
            print(
                f"round {r + 1} {name:22s} {result['reports_per_second']:8.0f} reports/s"
                f"  ratio {result['ratio']:.2f}  loop {result['loop_cpu_us_per_report']:5.0f} us"
                f"  collector {result['collector_cpu_us_per_report']:5.0f} us/report"
                f"  load {result['load_average_1m']:.1f}",
                file=sys.stderr,
                flush=True,
            )
    summary = {}
    for name, got in runs.items():
        summary[name] = {
            key: statistics.median(float(x[key]) for x in got)  # type: ignore[arg-type]
            for key in (
                "reports_per_second",
                "ratio",
                "raw_verify_per_second",
                "loop_cpu_us_per_report",
                "collector_cpu_us_per_report",
            )
        }
    return {"median": summary, "runs": runs}


def _fleet(args: argparse.Namespace) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for nodes in args.nodes:
        for name in args.variants:
            v = VARIANTS[name]
            result = bench_fleet.run(
                nodes,
                args.duration,
                warmup=args.warmup,
                verify_threads=v.verify_threads,
                ingest_processes=v.ingest_processes,
                generators=args.generators,
                loop=v.loop,
                verifier=v.verifier,
            ).to_dict()
            out.setdefault(name, []).append(result)
            print(
                f"{nodes:6d} nodes {name:22s} ack p50 {result['ack_latency_p50_ms']:7.1f} ms"
                f"  p99 {result['ack_latency_p99_ms']:7.1f} ms"
                f"  collector {result['collector_cpu_percent_of_machine']:5.1f} % of the machine"
                f"  (loop {result['loop_cpu_percent']:5.1f} % of a core)"
                f"  generators {result['generator_cpu_percent']:5.1f} %"
                f"  load {result['load_average_1m']:.1f}",
                file=sys.stderr,
                flush=True,
            )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    v = sub.add_parser("verify", help="raw Ed25519: cryptography next to PyNaCl")
    v.add_argument("--rounds", type=int, default=5)
    v.add_argument("--seconds", type=float, default=0.5)
    i = sub.add_parser("ingest", help="reports/s and the ratio, per variant")
    i.add_argument("--agents", type=int, default=64)
    i.add_argument("--reports", type=int, default=250, help="reports per agent")
    i.add_argument("--rounds", type=int, default=3)
    i.add_argument("--timeout", type=float, default=300.0)
    i.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["before", "procs2"])
    f = sub.add_parser("fleet", help="N nodes at 1 Hz: ack p99 and collector CPU")
    f.add_argument("--nodes", type=int, nargs="+", default=[1000, 2000, 5000])
    f.add_argument("--duration", type=float, default=20.0)
    f.add_argument("--warmup", type=float, default=10.0)
    f.add_argument("--generators", type=int, default=4)
    f.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["before", "procs2"])
    args = p.parse_args(argv)
    result: dict[str, object] = {"machine": machine()}
    if args.mode == "verify":
        result["verify"] = _verify(args.rounds, args.seconds)
    elif args.mode == "ingest":
        result["verify"] = _verify(3, 0.3)
        result["ingest"] = _ingest(args)
    else:
        result["fleet"] = _fleet(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
