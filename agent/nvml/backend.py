"""The agent's view of GPU hardware, independent of how it is read.

``agent.nvml.real.NvmlBackend`` implements this over NVML (the real
``pynvml`` module, or ``agent.fakenvml`` in tests and the demo). Nothing else
in the agent touches NVML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from protos.computewatch.v1 import telemetry_pb2


@dataclass(frozen=True)
class Snapshot:
    """One reading of every GPU on the node.

    ``gpus`` are complete ``GpuSample`` messages except for the processes'
    ``job_id``/``attribution``, which job attribution fills in. When NVML
    itself is unusable, ``status`` says why and ``gpus`` is empty.
    """

    status: telemetry_pb2.NvmlStatus
    gpus: list[telemetry_pb2.GpuSample] = field(default_factory=list)
    error: str = ""


@dataclass(frozen=True)
class PowerLimits:
    """nvmlDeviceGetPowerManagementLimitConstraints and the current limit, watts.

    ``current_watts`` is the management limit (nvmlDeviceGetPowerManagementLimit):
    the one nvmlDeviceSetPowerManagementLimit sets, so the one to save and
    restore. The enforced limit (in ``GpuSample.power_limit_watts``) may be
    lower because of other limiters (nvml.h: "the out of band power limit
    interface").
    """

    min_watts: float
    max_watts: float
    current_watts: float


class GpuBackend(Protocol):
    """Read and steer the node's GPUs. Methods raise ``protos.errors.BackendError``."""

    def sample(self, *, activity: bool = True) -> Snapshot:
        """Read every GPU now. Never raises for a single GPU's failure: a failed
        reading is a ``field_errors`` entry, a GPU whose handle or UUID cannot be
        read is UNREADABLE under a placeholder uuid, a lost one LOST.

        ``activity=False`` reads identity, modes, power and processes only and
        leaves the activity windows (utilization samples, GPM bases) where
        they are: for out-of-cycle reads such as enforcement's, so the next
        report's activity still covers its whole interval."""
        ...

    def set_compute_mode(self, uuid: str, mode: telemetry_pb2.ComputeMode) -> None:
        """nvmlDeviceSetComputeMode on the GPU with this UUID."""
        ...

    def power_limits(self, uuid: str) -> PowerLimits: ...

    def set_power_limit(self, uuid: str, watts: float) -> None:
        """nvmlDeviceSetPowerManagementLimit (milliwatts on the wire)."""
        ...

    def close(self) -> None: ...
