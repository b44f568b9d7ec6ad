"""MIG in directive effectiveness (the accounting's part is ``collector.accounting.mig``).

A MIG-enabled GPU is reported as its parent (``mig_enabled``, power, energy,
the aggregate process list, no activity) followed by one ``GpuSample`` per MIG
device (``parent_uuid`` set). For directive effectiveness (``judged``): a HALT
on a MIG parent holds when its devices are prohibited and idle (nvml.h lets
compute mode be set only on MIG device handles), and a power cap on a MIG
device is the parent's limit.
"""

from __future__ import annotations

from collections.abc import Sequence

from protos.computewatch.v1 import control_pb2, telemetry_pb2


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
