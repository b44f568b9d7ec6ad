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
- the energy counter and the GPM counters integrate over clock time.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agent.fakenvml.spec import GpuSpec, Job, Node, Scenario

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


def gpu_uuid(node_id: str, index: int) -> str:
    """Deterministic NVML-style UUID of a simulated GPU."""
    return f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{node_id}/{index}')}"


def pid_for(scenario: Scenario, job: Job, pids: Mapping[str, int] | None) -> int:
    """The pid of ``job``'s process on a node: ``pids[job.id]`` or a synthetic one."""
    if pids is not None and job.id in pids:
        return pids[job.id]
    return SYNTHETIC_PID_BASE + scenario.jobs.index(job)


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
    admitted: frozenset[str] | None = field(default=None)

    @property
    def index(self) -> int:
        return self.spec.index

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
            breaks = sorted(
                {j.start for j, _ in on_gpu}
                | {j.end for j, _ in on_gpu if j.end is not None}
                | {j.start + t for j, _ in on_gpu for t, _ in j.utilization}
            )
            self.gpus.append(
                GpuState(
                    spec=spec,
                    uuid=gpu_uuid(node.id, spec.index),
                    power_limit_watts=spec.model.tdp_watts,
                    modes=[(float("-inf"), MODE_DEFAULT)],
                    jobs=on_gpu,
                    breakpoints=tuple(breaks),
                    energy_mj=spec.model.idle_watts * _ENERGY_BASE_SECONDS * 1000.0,
                )
            )

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
        """(job, pid, state) of every process listed on ``g`` at ``t``."""
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
        model = g.spec.model
        span = model.tdp_watts - model.idle_watts
        limit = g.enforced_limit_watts
        if span <= 0 or limit >= model.tdp_watts:
            return 1.0
        return max(0.0, min(1.0, (limit - model.idle_watts) / span))

    def _levels(
        self, g: GpuState, t: float, procs: list[tuple[Job, int, str]]
    ) -> tuple[float, float, float, float]:
        """(utilization, sm, tensor, power watts) at ``t`` for the given processes."""
        raw = tensor = 0.0
        for job, _, state in procs:
            if state == "stopped" or not job.running_at(t):
                continue
            u = job.utilization_at(t - job.start)
            raw += u
            tensor += u * job.tensor_fraction
        scale = self._scale(g)
        util = min(raw, 100.0)
        if raw > 0:
            tensor *= util / raw
        util *= scale
        tensor *= scale
        model = g.spec.model
        power = model.idle_watts + (model.tdp_watts - model.idle_watts) * util / 100.0
        return util, util * SM_FRACTION, tensor, min(power, g.enforced_limit_watts)

    def activity(self, g: GpuState, t: float) -> Activity:
        procs = self.processes(g, t)
        util, sm, tensor, power = self._levels(g, t, procs)
        model = g.spec.model
        if util > 0:
            clock = round(model.max_sm_clock_mhz * (0.5 + 0.5 * self._scale(g)))
        else:
            clock = model.idle_sm_clock_mhz
        memory = sum(int(job.memory_gib * 1024**3) for job, _, _ in procs)
        return Activity(util, sm, tensor, power, clock, min(memory, model.memory_bytes))

    def advance(self, g: GpuState, t: float) -> None:
        """Integrate energy and activity from the last advance up to ``t``.

        Process states are read once (now) and held over the interval.
        """
        if t <= g.last_t:
            return
        procs = [(job, pid, self._state_of(pid)) for job, pid in g.jobs]
        admitted = self._admitted(g)
        procs = [p for p in procs if p[0].id in admitted and p[2] != "gone"]
        edges = [g.last_t, *(b for b in g.breakpoints if g.last_t < b < t), t]
        for a, b in itertools.pairwise(edges):
            step = (b - a) / _SUBSTEPS
            # The last point is just inside the segment, so a job ending at b counts up to b.
            xs = [a + step * k for k in range(1, _SUBSTEPS)] + [math.nextafter(b, a)]
            prev = self._levels(g, a, procs)
            for x in xs:
                cur = self._levels(g, x, procs)
                g.util_integral += (prev[0] + cur[0]) / 2 * step
                g.sm_integral += (prev[1] + cur[1]) / 2 * step
                g.tensor_integral += (prev[2] + cur[2]) / 2 * step
                g.energy_mj += (prev[3] + cur[3]) / 2 * step * 1000.0
                prev = cur
        g.last_t = t
