"""MIG in the collector's figures: slices count, their parent does not twice.

A MIG-enabled GPU is reported as its parent (``mig_enabled``, power, energy,
the aggregate process list, no activity) followed by one ``GpuSample`` per MIG
device (``parent_uuid`` set, its own processes, per-instance GPM and
``sm_share``, its share of the parent's SMs). Accounting:

- a MIG device's peak is the parent model's peak x ``sm_share``
  (``sample_share``); a device that did not report its share counts at the
  parent's full peak (an upper bound never undercounts);
- allocated and achieved FLOP/s, and the jobs, come from the devices: the
  parent's are the sums of its devices' (``fold``) and it holds no job, so a
  job on one slice is charged that slice, not the whole GPU;
- installed capacity is the parent's: the hardware is there whether or not
  it is partitioned, and node and cluster totals add whole GPUs and parents
  only (``counts_in_totals``), never the devices again.

For directive effectiveness (``judged``): a HALT on a MIG parent holds when
its devices are prohibited and idle (nvml.h lets compute mode be set only on
MIG device handles), and a power cap on a MIG device is the parent's limit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, TypeVar

from protos.computewatch.v1 import control_pb2, telemetry_pb2


class _Figures(Protocol):
    @property
    def uuid(self) -> str: ...
    @property
    def parent_uuid(self) -> str: ...
    @property
    def allocated(self) -> float | None: ...
    @property
    def achieved(self) -> float | None: ...
    @property
    def method(self) -> str: ...


F = TypeVar("F", bound=_Figures)


def sample_share(gpu: telemetry_pb2.GpuSample) -> float:
    """The fraction of its model's peak a sample stands for (1.0: a whole GPU)."""
    if gpu.parent_uuid and gpu.HasField("sm_share") and 0.0 < gpu.sm_share <= 1.0:
        return gpu.sm_share
    return 1.0


def counts_in_totals(fig: _Figures) -> bool:
    """Whether node and cluster sums add this GPU (MIG devices are in their parent)."""
    return not fig.parent_uuid


def _sum(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def fold(figures: Sequence[F], tensor_method: str, upper_method: str) -> list[F]:
    """``figures`` with each MIG parent that has devices in the same report
    carrying its devices' allocated/achieved sums and no jobs of its own
    (its method: ``tensor_method`` only if every device measured that way)."""
    devices: dict[str, list[F]] = {}
    for f in figures:
        if f.parent_uuid:
            devices.setdefault(f.parent_uuid, []).append(f)
    out: list[F] = []
    for f in figures:
        mine = devices.get(f.uuid)
        if not mine:
            out.append(f)
            continue
        tensor = all(d.method == tensor_method for d in mine)
        folded = dataclasses.replace(  # type: ignore[type-var]
            f,
            allocated=_sum([d.allocated for d in mine]),
            achieved=_sum([d.achieved for d in mine]),
            method=tensor_method if tensor else upper_method,
            jobs=(),
        )
        out.append(folded)
    return out


def judged(
    action: int, kind: int, targets: set[str], gpus: Sequence[telemetry_pb2.GpuSample]
) -> set[str]:
    """The GPUs whose state decides whether ``action`` on ``targets`` took effect."""
    devices: dict[str, set[str]] = {}
    for g in gpus:
        if g.parent_uuid:
            devices.setdefault(g.parent_uuid, set()).add(g.uuid)
    parent_of = {d: p for p, ds in devices.items() for d in ds}
    out: set[str] = set()
    for uuid in targets:
        if uuid in devices and action == control_pb2.ACTION_HALT:
            # A job's halt is judged on the job's own devices (already targets).
            if kind != control_pb2.SCOPE_KIND_JOB:
                out |= devices[uuid]
        elif uuid in parent_of and action == control_pb2.ACTION_THROTTLE:
            out.add(parent_of[uuid])
        else:
            out.add(uuid)
    return out
