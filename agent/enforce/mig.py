"""Where a hold's compute mode and power limit go on MIG-enabled GPUs.

nvml.h ``nvmlDeviceSetComputeMode``: "If MIG is enabled on a GPU, device must
be MIG device handle": a PROHIBITED mode on a MIG parent is refused and never
takes effect, so a hold on a MIG parent sets the mode on each of its MIG
devices. The power limit belongs to the physical GPU (a MIG device has none of
its own), so it goes to the parent, also when a scope selects a MIG device on
its own (a job's slice, a GPU scope naming a MIG UUID): as on a whole GPU
shared by two jobs, a job's halt or throttle caps the physical GPU under it.

MIG devices are the snapshot's samples with a ``parent_uuid``; a parent
reports the aggregate of its devices' processes, so its own process list is
not counted again when its devices are present.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.nvml.backend import Snapshot
from protos.computewatch.v1 import telemetry_pb2


@dataclass(frozen=True)
class HoldTarget:
    gpu: telemetry_pb2.GpuSample
    # Set the compute mode on this device / cap this device's power limit.
    mode: bool
    power: bool


def devices_by_parent(snapshot: Snapshot) -> dict[str, list[telemetry_pb2.GpuSample]]:
    out: dict[str, list[telemetry_pb2.GpuSample]] = {}
    for g in snapshot.gpus:
        if g.parent_uuid and g.health != telemetry_pb2.GPU_HEALTH_LOST:
            out.setdefault(g.parent_uuid, []).append(g)
    return out


def hold_targets(gpus: list[telemetry_pb2.GpuSample], snapshot: Snapshot) -> list[HoldTarget]:
    """What to set on which device for the GPUs a scope selected (order kept, no repeats)."""
    devices = devices_by_parent(snapshot)
    out: dict[str, HoldTarget] = {}

    def add(g: telemetry_pb2.GpuSample, mode: bool, power: bool) -> None:
        old = out.get(g.uuid)
        if old is not None:
            mode, power = mode or old.mode, power or old.power
        out[g.uuid] = HoldTarget(g, mode, power)

    parents = {g.uuid: g for g in snapshot.gpus if g.uuid in devices}
    for g in gpus:
        if g.parent_uuid:
            add(g, mode=True, power=False)
            if g.parent_uuid in parents:
                add(parents[g.parent_uuid], mode=False, power=True)
        elif g.uuid in devices:
            add(g, mode=False, power=True)
            for d in devices[g.uuid]:
                add(d, mode=True, power=False)
        else:
            add(g, mode=True, power=True)
    return list(out.values())


def own_processes(
    gpus: list[telemetry_pb2.GpuSample], snapshot: Snapshot
) -> list[telemetry_pb2.GpuProcess]:
    """The processes on ``gpus``, a MIG parent's aggregate list skipped where its
    devices are in ``gpus`` too (each process once)."""
    devices = devices_by_parent(snapshot)
    chosen = {g.uuid for g in gpus}
    out: list[telemetry_pb2.GpuProcess] = []
    for g in gpus:
        if g.uuid in devices and any(d.uuid in chosen for d in devices[g.uuid]):
            continue
        out.extend(g.processes)
    return out
