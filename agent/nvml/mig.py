"""Enumerating a MIG-enabled GPU's MIG devices (nvml.h "MIG" section).

``nvmlDeviceGetMaxMigDeviceCount`` bounds the indices;
``nvmlDeviceGetMigDeviceHandleByIndex`` answers NOT_FOUND for an index with
no MIG device. Handles "may be reused and their properties can change", so
they are looked up again on every sample and matched to what we know by UUID.
Per device: GPU and compute instance ids, the profile (from
``nvmlDeviceGetName``: "<GPU> MIG 3g.40gb"), and its SM count
(``nvmlDeviceGetAttributes().multiprocessorCount``) which, over the SMs of the
full-GPU instance profile (``nvmlDeviceGetGpuInstanceProfileInfo(
NVML_GPU_INSTANCE_PROFILE_7_SLICE).multiprocessorCount``), is its share of the
GPU: a slice's peak is the GPU's peak times that share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.nvml.gpm import GpmState


@dataclass
class MigDevice:
    handle: Any
    uuid: str
    profile: str
    gpu_instance_id: int
    compute_instance_id: int
    sms: int | None
    gpm: GpmState = field(default_factory=GpmState)

    @property
    def instance(self) -> str:
        """``GpuSample.mig_instance``: "<GPU instance id>/<compute instance id>"."""
        return f"{self.gpu_instance_id}/{self.compute_instance_id}"


def profile_of(name: str) -> str:
    """ "NVIDIA H100 80GB HBM3 MIG 3g.40gb" -> "3g.40gb" (the name itself otherwise)."""
    head, sep, tail = name.rpartition(" MIG ")
    return tail if sep and head else name


class MigEnumerator:
    """Finds a parent's MIG devices through one NVML module (calls raise NVMLError)."""

    def __init__(self, nvml: Any, optional: Callable[..., Any]) -> None:
        self._n = nvml
        self._error: type[Exception] = nvml.NVMLError
        # ``optional(call, *args)``: the answer, or None when NVML says not available.
        self._opt = optional

    def full_sms(self, parent: Any) -> int | None:
        info = self._opt(
            "nvmlDeviceGetGpuInstanceProfileInfo", parent, self._n.NVML_GPU_INSTANCE_PROFILE_7_SLICE
        )
        count = int(info.multiprocessorCount) if info is not None else 0
        return count if count > 0 else None

    def devices(self, parent: Any, known: dict[str, MigDevice]) -> list[MigDevice]:
        """The parent's MIG devices now; ``known`` (by UUID) is updated in place."""
        n = self._n
        found: list[MigDevice] = []
        for i in range(int(n.nvmlDeviceGetMaxMigDeviceCount(parent))):
            try:
                handle = n.nvmlDeviceGetMigDeviceHandleByIndex(parent, i)
            except self._error as exc:
                if getattr(exc, "value", None) == n.NVML_ERROR_NOT_FOUND:
                    continue
                raise
            uuid = str(n.nvmlDeviceGetUUID(handle))
            dev = known.get(uuid)
            if dev is None:
                attrs = self._opt("nvmlDeviceGetAttributes", handle)
                dev = MigDevice(
                    handle=handle,
                    uuid=uuid,
                    profile=profile_of(str(n.nvmlDeviceGetName(handle))),
                    gpu_instance_id=int(n.nvmlDeviceGetGpuInstanceId(handle)),
                    compute_instance_id=int(n.nvmlDeviceGetComputeInstanceId(handle)),
                    sms=int(attrs.multiprocessorCount) if attrs is not None else None,
                )
                known[uuid] = dev
            dev.handle = handle
            found.append(dev)
        return found
