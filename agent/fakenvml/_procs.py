"""The process lists of a simulated GPU, as pynvml returns them.

nvml.h lists processes three ways: ``nvmlDeviceGetComputeRunningProcesses_v3``
(CUDA contexts), ``nvmlDeviceGetGraphicsRunningProcesses_v3`` (graphics
contexts: none in a datacenter simulation) and
``nvmlDeviceGetMPSComputeRunningProcesses_v3`` ("compute running processes ...
utilizing MPS"). Under MPS the clients' contexts belong to the MPS server, so
the compute list shows the server and the MPS list shows the clients; "the
usedGpuMemory field returned is all of the memory used by the application".

Each list is an array of nvml.h ``nvmlProcessInfo_t`` (pid, usedGpuMemory,
gpuInstanceId, computeInstanceId: 24 bytes). nvidia-ml-py 12.535.77 declared
``c_nvmlProcessInfo_t`` with an extra ``usedGpuCcProtectedMemory`` (32 bytes)
and read the driver's 24-byte entries through it, so every entry after the
first came back shifted (pids made of other fields' bytes). The fake's
``process_struct_mismatch`` fault reproduces exactly that decoding.
"""

from __future__ import annotations

import ctypes
from typing import Any

import pynvml as _pynvml

from agent.fakenvml.activity import SYNTHETIC_PID_BASE, GpuState, NodeModel
from agent.fakenvml.spec import Job

# The MPS control daemon's server process (nvidia-cuda-mps-server) on every node.
MPS_SERVER_PID = SYNTHETIC_PID_BASE - 1
_NOT_AVAILABLE = _pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value
# nvml.h: gpuInstanceId/computeInstanceId are 0xFFFFFFFF outside MIG.
_NO_INSTANCE = 0xFFFFFFFF


class ProcessInfo12535(ctypes.Structure):
    """``c_nvmlProcessInfo_t`` as nvidia-ml-py 12.535.77 declared it (32 bytes)."""

    _fields_ = [
        ("pid", ctypes.c_uint),
        ("usedGpuMemory", ctypes.c_ulonglong),
        ("gpuInstanceId", ctypes.c_uint),
        ("computeInstanceId", ctypes.c_uint),
        ("usedGpuCcProtectedMemory", ctypes.c_ulonglong),
    ]


Entry = tuple[int, int, tuple[int, int]]


def _instance(g: GpuState, job: Job | None) -> tuple[int, int]:
    """(gpuInstanceId, computeInstanceId) of a process: nvml.h nvmlProcessInfo_t sets
    both to 0xFFFFFFFF "if MIG is not enabled"; under MIG, its MIG device's."""
    mig = g.mig
    if mig is None and g.spec.mig and g.spec.mig_slices:
        slices = g.spec.mig_slices
        mig = slices[job.mig_slice] if job is not None and job.mig_slice < len(slices) else None
    if mig is not None:
        return mig.gpu_instance_id, mig.compute_instance_id
    return (0, 0) if g.spec.mig else (_NO_INSTANCE, _NO_INSTANCE)


def _entries(model: NodeModel, g: GpuState, t: float, kind: str) -> list[Entry]:
    """(pid, used bytes, instance ids) of the processes the ``kind`` list holds on ``g``."""
    procs = model.processes(g, t)
    out: list[Entry] = []
    if kind == "compute":
        out = [
            (pid, int(job.memory_gib * 1024**3), _instance(g, job))
            for job, pid, _ in procs
            if not job.mps
        ]
        clients = [job for job, _, _ in procs if job.mps]
        if clients:
            used = sum(int(job.memory_gib * 1024**3) for job in clients)
            out.append((MPS_SERVER_PID, used, _instance(g, clients[0])))
    elif kind == "mps":
        out = [
            (pid, int(job.memory_gib * 1024**3), _instance(g, job))
            for job, pid, _ in procs
            if job.mps
        ]
    if g.spec.mig:
        # Per-process memory is not available under MIG (pynvml's None).
        out = [(pid, _NOT_AVAILABLE, ids) for pid, _, ids in out]
    return out


def process_list(
    model: NodeModel, g: GpuState, t: float, kind: str, *, struct_mismatch: bool = False
) -> list[Any]:
    """What pynvml's ``nvmlDevice<Kind>RunningProcesses`` returns (friendly objects)."""
    entries = _entries(model, g, t, kind)
    array = (_pynvml.c_nvmlProcessInfo_v3_t * len(entries))(
        *(
            _pynvml.c_nvmlProcessInfo_v3_t(
                pid=pid,
                usedGpuMemory=min(used, _NOT_AVAILABLE),
                gpuInstanceId=gi,
                computeInstanceId=ci,
            )
            for pid, used, (gi, ci) in entries
        )
    )
    structs: list[ctypes.Structure] = list(array)
    if struct_mismatch and entries:
        # pynvml allocates count * 2 + 5 of *its* structs; the driver fills 24-byte entries.
        wrong = (ProcessInfo12535 * (len(entries) * 2 + 5))()
        ctypes.memmove(wrong, array, ctypes.sizeof(array))
        structs = list(wrong[: len(entries)])
    out = []
    for info in structs:
        obj = _pynvml.nvmlStructToFriendlyObject(info)
        if obj.usedGpuMemory == _NOT_AVAILABLE:
            obj.usedGpuMemory = None
        out.append(obj)
    return out
