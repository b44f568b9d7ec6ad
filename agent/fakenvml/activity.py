"""What a simulated node's GPUs are doing at a given moment.

The model (documented in ``deploy/scenarios/README.md``):

- a GPU's utilization is the sum of the utilization timelines of the jobs whose
  process runs on it, capped at 100 %;
- GPM tensor activity is each job's utilization x its ``tensor_fraction``
  (scaled down with the cap); GPM SM activity is utilization x ``SM_FRACTION``
  (0.9: a busy kernel rarely keeps every SM busy);
- a process whose state is ``"stopped"`` contributes nothing but keeps its
  memory; ``"gone"`` is not listed at all;
- a job's process is refused (never appears on that GPU) when the GPU's
  compute mode at the job's start was PROHIBITED, or EXCLUSIVE_PROCESS with
  another process already there;
- a power limit below TDP (the enforced one: the lower of the management limit
  and an out-of-band limit) scales activity by ``(limit - idle) / (tdp - idle)``
  (floored at 0); power = idle + (tdp - idle) x utilization, never above the
  limit; the SM clock falls with the same factor;
- each GPM pipe (DFMA/HMMA/IMMA tensor, FP64/FP32/FP16) is utilization x the
  job's ``precision`` fraction for it, scaled like tensor activity;
- a MIG device is its own state (mode history, admission, processes, GPM
  counters) for the jobs placed on it; the parent GPU's activity, power and
  energy are the sum of its MIG devices' utilization x their SM share;
- the energy counter, the GPM counters and the driver's utilization sample
  buffer (``nvmlDeviceGetSamples``, one sample per ``SAMPLE_PERIOD``)
  integrate over clock time.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from agent.fakenvml.spec import PIPES, GpuSpec, Job, MigSlice, Node, Scenario

# NVML compute modes (pynvml's NVML_COMPUTEMODE_*).
MODE_DEFAULT = 0
MODE_PROHIBITED = 2
MODE_EXCLUSIVE_PROCESS = 3

SM_FRACTION = 0.9
SYNTHETIC_PID_BASE = 200_000
_UUID_NAMESPACE = uuid.UUID("0b7c5e0e-54a4-4bb0-8c55-1d1f5a4c9e7a")
# Trapezoids per segment between breakpoints when integrating.
_SUBSTEPS = 4
# The energy counter starts as if the board had idled for a day since the driver loaded.
_ENERGY_BASE_SECONDS = 86_400.0
# nvmlUtilization_t (nvml.h): "The sample period may be between 1 second and 1/6
# second depending on the product": the fake's driver samples every 1/6 s and
# keeps the last SAMPLE_BUFFER samples (nvml.h does not document the size).
SAMPLE_PERIOD = 1.0 / 6.0
SAMPLE_BUFFER = 120


def mig_uuid(node_id: str, index: int, mig: MigSlice) -> str:
    """Deterministic NVML-style UUID of a simulated MIG device."""
    return f"MIG-{uuid.uuid5(_UUID_NAMESPACE, f'{node_id}/{index}/mig{mig.index}')}"


def gpu_uuid(node_id: str, index: int) -> str:
    """Deterministic NVML-style UUID of a simulated GPU."""
    return f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{node_id}/{index}')}"


def pid_for(scenario: Scenario, job: Job, pids: Mapping[str, int] | None) -> int:
    """The pid of ``job``'s process on a node: ``pids[job.id]`` or a synthetic one."""
    if pids is not None and job.id in pids:
        return pids[job.id]
    return SYNTHETIC_PID_BASE + scenario.jobs.index(job)


class Levels(NamedTuple):
    """Instantaneous levels: percentages, watts, and per-pipe percentages (``PIPES``)."""

    utilization: float
    sm: float
    tensor: float
    power: float
    pipes: tuple[float, ...]
    # Each given process's contribution to utilization, percent (same order as
    # the processes; empty when not asked for).
    per_proc: tuple[float, ...] = ()


_IDLE_PIPES = (0.0,) * len(PIPES)


@dataclass(frozen=True)
class Activity:
    utilization: float
    sm: float
    tensor: float
    power_watts: float
    sm_clock_mhz: int
    memory_used_bytes: int


