"""Applying and releasing a directive's hold on GPUs and processes.

``Holds`` plans every change in the ``EnforcementRecord`` first (including the
compute mode and power limit found before the first change), saves the record,
and only then touches the hardware: a crash between the two leaves a record
that the restarted agent re-applies, never a change it cannot undo.

Targets come from a GPU snapshot whose processes carry their attributed jobs:
CLUSTER/NODE scope: every GPU on the node and every process on them; JOB
scope: the processes of the named jobs and the GPUs they run on; ACTOR scope:
the processes whose ``actor`` is named, and their GPUs; GPU scope: the named
GPUs and every process on them. On a MIG-enabled GPU the compute mode is held
on its MIG devices and the power limit on the GPU (``agent.enforce.mig``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from agent.enforce.actions import GpuActions, ProcessController, Target, step
from agent.enforce.mig import devices_by_parent, hold_targets, own_processes
from agent.enforce.state import ActiveDirective, EnforcementRecord, GpuHold, Stopped
from agent.nvml.backend import PowerLimits, Snapshot
from protos.actors import UNKNOWN_ACTOR, actor_key
from protos.computewatch.v1 import control_pb2, telemetry_pb2

log = logging.getLogger(__name__)

Step = telemetry_pb2.EnforcementStep
PROHIBITED = telemetry_pb2.COMPUTE_MODE_PROHIBITED
# Tries to re-apply a held GPU's mode or cap that keeps drifting, before giving up
# (the failures are in the receipts and the log).
MAX_REASSERT = 3


@dataclass(frozen=True)
class Resolved:
    gpus: list[telemetry_pb2.GpuSample]
    processes: list[telemetry_pb2.GpuProcess]


def resolve(
    scope_kind: int,
    job_ids: list[str],
    gpu_uuids: list[str],
    snapshot: Snapshot,
    *,
    actor_ids: list[str] | None = None,
) -> Resolved:
    """The GPUs and processes a scope covers on this node."""
    present = [g for g in snapshot.gpus if g.health != telemetry_pb2.GPU_HEALTH_LOST]
    if scope_kind == control_pb2.SCOPE_KIND_ACTOR:
        # An empty actor is "unknown" (protos.actors): an unknown-actor halt holds
        # the processes no source names, and a named actor's never holds them.
        actors = {a or UNKNOWN_ACTOR for a in actor_ids or ()}
        gpus = [g for g in present if any(actor_key(p.actor) in actors for p in g.processes)]
        procs = [p for g in gpus for p in g.processes if actor_key(p.actor) in actors]
        return Resolved(gpus, procs)
    if scope_kind == control_pb2.SCOPE_KIND_JOB:
        jobs = set(job_ids)
        # A MIG parent lists its devices' processes too: the job's devices are the target.
        split = devices_by_parent(snapshot)
        gpus = [
            g for g in present if g.uuid not in split and any(p.job_id in jobs for p in g.processes)
        ]
        procs = [p for p in own_processes(gpus, snapshot) if p.job_id in jobs]
        return Resolved(gpus, procs)
    if scope_kind == control_pb2.SCOPE_KIND_GPU:
        wanted = set(gpu_uuids)
        present = [g for g in present if g.uuid in wanted]
    return Resolved(present, own_processes(present, snapshot))


def original_mode(mode: int) -> telemetry_pb2.ComputeMode:
    """The mode to restore; one that was unknown before the halt becomes DEFAULT."""
    for known in _MODES:
        if mode == known:
            return known
    return telemetry_pb2.COMPUTE_MODE_DEFAULT


_MODES = (
    telemetry_pb2.COMPUTE_MODE_DEFAULT,
    telemetry_pb2.COMPUTE_MODE_EXCLUSIVE_THREAD,
    telemetry_pb2.COMPUTE_MODE_PROHIBITED,
    telemetry_pb2.COMPUTE_MODE_EXCLUSIVE_PROCESS,
)


class Holds:
    """Applies and releases holds, recording them in ``record``."""

    def __init__(
        self,
        record: EnforcementRecord,
        gpu: GpuActions,
        processes: ProcessController,
        save: Callable[[], None],
    ) -> None:
        self.record = record
        self._gpu = gpu
        self._proc = processes
        self._save = save
        # (directive id, GPU uuid) pairs tried since start: a GPU whose limits
        # cannot be read is not retried (and reported) on every tick.
        self._tried: set[tuple[str, str]] = set()
        # GPU uuid -> consecutive re-assertions of a drifted mode or cap.
        self._reasserts: dict[str, int] = {}

    # --- apply ---------------------------------------------------------------------
    def apply(self, a: ActiveDirective, snapshot: Snapshot, *, save: bool = False) -> list[Step]:
        """Hold what ``a`` covers in ``snapshot`` and is not held by ``a`` yet.

        HALT: compute mode PROHIBITED, processes stopped, power capped to the
        GPU's minimum. THROTTLE: power capped to ``a.power_cap_watts`` clamped
        to the GPU's [min, max]. Returns the steps taken (empty: nothing new).
        """
        rec = self.record
        found = resolve(a.scope_kind, a.job_ids, a.gpu_uuids, snapshot, actor_ids=a.actor_ids)
        notes: list[Step] = []
        prohibit: list[str] = []
        capped: list[tuple[str, str]] = []
        for target in hold_targets(found.gpus, snapshot):
            g = target.gpu
            hold = rec.gpus.get(g.uuid)
            if (a.id, g.uuid) in self._tried or (
                hold is not None and (a.id in hold.prohibit or a.id in hold.caps)
            ):
                continue
            self._tried.add((a.id, g.uuid))
            limits = self._gpu.limits(g.uuid) if target.power else None
            if hold is None:
                current = limits.current_watts if isinstance(limits, PowerLimits) else None
                hold = GpuHold(original_mode=int(g.compute_mode), original_power_watts=current)
                rec.gpus[g.uuid] = hold
            if a.is_halt and target.mode:
                hold.prohibit.append(a.id)
                prohibit.append(g.uuid)
            if isinstance(limits, PowerLimits):
                cap, note = _cap_for(a, limits)
                hold.caps[a.id] = cap
                capped.append((g.uuid, note))
            elif limits is not None:
                notes.append(step("power_cap", g.uuid, False, f"limits unreadable: {limits}"))
            if hold.empty():
                del rec.gpus[g.uuid]
        new_targets: list[Target] = []
        if a.is_halt:
            fresh = [p for p in found.processes if not self._holds_process(a.id, p)]
            for t in self._proc.plan(fresh):
                held = rec.stopped.get(t.key)
                if held is None:
                    rec.stopped[t.key] = Stopped(
                        t.kind, t.job, t.pid, t.method, t.start_time, [a.id], t.cgroup
                    )
                    new_targets.append(t)
                elif a.id not in held.holders:
                    held.holders.append(a.id)
                    notes.append(step("stop_process", t.label, True, "already stopped"))
        if save or prohibit or capped or new_targets or notes:
            self._save()
        steps = [self._gpu.set_mode(u, PROHIBITED) for u in prohibit]
        steps += [self._proc.stop(t) for t in new_targets]
        steps += [self._set_cap(u, note) for u, note in capped]
        return steps + notes

    def _holds_process(self, directive_id: str, p: telemetry_pb2.GpuProcess) -> bool:
        """``directive_id`` already holds this pid or its job (skip re-planning it)."""
        for key in (f"pid:{p.pid}", f"job:{p.job_id}", f"job:{p.member}"):
            held = self.record.stopped.get(key)
            if held is not None and directive_id in held.holders:
                return True
        return False

    # --- keeping held GPUs held ---------------------------------------------------------
    def reassert(self, snapshot: Snapshot) -> dict[str, list[Step]]:
        """Set again a held GPU's mode or cap that ``snapshot`` shows changed behind
        our back (a driver reload, an administrator). Steps per holding directive;
        at most ``MAX_REASSERT`` tries per GPU until the snapshot shows it held.
        GPUs this agent changed since the last call are skipped: the snapshot may
        predate the change."""
        out: dict[str, list[Step]] = {}
        recent, self._gpu.touched = self._gpu.touched, set()
        for g in snapshot.gpus:
            hold = self.record.gpus.get(g.uuid)
            if hold is None or g.uuid in recent or g.health == telemetry_pb2.GPU_HEALTH_LOST:
                continue
            drifted: list[Step] = []
            mode_off = bool(hold.prohibit) and g.compute_mode not in (
                PROHIBITED,
                telemetry_pb2.COMPUTE_MODE_UNSPECIFIED,
            )
            cap = _lowest(hold)
            cap_off = (
                cap != float("inf")
                and g.HasField("power_limit_watts")
                and g.power_limit_watts > cap + 1.0
            )
            if not (mode_off or cap_off):
                self._reasserts.pop(g.uuid, None)
                continue
            tries = self._reasserts.get(g.uuid, 0)
            if tries >= MAX_REASSERT:
                continue
            self._reasserts[g.uuid] = tries + 1
            if mode_off:
                log.warning("%s: compute mode changed under a halt; prohibiting again", g.uuid)
                drifted.append(self._gpu.set_mode(g.uuid, PROHIBITED))
            if cap_off:
                log.warning("%s: power limit raised under a cap; capping again", g.uuid)
                drifted.append(self._gpu.set_power(g.uuid, cap, note=" (re-applied)"))
            owner = hold.prohibit[0] if hold.prohibit else min(hold.caps, key=hold.caps.__getitem__)
            out.setdefault(owner, []).extend(drifted)
        return out

    def _set_cap(self, uuid: str, note: str) -> Step:
        hold = self.record.gpus[uuid]
        return self._gpu.set_power(uuid, _lowest(hold), note=note)

    # --- release -------------------------------------------------------------------
    def release(self, directive_id: str) -> list[Step]:
        """Undo exactly what ``directive_id`` holds; what other directives hold stays."""
        rec = self.record
        if rec.active.pop(directive_id, None) is None:
            self._save()
            return [step("resume", directive_id, True, "not in force on this node")]
        power: list[tuple[str, float, str]] = []
        modes: list[tuple[str, telemetry_pb2.ComputeMode]] = []
        for uuid, hold in list(rec.gpus.items()):
            had_prohibit = directive_id in hold.prohibit
            had_cap = hold.caps.pop(directive_id, None) is not None
            if had_prohibit:
                hold.prohibit.remove(directive_id)
                if not hold.prohibit:
                    modes.append((uuid, original_mode(hold.original_mode)))
            if had_cap:
                lowest = _lowest(hold)
                if lowest != float("inf"):
                    power.append((uuid, lowest, "power_cap"))
                elif hold.original_power_watts is not None:
                    power.append((uuid, hold.original_power_watts, "restore_power_limit"))
            if hold.empty():
                del rec.gpus[uuid]
            self._tried.discard((directive_id, uuid))
        resume: list[Stopped] = []
        for key, s in list(rec.stopped.items()):
            if directive_id in s.holders:
                s.holders.remove(directive_id)
                if not s.holders:
                    del rec.stopped[key]
                    resume.append(s)
        self._save()
        steps = [self._gpu.set_power(u, w, name) for u, w, name in power]
        steps += [self._gpu.set_mode(u, m, "restore_compute_mode") for u, m in modes]
        steps += [self._proc.resume(_target(s)) for s in resume]
        return steps

    # --- restart ---------------------------------------------------------------------
    def reapply(self, a: ActiveDirective) -> list[Step]:
        """After a restart: set again what ``a`` holds (the driver or a reboot may
        have reset it). Stopped pids get SIGSTOP again only if they are the same
        processes; scheduler-suspended jobs stay with the scheduler."""
        steps: list[Step] = []
        for uuid, hold in sorted(self.record.gpus.items()):
            if a.id in hold.prohibit:
                steps.append(self._gpu.set_mode(uuid, PROHIBITED))
            if a.id in hold.caps and _lowest(hold) != float("inf"):
                steps.append(self._gpu.set_power(uuid, _lowest(hold)))
        for s in self.record.stopped.values():
            if a.id in s.holders and s.method == "signal" and s.kind == "pid":
                steps.append(self._proc.stop(_target(s)))
        return steps


def _lowest(hold: GpuHold) -> float:
    return min(hold.caps.values(), default=float("inf"))


def _cap_for(a: ActiveDirective, limits: PowerLimits) -> tuple[float, str]:
    if a.is_halt:
        return limits.min_watts, " (the GPU's minimum)"
    wanted = a.power_cap_watts
    cap = min(max(wanted, limits.min_watts), limits.max_watts)
    if cap != wanted:
        return cap, (
            f" (asked {wanted:.0f} W, clamped to"
            f" [{limits.min_watts:.0f}, {limits.max_watts:.0f}] W)"
        )
    return cap, ""


def _target(s: Stopped) -> Target:
    return Target(s.kind, s.job, s.pid, s.method, s.start_time, s.cgroup)
