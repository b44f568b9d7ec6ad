"""The halt benchmark's agent hosts (the collector's process is
``bench.halt_collector``) and the little protocol both speak with the parent.

An agent host runs a few hundred real ``agent.runner.Agent`` objects in one
event loop, each with its own key, spool, stream, directive verification and
enforcement against ``NvmlBackend(FakeNvml)``, a fake /proc tree for
attribution, and one real stand-in process per node (SIGSTOPped by a halt).
Each agent's directive handler is wrapped only to note when the HALT reached
it and when enforcement returned. A probe task measures event-loop lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_LAG_PROBE_SECONDS = 0.01
_LAG_SAMPLES = 200_000
_STOP_SECONDS = 10.0


def command(conn: Connection) -> object:
    """The parent's next command; its end of the pipe closing means stop."""
    try:
        return conn.recv()
    except EOFError:
        return "stop"


def reply(conn: Connection, msg: object) -> None:
    with contextlib.suppress(OSError):  # the parent gave up on us
        conn.send(msg)


# -- the agents -----------------------------------------------------------------------


@dataclass(frozen=True)
class HostPlan:
    """What one agent host runs (picklable: it crosses to a spawned process)."""

    address: str
    collector_pub: Path
    scenario_file: Path
    scenario: dict[str, Any]
    node_ids: list[str]
    seeds: list[bytes]
    # Seconds after start at which each node's agent starts (spreads their phases).
    phases: list[float]
    trigger: str | None
    gpus: int
    root: Path
    interval: float
    start: float
    ready_timeout: float
    # Write a cProfile of the halt window (from "mark" to "stop") here.
    profile: Path | None = None


@dataclass(frozen=True)
class Arrival:
    directive_id: str
    arrived_ns: int  # the envelope reached the agent's directive handler
    handled_ns: int  # verification and enforcement returned


@dataclass(frozen=True)
class HostReport:
    agents: int
    arrivals: dict[str, Arrival]
    lag_max_seconds: float
    lag_p99_seconds: float
    cpu_seconds: float  # this process, from "mark" to "stop"
    wall_seconds: float
    go_ns: int
    refused: dict[str, int]
    steps_failed: int
    reconnects: int
    reports_dropped: int
    not_acked: list[str]


@dataclass
class _Node:
    node_id: str
    agent: Any
    stop: asyncio.Event
    phase: float
    task: asyncio.Task[None] | None = None
    arrival: Arrival | None = None


@dataclass
class _Gate:
    """The trigger job's GPU process is absent until ``open``."""

    state: Callable[[int], str]
    pid: int = 0
    open: bool = False

    def __call__(self, pid: int) -> str:
        if pid == self.pid and not self.open:
            return "gone"
        return self.state(pid)


