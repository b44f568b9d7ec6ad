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

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.nvml.gpm import Gpm, GpmState
from agent.nvml.samples import ERROR_TEXT_MAX, GpuReadError, note, text
from protos.computewatch.v1 import telemetry_pb2

log = logging.getLogger(__name__)


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
            uuid = text(n.nvmlDeviceGetUUID(handle))
            dev = known.get(uuid)
            if dev is None:
                attrs = self._opt("nvmlDeviceGetAttributes", handle)
                dev = MigDevice(
                    handle=handle,
                    uuid=uuid,
                    profile=profile_of(text(n.nvmlDeviceGetName(handle))),
                    gpu_instance_id=int(n.nvmlDeviceGetGpuInstanceId(handle)),
                    compute_instance_id=int(n.nvmlDeviceGetComputeInstanceId(handle)),
                    sms=int(attrs.multiprocessorCount) if attrs is not None else None,
                )
                known[uuid] = dev
            dev.handle = handle
            found.append(dev)
        return found


class _MigParent(Protocol):
    """What ``MigSampling`` needs of the backend's per-GPU record."""

    handle: Any
    uuid: str
    gpm: bool
    mig: dict[str, MigDevice]
    full_sms: int | None


class MigSampling:
    """The MIG devices of a MIG-enabled GPU as samples (mixed into ``NvmlBackend``,
    which provides the NVML session and the per-field readers)."""

    _n: Any
    _error: type[Exception]
    _lost: int
    _modes: dict[Any, Any]
    _migs: MigEnumerator
    _gpm_reader: Gpm

    def _code(self, exc: BaseException) -> int:
        raise NotImplementedError

    def _field(self, s: telemetry_pb2.GpuSample, call: str, *args: object) -> Any:
        raise NotImplementedError

    def _processes(self, handle: Any, s: telemetry_pb2.GpuSample, mig: bool | None) -> None:
        raise NotImplementedError

    def _gpm(
        self, gpu: Any, state: GpmState, take: Callable[[Any], object], s: telemetry_pb2.GpuSample
    ) -> None:
        raise NotImplementedError

    def _read_mig(
        self, gpu: _MigParent, parent: telemetry_pb2.GpuSample, activity: bool
    ) -> list[telemetry_pb2.GpuSample]:
        """One sample per MIG device of ``gpu``. Enumeration failing is a field
        error of the parent; a device failing marks that device only."""
        call = "nvmlDeviceGetMigDeviceHandleByIndex"
        try:
            if gpu.full_sms == 0:
                gpu.full_sms = self._migs.full_sms(gpu.handle)
            devices = self._migs.devices(gpu.handle, gpu.mig)
        except GpuReadError as failed:
            note(parent, failed.call, max(self._code(failed.error), 0), str(failed.error))
            return []
        except self._error as exc:
            note(parent, call, max(self._code(exc), 0), f"MIG devices unreadable: {exc}")
            return []
        present = {d.uuid for d in devices}
        for uuid in [u for u in gpu.mig if u not in present]:
            self._gpm_reader.free(gpu.mig.pop(uuid).gpm)
        out = []
        for dev in devices:
            s = telemetry_pb2.GpuSample(
                uuid=dev.uuid,
                index=parent.index,
                product_name=parent.product_name,
                mig_enabled=True,
                mig_instance=dev.instance,
                mig_profile=dev.profile,
                parent_uuid=gpu.uuid,
                pci_bus_id=parent.pci_bus_id,
            )
            if parent.HasField("pci_device_id"):
                s.pci_device_id = parent.pci_device_id
            if dev.sms and gpu.full_sms:
                s.sm_share = min(1.0, dev.sms / gpu.full_sms)
            try:
                self._fill_mig(gpu, dev, s, activity)
                s.health = telemetry_pb2.GPU_HEALTH_OK
            except GpuReadError as failed:
                s.health = telemetry_pb2.GPU_HEALTH_LOST
                s.error = str(failed)[:ERROR_TEXT_MAX]
                note(s, failed.call, max(self._code(failed.error), 0), str(failed.error))
            out.append(s)
        return out

    def _fill_mig(
        self, gpu: _MigParent, dev: MigDevice, s: telemetry_pb2.GpuSample, activity: bool
    ) -> None:
        h = dev.handle
        memory = self._field(s, "nvmlDeviceGetMemoryInfo", h)
        if memory is not None:
            s.memory_used_bytes = int(memory.used)
            s.memory_total_bytes = int(memory.total)
        # nvml.h: "If MIG is enabled on a GPU, device must be MIG device handle."
        mode = self._field(s, "nvmlDeviceGetComputeMode", h)
        s.compute_mode = self._modes.get(mode, telemetry_pb2.COMPUTE_MODE_UNSPECIFIED)
        self._processes(h, s, True)
        if activity and gpu.gpm:
            gi = dev.gpu_instance_id
            self._gpm(
                gpu,
                dev.gpm,
                lambda buf: self._n.nvmlGpmMigSampleGet(gpu.handle, gi, buf),
                s,
            )
