"""Reading a GPU's processes from NVML, and refusing answers that cannot be true.

Three lists make up the processes on a GPU (nvml.h): compute contexts
(``nvmlDeviceGetComputeRunningProcesses_v3``), graphics contexts
(``nvmlDeviceGetGraphicsRunningProcesses_v3``) and CUDA MPS clients
(``nvmlDeviceGetMPSComputeRunningProcesses_v3``: under MPS the compute list
shows the MPS server, the clients are only in this one). The agent merges them,
one entry per pid.

A pid from NVML can end up in ``kill(pid, SIGSTOP)``, so a list is refused
whole when any entry is impossible: nvidia-ml-py 12.535.77 declared
``c_nvmlProcessInfo_t`` as 32 bytes while drivers write nvml.h's 24-byte
``nvmlProcessInfo_t``, and every entry after the first decoded as other fields'
bytes. ``struct_problem`` catches that binding at start; ``implausible``
catches a list that decodes to nonsense anyway.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Any

from agent.nvml.samples import note
from protos.computewatch.v1 import telemetry_pb2

log = logging.getLogger(__name__)

# nvml.h nvmlProcessInfo_v2_t (= nvmlProcessInfo_t): unsigned int pid, unsigned long long
# usedGpuMemory, unsigned int gpuInstanceId, unsigned int computeInstanceId -> 24 bytes.
PROCESS_INFO_BYTES = 24
# Linux include/linux/threads.h: PID_MAX_LIMIT is 4 * 1024 * 1024 on 64-bit kernels;
# no pid is ever larger (kernel.pid_max cannot be set above it).
PID_MAX_LIMIT = 4 * 1024 * 1024
# nvml.h NVML_VALUE_NOT_AVAILABLE for unsigned long long (pynvml turns it into None).
NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF
# nvml.h: gpuInstanceId / computeInstanceId "is set to 0xFFFFFFFF" when MIG is not enabled.
NO_INSTANCE = 0xFFFFFFFF
# Compute first: its entry wins when a pid is in several lists.
LIST_FUNCTIONS = (
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetGraphicsRunningProcesses",
    "nvmlDeviceGetMPSComputeRunningProcesses",
)
FIXED_IN = "12.535.108"


def struct_problem(nvml: Any) -> str | None:
    """Why the binding's process struct cannot decode the driver's lists, or None."""
    struct = getattr(nvml, "c_nvmlProcessInfo_t", None)
    if struct is None:
        return None
    size = ctypes.sizeof(struct)
    if size == PROCESS_INFO_BYTES:
        return None
    return (
        f"nvidia-ml-py's c_nvmlProcessInfo_t is {size} bytes, the driver's nvmlProcessInfo_t"
        f" {PROCESS_INFO_BYTES}: process lists would decode to wrong pids; install"
        f" nvidia-ml-py >= {FIXED_IN}"
    )


def implausible(entry: Any, *, mig: bool | None, memory_total: int | None) -> str | None:
    """Why this decoded ``nvmlProcessInfo_t`` cannot be a real process, or None.

    ``mig``: the GPU's MIG mode (None: unknown); ``memory_total``: its memory, bytes.
    """
    pid = getattr(entry, "pid", None)
    if not isinstance(pid, int) or not 0 < pid <= PID_MAX_LIMIT:
        return f"pid {pid!r} is outside 1..{PID_MAX_LIMIT}"
    used = getattr(entry, "usedGpuMemory", None)
    if used is not None and memory_total is not None and used > memory_total:
        return f"pid {pid} uses {used} bytes, more than the GPU's {memory_total}"
    if mig is False:
        for name in ("gpuInstanceId", "computeInstanceId"):
            value = getattr(entry, name, NO_INSTANCE)
            if value != NO_INSTANCE:
                return f"pid {pid}: {name} {value:#x} without MIG (expected 0xffffffff)"
    return None


def read_into(s: telemetry_pb2.GpuSample, read: Callable[[str], Any], *, mig: bool | None) -> None:
    """Fill ``s.processes`` from every list; ``read(function)`` returns the list or
    None (absent, or an error it already noted in ``s.field_errors``).

    ``processes_known`` is False when the compute list is missing or any list
    failed or was refused; the processes of the lists that were read stay.
    """
    total = s.memory_total_bytes if s.HasField("memory_total_bytes") else None
    known = True
    merged: dict[int, Any] = {}
    for call in LIST_FUNCTIONS:
        errors = len(s.field_errors)
        entries = read(call)
        if entries is None:
            # The compute list is required; the others may be absent (NotSupported).
            known = known and len(s.field_errors) == errors and call != LIST_FUNCTIONS[0]
            continue
        bad = next(
            (why for e in entries if (why := implausible(e, mig=mig, memory_total=total))), None
        )
        if bad is not None:
            log.error("GPU %s: %s refused: %s", s.uuid, call, bad)
            note(s, call, 0, f"implausible answer refused: {bad}")
            known = False
            continue
        for e in entries:
            merged.setdefault(int(e.pid), e)
    s.processes_known = known
    for pid, proc in merged.items():
        entry = s.processes.add(pid=pid)
        used = proc.usedGpuMemory
        if used is not None and used != NOT_AVAILABLE:
            entry.used_memory_bytes = int(used)
