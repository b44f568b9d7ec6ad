"""MIG calls of ``FakeNvml`` (a mixin): enumeration, instance ids, attributes, GPM.

Each behaviour follows nvml.h (NVIDIA/go-nvml ``pkg/nvml/nvml.h``), cited next
to it. A MIG device handle answers only the calls in ``MIG_HANDLE_CALLS``
(those whose nvml.h entry says they take one); any other answers NotSupported.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, NoReturn

import pynvml as _pynvml

from agent.fakenvml.spec import MIG_SLICES

if TYPE_CHECKING:
    from agent.fakenvml.activity import GpuState

MIG_HANDLE_CALLS = frozenset(
    {
        "nvmlDeviceGetUUID",
        "nvmlDeviceGetName",
        # "Per-instance information can be queried by using specific MIG device handles."
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetComputeRunningProcesses",
        # nvmlDeviceGet{Graphics,MPSCompute}RunningProcesses_v3: "The device handle or
        # MIG device handle" (the same MIG note as the compute list).
        "nvmlDeviceGetGraphicsRunningProcesses",
        "nvmlDeviceGetMPSComputeRunningProcesses",
        # "Retrieves/Set the current compute mode for the device or MIG device."
        "nvmlDeviceGetComputeMode",
        "nvmlDeviceSetComputeMode",
        # "This API supports the device handle and MIG device handle."
        "nvmlGpmSampleGet",
        "nvmlGpmQueryDeviceSupport",
        "nvmlDeviceGetGpuInstanceId",
        "nvmlDeviceGetComputeInstanceId",
        "nvmlDeviceGetAttributes",
        "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
        "nvmlDeviceIsMigDeviceHandle",
    }
)


def _raise(code: int) -> NoReturn:
    raise _pynvml.NVMLError(code)


class MigCalls:
    """The MIG part of the pynvml surface; ``FakeNvml`` provides the hooks."""

    if TYPE_CHECKING:

        def _device(self, function: str, handle: object) -> tuple[GpuState, float]: ...
        def _handle(self, index: int, mig: int = -1) -> Any: ...
        def _gpm_read(self, g: GpuState, t: float, gpmSample: object) -> object: ...

    def nvmlDeviceGetMaxMigDeviceCount(self, device: object) -> int:
        g, _ = self._device("nvmlDeviceGetMaxMigDeviceCount", device)
        # nvml.h: "Returns zero if MIG is not supported or enabled."
        return MIG_SLICES if g.spec.mig else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: object, index: int) -> Any:
        g, _ = self._device("nvmlDeviceGetMigDeviceHandleByIndex", device)
        if g.mig is not None or not g.spec.model.mig_capable:
            _raise(_pynvml.NVML_ERROR_NOT_SUPPORTED)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MIG_SLICES:
            _raise(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        # nvml.h: NVML_ERROR_NOT_FOUND "if no valid MIG device was found at index".
        if index >= len(g.slices):
            _raise(_pynvml.NVML_ERROR_NOT_FOUND)
        return self._handle(g.index, index)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, migDevice: object) -> Any:
        g, _ = self._device("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", migDevice)
        # nvml.h: NVML_ERROR_INVALID_ARGUMENT "if migDevice or device is invalid".
        if g.mig is None:
            _raise(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._handle(g.index)

    def nvmlDeviceIsMigDeviceHandle(self, device: object) -> ctypes.c_uint:
        g, _ = self._device("nvmlDeviceIsMigDeviceHandle", device)
        # pynvml returns the c_uint itself, not its value.
        return ctypes.c_uint(1 if g.mig is not None else 0)

    def _mig_only(self, function: str, device: object) -> GpuState:
        g, _ = self._device(function, device)
        # nvml.h: "Target MIG device handle"; a GPU handle is an invalid argument.
        if g.mig is None:
            _raise(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return g

    def nvmlDeviceGetGpuInstanceId(self, device: object) -> int:
        g = self._mig_only("nvmlDeviceGetGpuInstanceId", device)
        assert g.mig is not None
        return g.mig.gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, device: object) -> int:
        g = self._mig_only("nvmlDeviceGetComputeInstanceId", device)
        assert g.mig is not None
        return g.mig.compute_instance_id

    def nvmlDeviceGetAttributes(self, device: object) -> Any:
        g, _ = self._device("nvmlDeviceGetAttributes", device)
        # nvml.h nvmlDeviceGetAttributes_v2: "This API currently only supports MIG
        # device handles" (NVML_ERROR_NOT_SUPPORTED otherwise).
        if g.mig is None:
            _raise(_pynvml.NVML_ERROR_NOT_SUPPORTED)
        attrs = _pynvml.c_nvmlDeviceAttributes()
        attrs.multiprocessorCount = g.mig.sms
        attrs.gpuInstanceSliceCount = g.mig.slices
        attrs.computeInstanceSliceCount = g.mig.slices
        attrs.memorySizeMB = g.mig.memory_bytes // (1024 * 1024)
        return attrs

    nvmlDeviceGetAttributes_v2 = nvmlDeviceGetAttributes

    def nvmlDeviceGetGpuInstanceProfileInfo(
        self, device: object, profile: int, version: int = 2
    ) -> Any:
        g, _ = self._device("nvmlDeviceGetGpuInstanceProfileInfo", device)
        if not g.spec.model.mig_capable or g.mig is not None:
            _raise(_pynvml.NVML_ERROR_NOT_SUPPORTED)
        if version != 2:
            _raise(_pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        # Only the full-GPU profile is modelled (what a caller needs for SM shares);
        # nvml.h: NVML_ERROR_NOT_SUPPORTED "If device doesn't support MIG or profile
        # isn't supported".
        if profile != _pynvml.NVML_GPU_INSTANCE_PROFILE_7_SLICE:
            _raise(_pynvml.NVML_ERROR_NOT_SUPPORTED)
        info = _pynvml.c_nvmlGpuInstanceProfileInfo_v2_t()
        info.id = profile
        info.sliceCount = MIG_SLICES
        info.instanceCount = 1
        info.multiprocessorCount = g.spec.mig_full_sms
        info.memorySizeMB = g.spec.model.memory_bytes // (1024 * 1024)
        return info

    def nvmlGpmMigSampleGet(self, device: object, gpuInstanceId: int, gpmSample: object) -> object:
        g, t = self._device("nvmlGpmMigSampleGet", device)
        # nvml.h: "Read a sample of GPM metrics ... for a MIG GPU Instance" of ``device``.
        if g.mig is not None or not g.spec.mig:
            _raise(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        for s in g.slices:
            if s.mig is not None and s.mig.gpu_instance_id == gpuInstanceId:
                return self._gpm_read(s, t, gpmSample)
        _raise(_pynvml.NVML_ERROR_NOT_FOUND)