@dataclass
class GpuState:
    spec: GpuSpec
    uuid: str
    power_limit_watts: float
    # (scenario time, NVML compute mode), oldest first; the first entry is the initial mode.
    modes: list[tuple[float, int]]
    jobs: list[tuple[Job, int]]
    breakpoints: tuple[float, ...]
    last_t: float = 0.0
    energy_mj: float = 0.0
    util_integral: float = 0.0
    sm_integral: float = 0.0
    tensor_integral: float = 0.0
    pipe_integrals: list[float] = field(default_factory=lambda: [0.0] * len(PIPES))
    pid_integrals: dict[int, float] = field(default_factory=dict)
    # Utilization sample buffer: (scenario time, util integral, pid integrals).
    grid: deque[tuple[float, float, dict[int, float]]] = field(
        default_factory=lambda: deque([(0.0, 0.0, {})], maxlen=SAMPLE_BUFFER + 1)
    )
    admitted: frozenset[str] | None = field(default=None)
    # A MIG device: its slice and its parent GPU; a MIG parent: its devices.
    mig: MigSlice | None = None
    parent: GpuState | None = None
    slices: list[GpuState] = field(default_factory=list)

    @property
    def index(self) -> int:
        return self.spec.index

    @property
    def memory_bytes(self) -> int:
        return self.mig.memory_bytes if self.mig else self.spec.model.memory_bytes

    @property
    def sm_share(self) -> float:
        """Share of the parent's SMs (about g/7, MIG user guide); 1 for a whole GPU."""
        return self.mig.sms / self.spec.mig_full_sms if self.mig else 1.0

    @property
    def enforced_limit_watts(self) -> float:
        """nvml.h nvmlDeviceGetEnforcedPowerLimit: "the effective power limit that the
        driver enforces after taking into account all limiters" (the management
        limit and, here, an out-of-band limit)."""
        external = self.spec.external_power_limit_watts
        return self.power_limit_watts if external is None else min(self.power_limit_watts, external)

    def mode_at(self, t: float) -> int:
        mode = self.modes[0][1]
        for when, m in self.modes:
            if when <= t:
                mode = m
        return mode


