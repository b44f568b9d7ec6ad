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
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import grpc

from bench import halt_collector, halt_hosts, halt_light, halt_setup
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
from bench.halt_collector import CollectorReport
from bench.halt_figures import HaltResult, HaltRun, Hooks, figures
from bench.halt_hosts import HostPlan, HostReport
from protos import dsse
from protos.computewatch.v1 import control_pb2, control_pb2_grpc
from protos.keys import load_private_key, write_public_key

TICKS = (1.0, 0.25, 0.1)
_POLL_SECONDS = 0.25
_SHM = Path("/dev/shm")


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
    load_before = os.getloadavg()[0]
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
                    load_before=load_before,
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
    load_before: float,
) -> HaltRun:
    n = len(wd.node_ids)
    trigger = wd.node_ids[-1]
    proc, conn = start_process(
        halt_collector.collector_main,
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
            gpus=gpus,
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
    steady_hooks = Hooks.between(s0.hooks, s1.hooks)

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
    timeline = halt_setup.read_timeline(wd.config.ledger_path, trigger, go_ns)
    if timeline is None:
        raise BenchError(f"no HALT (or no crossing report) in the ledger within {limit:.0f} s")
    if len(timeline.receipts) < n:
        missing = sorted(set(wd.node_ids) - set(timeline.receipts))
        raise BenchError(
            f"{len(timeline.receipts)} of {n} receipts logged within {limit:.0f} s"
            f" (missing: {missing[:5]}; refusals: {timeline.refusals})"
        )
    return figures(
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
        load_average_1m=load_before,
        note=""
        if timeline.crossing_index in timeline.directive.evidence.log_indices
        else halt_setup.short_nodes(wd.config.ledger_path, timeline.crossing_index, within=tick),
    )


def run(
    agents: int = 1000,
    *,
    ticks: Sequence[float] = TICKS,
    runs: int = 3,
    hosts: int = 3,
    interval: float = 5.0,
    steady: float = 10.0,
    light: bool = False,
    timeout: float | None = None,
    base: Path | None = None,
    agent_base: Path | None = None,
) -> HaltResult:
    """``runs`` fresh fleets at each tick setting (progress on stderr)."""
    if runs < 1 or not ticks:
        raise BenchError("at least 1 run and one tick setting are required")
    done = []
    for tick in ticks:
        for i in range(runs):
            print(
                f"  halt: {agents} {'light responders' if light else 'agents'},"
                f" tick {tick:g} s, run {i + 1}/{runs}",
                file=sys.stderr,
                flush=True,
            )
            done.append(
                run_once(
                    agents,
                    tick,
                    hosts=hosts,
                    interval=interval,
                    steady=steady,
                    light=light,
                    timeout=timeout,
                    base=base,
                    agent_base=agent_base,
                )
            )
    return HaltResult(agents, hosts, interval, done)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--ticks", type=float, nargs="+", default=list(TICKS))
    p.add_argument("--runs", type=int, default=3, help="fresh fleets per tick setting")
    p.add_argument("--hosts", type=int, default=3, help="agent host processes")
    p.add_argument("--interval", type=float, default=5.0, help="agent report interval, s")
    p.add_argument("--steady", type=float, default=10.0, help="steady window before the crossing")
    p.add_argument("--light", action="store_true", help="light responders instead of agents")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    try:
        result = run(
            args.agents,
            ticks=args.ticks,
            runs=args.runs,
            hosts=args.hosts,
            interval=args.interval,
            steady=args.steady,
            light=args.light,
        )
    except BenchError as exc:
        raise SystemExit(f"bench: {exc}") from exc
    text = json.dumps({"machine": machine(), "halt": result.to_dict()}, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
