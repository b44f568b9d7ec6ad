"""MIG in the accounting: slices count, their parent does not count twice.

A MIG-enabled GPU is reported as its parent (``mig_enabled``, power, energy,
the aggregate process list, no activity: nvml.h supports neither utilization
rates nor samples on it) followed by one ``GpuSample`` per MIG device
(``parent_uuid`` set, its own processes, per-instance GPM and ``sm_share``,
its share of the parent's SMs). ``gpu.gpu_figures`` already counts a device
at the parent model's peaks x ``sm_share`` (absent share: the full peak, an
upper bound that never undercounts). This module then makes the parent:

- hold no job (its process list is its devices' again), so a job on one slice
  is charged that slice, never the whole GPU, and nothing twice;
- carry its devices' sums as its allocated, achieved (estimate), upper and
  lower figures, with the worst method any device used; its activity window
  is the shortest of its devices' (what all of them cover);
- keep its own installed capacity (``installed``, ``max_peak``): the full
  GPU's peak, since the hardware is there whether or not it is partitioned
  and an installed-capacity threshold must not be dodged by partitioning.

Node and cluster totals add whole GPUs and parents only (``counts_in_totals``),
never the devices again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from collector.accounting.gpu import METHOD_UNMEASURED, GpuFigures
from collector.accounting.state import worst_method


def counts_in_totals(fig: GpuFigures) -> bool:
    """Whether node and cluster sums add this GPU (MIG devices are in their parent)."""
    return not fig.parent_uuid


def _sum(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def fold(figures: Sequence[GpuFigures]) -> list[GpuFigures]:
    """``figures`` with each MIG parent that has devices in the same report
    carrying its devices' figures and no jobs of its own."""
    devices: dict[str, list[GpuFigures]] = {}
    for f in figures:
        if f.parent_uuid:
            devices.setdefault(f.parent_uuid, []).append(f)
    out: list[GpuFigures] = []
    for f in figures:
        mine = devices.get(f.uuid)
        if not mine or f.lost or f.unreadable:
            out.append(f)
            continue
        measured = [d for d in mine if d.measured]
        windows = [d.activity_window for d in measured]
        window = None
        if measured and all(w is not None for w in windows):
            window = min(w for w in windows if w is not None)
        out.append(
            dataclasses.replace(
                f,
                allocated=_sum([d.allocated for d in mine]),
                achieved=_sum([d.achieved for d in mine]) if measured else None,
                achieved_upper=sum(d.achieved_upper for d in mine),
                achieved_lower=_sum([d.achieved_lower for d in mine]),
                method=worst_method({d.method for d in mine}) if mine else METHOD_UNMEASURED,
                activity_window=window,
                jobs=(),
                job_shares=(),
            )
        )
    return out