class NodeModel:
    """The simulated GPUs of one node, advanced in scenario time."""

    def __init__(
        self,
        scenario: Scenario,
        node: Node,
        pids: Mapping[str, int] | None,
        process_state: Callable[[int], str],
    ) -> None:
        self.node = node
        self._state_of = process_state
        jobs = scenario.jobs_on(node.id)
        self.gpus: list[GpuState] = []
        for spec in node.gpus:
            on_gpu = [
                (j, pid_for(scenario, j, pids)) for j in jobs if spec.index in j.gpus_on(node)
            ]
            g = GpuState(
                spec=spec,
                uuid=gpu_uuid(node.id, spec.index),
                power_limit_watts=spec.model.tdp_watts,
                modes=[(float("-inf"), MODE_DEFAULT)],
                jobs=on_gpu,
                breakpoints=_breaks(on_gpu),
                energy_mj=spec.model.idle_watts * _ENERGY_BASE_SECONDS * 1000.0,
            )
            if spec.mig:
                for mig in spec.mig_slices:
                    mine = [(j, pid) for j, pid in on_gpu if j.mig_slice == mig.index]
                    g.slices.append(
                        GpuState(
                            spec=spec,
                            uuid=mig_uuid(node.id, spec.index, mig),
                            power_limit_watts=spec.model.tdp_watts,
                            modes=[(float("-inf"), MODE_DEFAULT)],
                            jobs=mine,
                            breakpoints=_breaks(mine),
                            mig=mig,
                            parent=g,
                        )
                    )
            self.gpus.append(g)

    # --- enforcement ---------------------------------------------------------
    def set_mode(self, g: GpuState, t: float, mode: int) -> None:
        self.advance(g, t)
        g.modes.append((t, mode))
        g.admitted = None

    def set_power_limit(self, g: GpuState, t: float, watts: float) -> None:
        self.advance(g, t)
        g.power_limit_watts = watts

    # --- processes -------------------------------------------------------------
    def _admitted(self, g: GpuState) -> frozenset[str]:
        """Jobs whose context creation on ``g`` succeeded, given the mode history."""
        if g.admitted is None:
            ok: list[Job] = []
            for job, _ in sorted(g.jobs, key=lambda jp: jp[0].start):
                mode = g.mode_at(job.start)
                if mode == MODE_PROHIBITED:
                    continue
                if mode == MODE_EXCLUSIVE_PROCESS and any(o.running_at(job.start) for o in ok):
                    continue
                ok.append(job)
            g.admitted = frozenset(j.id for j in ok)
        return g.admitted

    def processes(self, g: GpuState, t: float) -> list[tuple[Job, int, str]]:
        """(job, pid, state) of every process listed on ``g`` at ``t``.

        A MIG parent lists its MIG devices' processes (nvml.h: with a parent
        handle in MIG mode the process list is the aggregate)."""
        if g.slices:
            return [p for s in g.slices for p in self.processes(s, t)]
        admitted = self._admitted(g)
        out = []
        for job, pid in g.jobs:
            if job.id in admitted and job.running_at(t):
                state = self._state_of(pid)
                if state != "gone":
                    out.append((job, pid, state))
        return out

    # --- activity ------------------------------------------------------------------
    def _scale(self, g: GpuState) -> float:
        board = g.parent or g  # a MIG device runs under its parent's power limit
        model = board.spec.model
        span = model.tdp_watts - model.idle_watts
        limit = board.enforced_limit_watts
        if span <= 0 or limit >= model.tdp_watts:
            return 1.0
        return max(0.0, min(1.0, (limit - model.idle_watts) / span))

    def _levels(
        self, g: GpuState, t: float, procs: list[tuple[Job, int, str]], *, detail: bool = False
    ) -> Levels:
        """The levels of ``g`` at ``t`` for the given processes (a MIG parent: its
        devices'). ``detail``: also the pipes and, off MIG, each process's share."""
        model = g.spec.model
        if g.slices:
            parts = [
                (s.sm_share, self._levels(s, t, self._current(s), detail=detail)) for s in g.slices
            ]
            util = sum(w * lv.utilization for w, lv in parts)
            pipes = _IDLE_PIPES
            if detail:
                pipes = tuple(sum(w * lv.pipes[i] for w, lv in parts) for i in range(len(PIPES)))
            power = model.idle_watts + (model.tdp_watts - model.idle_watts) * util / 100.0
            return Levels(
                util,
                util * SM_FRACTION,
                sum(w * lv.tensor for w, lv in parts),
                min(power, g.enforced_limit_watts),
                pipes,
            )
        raw = tensor = 0.0
        per_proc = [0.0] * len(procs)
        pipes_raw = [0.0] * len(PIPES) if detail else []
        for k, (job, _, state) in enumerate(procs):
            if state == "stopped" or not job.running_at(t):
                continue
            u = job.utilization_at(t - job.start)
            raw += u
            tensor += u * job.tensor_fraction
            per_proc[k] = u
            if detail:
                for i, f in enumerate(job.precision):
                    pipes_raw[i] += u * f
        scale = self._scale(g)
        util = min(raw, 100.0)
        factor = scale * (util / raw if raw > 0 else 0.0)
        util *= scale
        power = model.idle_watts + (model.tdp_watts - model.idle_watts) * util / 100.0
        # nvml.h: process utilization is not supported under MIG: no per-process detail there.
        shares = detail and not g.spec.mig and raw > 0
        return Levels(
            util,
            util * SM_FRACTION,
            tensor * factor,
            min(power, g.enforced_limit_watts),
            tuple(p * factor for p in pipes_raw) if detail and raw > 0 else _IDLE_PIPES,
            tuple(u * factor for u in per_proc) if shares else (),
        )

    def _current(self, g: GpuState) -> list[tuple[Job, int, str]]:
        """Every admitted, not gone process of ``g`` with its state now (any time)."""
        admitted = self._admitted(g)
        procs = [(job, pid, self._state_of(pid)) for job, pid in g.jobs]
        return [p for p in procs if p[0].id in admitted and p[2] != "gone"]

    def activity(self, g: GpuState, t: float) -> Activity:
        procs = self.processes(g, t)
        lv = self._levels(g, t, procs)
        model = g.spec.model
        if lv.utilization > 0:
            clock = round(model.max_sm_clock_mhz * (0.5 + 0.5 * self._scale(g)))
        else:
            clock = model.idle_sm_clock_mhz
        memory = sum(int(job.memory_gib * 1024**3) for job, _, _ in procs)
        return Activity(
            lv.utilization, lv.sm, lv.tensor, lv.power, clock, min(memory, g.memory_bytes)
        )

    def advance(self, g: GpuState, t: float) -> None:
        """Integrate energy and activity from the last advance up to ``t``.

        Process states are read once (now) and held over the interval.
        """
        if t <= g.last_t:
            return
        procs = self._current(g)
        breaks = g.breakpoints
        if g.slices:
            breaks = tuple(sorted({b for s in g.slices for b in s.breakpoints}))
        # Driver sample times in (last_t, t]: recorded on the way by interpolating
        # within a substep (levels are linear there), not as extra integration edges.
        grid = sorted(_grid_points(g.last_t, t))
        pids = [pid for _, pid, _ in procs]
        edges = [g.last_t, *(b for b in breaks if g.last_t < b < t), t]
        for a, b in itertools.pairwise(edges):
            step = (b - a) / _SUBSTEPS
            # The last point is just inside the segment, so a job ending at b counts up to b.
            xs = [a + step * k for k in range(1, _SUBSTEPS)] + [math.nextafter(b, a)]
            prev = self._levels(g, a, procs, detail=True)
            x0 = a
            for k, x in enumerate(xs):
                cur = self._levels(g, x, procs, detail=True)
                upto = b if k == len(xs) - 1 else x
                while grid and grid[0] <= upto:
                    self._record(g, grid.pop(0), pids, x0=x0, step=step, prev=prev, cur=cur)
                self._integrate(g, step, pids, prev, cur)
                prev, x0 = cur, x0 + step
        g.last_t = t

    @staticmethod
    def _integrate(g: GpuState, step: float, pids: list[int], prev: Levels, cur: Levels) -> None:
        g.util_integral += (prev.utilization + cur.utilization) / 2 * step
        g.sm_integral += (prev.sm + cur.sm) / 2 * step
        g.tensor_integral += (prev.tensor + cur.tensor) / 2 * step
        g.energy_mj += (prev.power + cur.power) / 2 * step * 1000.0
        for i in range(len(PIPES)):
            g.pipe_integrals[i] += (prev.pipes[i] + cur.pipes[i]) / 2 * step
        if prev.per_proc or cur.per_proc:
            before = prev.per_proc or (0.0,) * len(pids)
            now = cur.per_proc or (0.0,) * len(pids)
            ints = g.pid_integrals
            for pid, p, c in zip(pids, before, now, strict=True):
                ints[pid] = ints.get(pid, 0.0) + (p + c) / 2 * step

    @staticmethod
    def _record(
        g: GpuState,
        at: float,
        pids: list[int],
        *,
        x0: float,
        step: float,
        prev: Levels,
        cur: Levels,
    ) -> None:
        """Append the driver's sample at ``at`` (in the substep from ``x0``) to the buffer."""
        width = max(0.0, min(at - x0, step))
        frac = width / step if step > 0 else 0.0

        def area(p: float, c: float) -> float:
            return (p + (p + (c - p) * frac)) / 2 * width

        util = g.util_integral + area(prev.utilization, cur.utilization)
        ints = dict(g.pid_integrals)
        if prev.per_proc or cur.per_proc:
            before = prev.per_proc or (0.0,) * len(pids)
            now = cur.per_proc or (0.0,) * len(pids)
            for pid, p, c in zip(pids, before, now, strict=True):
                ints[pid] = ints.get(pid, 0.0) + area(p, c)
        g.grid.append((at, util, ints))


def _breaks(jobs: list[tuple[Job, int]]) -> tuple[float, ...]:
    return tuple(
        sorted(
            {j.start for j, _ in jobs}
            | {j.end for j, _ in jobs if j.end is not None}
            | {j.start + t for j, _ in jobs for t, _ in j.utilization}
        )
    )


def _grid_points(after: float, upto: float) -> set[float]:
    """The driver's sample times in (after, upto], at most the buffer's worth."""
    last = math.floor(upto / SAMPLE_PERIOD)
    first = max(math.floor(after / SAMPLE_PERIOD) + 1, last - SAMPLE_BUFFER)
    return {k * SAMPLE_PERIOD for k in range(max(first, 0), last + 1)}
