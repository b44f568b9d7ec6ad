"""How a GPU's achieved FLOP/s split between the jobs on it.

The agent reports each process's SM share of the GPU over the activity
window (``GpuProcess.sm_utilization_percent``, from
``nvmlDeviceGetProcessUtilization``). When every process on the GPU has one
and they add up to more than zero, a job gets its processes' part of the
total; otherwise (a share unknown, or nothing measured) the jobs split evenly,
as before. Allocation is not split by activity: holding a GPU is allocation.
"""

from __future__ import annotations

from protos.computewatch.v1 import telemetry_pb2
from protos.jobs import job_key


def activity_shares(
    gpu: telemetry_pb2.GpuSample, jobs: tuple[str, ...], node_id: str = ""
) -> tuple[float, ...]:
    """Each of ``jobs``' fraction of ``gpu``'s activity (summing to 1), or () for an even
    split. Jobs are named as the accounting names them (``protos.jobs.job_key``)."""
    if not jobs or not gpu.processes:
        return ()
    if not all(p.HasField("sm_utilization_percent") for p in gpu.processes):
        return ()
    per_job: dict[str, float] = {}
    for p in gpu.processes:
        name = job_key(p.job_id, node_id)
        per_job[name] = per_job.get(name, 0.0) + max(p.sm_utilization_percent, 0.0)
    total = sum(per_job.values())
    if total <= 0:
        return ()
    return tuple(per_job.get(j, 0.0) / total for j in jobs)