@dataclass
class LoopLag:
    samples: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=_LAG_SAMPLES))

    async def probe(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            t = loop.time()
            await asyncio.sleep(_LAG_PROBE_SECONDS)
            self.samples.append((time.time_ns(), loop.time() - t - _LAG_PROBE_SECONDS))

    def since(self, t_ns: int) -> list[float]:
        return sorted(lag for at, lag in self.samples if at >= t_ns)


class ChildStates:
    """``running``, ``stopped`` or ``gone`` of this process's own children
    (the stand-ins), from their wait events rather than ``/proc/<pid>/stat``.

    Same answers as ``computewatch.demo.processes.process_state``, at one
    non-blocking ``waitpid`` per call: the fake NVML asks for every GPU and
    call, and reading /proc (~40 us each) made the simulated agents, not the
    system under test, the bottleneck.
    """

    def __init__(self) -> None:
        self._state: dict[int, str] = {}

    def __call__(self, pid: int) -> str:
        state = self._state.get(pid, "running")
        while state != "gone":
            try:
                got, status = os.waitpid(pid, os.WNOHANG | os.WUNTRACED | os.WCONTINUED)
            except ChildProcessError:
                state = "gone"
                break
            if got == 0:
                break
            if os.WIFSTOPPED(status):
                state = "stopped"
            elif os.WIFCONTINUED(status):
                state = "running"
            else:
                state = "gone"
        self._state[pid] = state
        return state


def agent_host_main(plan: HostPlan, conn: Connection) -> None:
    logging.basicConfig(level=logging.ERROR, format="agent host: %(levelname)s %(message)s")
    asyncio.run(_host(plan, conn))


def _build(plan: HostPlan, stand_ins: Any) -> tuple[list[_Node], _Gate | None]:
    from agent.attribution import JobAttributor
    from agent.config import AgentConfig
    from agent.fakenvml import FakeNvml, parse_scenario
    from agent.fakenvml.procfs import materialize
    from agent.jobmeta import JobMetadataDir
    from agent.nvml.real import NvmlBackend
    from agent.runner import Agent
    from bench.common import key_from_seed

    scenario = parse_scenario(plan.scenario, source=str(plan.scenario_file))
    process_state = ChildStates()
    nodes: list[_Node] = []
    gate: _Gate | None = None
    for node_id, seed, phase in zip(plan.node_ids, plan.seeds, plan.phases, strict=True):
        home = plan.root / node_id
        pids = {job.id: stand_ins.spawn() for job in scenario.jobs_on(node_id)}
        materialize(scenario, node_id, home / "proc", pids, metadata_dir=home / "jobs")
        state: Callable[[int], str] = process_state
        if node_id == plan.trigger:
            gate = _Gate(process_state, pid=next(iter(pids.values())))
            state = gate
        fake = FakeNvml(
            scenario, node_id, clock=time.time, process_state=state, pids=pids, start=plan.start
        )
        config = AgentConfig(
            node_id=node_id,
            key=home / "node.key",  # the key object is passed in; the file is not read
            collector=plan.address,
            collector_key=plan.collector_pub,
            insecure_plaintext=True,  # loopback benchmark
            interval_seconds=plan.interval,
            state_dir=home / "state",
            backend="fake",
            scenario=plan.scenario_file,
            procfs_root=home / "proc",
            job_metadata_dir=home / "jobs",
            scheduler="signal",
            backoff_min_seconds=0.2,
            backoff_max_seconds=2.0,
        )
        agent = Agent(
            config,
            NvmlBackend(fake),
            JobAttributor(home / "proc"),
            JobMetadataDir(home / "jobs"),
            key_from_seed(seed),
            version="bench",
        )
        node = _Node(node_id, agent, asyncio.Event(), phase)
        _instrument(node)
        nodes.append(node)
    return nodes, gate


def _instrument(node: _Node) -> None:
    """Note when the first non-lease directive that took hold reached the agent."""
    enforcement = node.agent.enforcement
    assert enforcement is not None

    async def handle(envelope: bytes) -> None:
        arrived = time.time_ns()
        enforcer = enforcement.enforcer
        before = set(enforcer.record.active) if enforcer is not None else set()
        await enforcement.on_directive(envelope)
        if node.arrival is None and enforcer is not None:
            new = set(enforcer.record.active) - before
            if new:
                node.arrival = Arrival(min(new), arrived, time.time_ns())

    node.agent.set_directive_handler(handle)


async def _start(node: _Node) -> None:
    await asyncio.sleep(node.phase)
    if not node.stop.is_set():
        await node.agent.run(node.stop)


async def _host(plan: HostPlan, conn: Connection) -> None:
    from computewatch.demo.processes import StandIns

    loop = asyncio.get_running_loop()
    stand_ins = StandIns()
    lag, probe_stop = LoopLag(), asyncio.Event()
    try:
        nodes, gate = _build(plan, stand_ins)
        for node in nodes:
            node.task = asyncio.create_task(_start(node))
        probe = asyncio.create_task(lag.probe(probe_stop))
        deadline = time.monotonic() + plan.ready_timeout
        while time.monotonic() < deadline and any(n.agent.stats.acked_sequence < 1 for n in nodes):
            await asyncio.sleep(0.2)
        not_acked = [n.node_id for n in nodes if n.agent.stats.acked_sequence < 1]
        conn.send(("ready", len(nodes) - len(not_acked)))
        go_ns = mark_ns = 0
        profiler = cProfile.Profile() if plan.profile is not None else None
        cpu0 = time.process_time()
        while True:
            cmd = await loop.run_in_executor(None, command, conn)
            if cmd == "mark":
                mark_ns, cpu0 = time.time_ns(), time.process_time()
                if profiler is not None:
                    profiler.enable()
                conn.send("marked")
            elif cmd == "go":
                if gate is None:
                    conn.send("no trigger here")
                    continue
                # The job starts; the trigger's next regular report shows it.
                # (Not an out-of-cycle report: its short interval would make
                # the collector count the node silent within 3 x that
                # interval, see bench/README.md.)
                go_ns = time.time_ns()
                gate.open = True
                conn.send("went")
            else:
                break
        cpu = time.process_time() - cpu0
        if profiler is not None and plan.profile is not None:
            profiler.disable()
            profiler.dump_stats(plan.profile)
        wall = (time.time_ns() - mark_ns) / 1e9 if mark_ns else 0.0
        lags = lag.since(mark_ns)
        report = HostReport(
            agents=len(nodes),
            arrivals={n.node_id: n.arrival for n in nodes if n.arrival is not None},
            lag_max_seconds=lags[-1] if lags else 0.0,
            lag_p99_seconds=lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else 0.0,
            cpu_seconds=cpu,
            wall_seconds=wall,
            go_ns=go_ns,
            refused=_refused(n.agent for n in nodes),
            steps_failed=sum(_steps_failed(n.agent) for n in nodes),
            reconnects=sum(n.agent.stats.stream_reconnects for n in nodes),
            reports_dropped=sum(n.agent.stats.reports_dropped for n in nodes),
            not_acked=not_acked,
        )
        await _stop(nodes)
        probe_stop.set()
        await asyncio.gather(probe, return_exceptions=True)
        reply(conn, report)
    finally:
        stand_ins.close()


def _refused(agents: Iterable[Any]) -> dict[str, int]:
    """Directives refused by verification, by reason, over ``agents``."""
    out: Counter[str] = Counter()
    for agent in agents:
        enforcer = agent.enforcement.enforcer if agent.enforcement is not None else None
        if enforcer is not None:
            out.update(enforcer.verifier.stats.refused)
    return dict(out)


def _steps_failed(agent: Any) -> int:
    enforcer = agent.enforcement.enforcer if agent.enforcement is not None else None
    return 0 if enforcer is None else int(enforcer.stats.steps_failed)


async def _stop(nodes: list[_Node]) -> None:
    for n in nodes:
        n.stop.set()
    tasks = [n.task for n in nodes if n.task is not None]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), _STOP_SECONDS)
