"""GPM calls of ``FakeNvml`` (a mixin): sample buffers and metrics between two samples.

Each behaviour follows nvml.h (NVIDIA/go-nvml ``pkg/nvml/nvml.h``, "GPM
Functions"), cited next to it; structs and constants are pynvml's own.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import pynvml as _pynvml

if TYPE_CHECKING:
    from agent.fakenvml.activity import GpuState, NodeModel

# GPM metrics the fake computes (index into a sample's integrals); any other
# id answers NotSupported per metric. Ids as in nvml.h nvmlGpmMetricId_t.
_GPM_METRICS = {
    _pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL: 0,
    _pynvml.NVML_GPM_METRIC_SM_UTIL: 1,
    _pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 2,
    _pynvml.NVML_GPM_METRIC_DFMA_TENSOR_UTIL: 3,
    _pynvml.NVML_GPM_METRIC_HMMA_TENSOR_UTIL: 4,
    _pynvml.NVML_GPM_METRIC_IMMA_TENSOR_UTIL: 5,
    _pynvml.NVML_GPM_METRIC_FP64_UTIL: 6,
    _pynvml.NVML_GPM_METRIC_FP32_UTIL: 7,
    _pynvml.NVML_GPM_METRIC_FP16_UTIL: 8,
}
# nvml.h (nvmlGpmSampleGet, nvmlGpmMigSampleGet, nvmlGpmMetricsGet): "The interval
# between two nvmlGpmSampleGet() calls should be greater than 100ms due to the
# internal sample refresh rate." No error and no value is documented for a
# shorter pair. The fake answers NVML_SUCCESS with 0 % for every metric of a
# pair taken less than this apart: its own stand-in for "not refreshed", not a
# driver's observed answer; the point is a wrong figure a caller must avoid
# (agent/nvml/gpm.py skips such a pair).
GPM_MIN_INTERVAL = 0.1


def _raise(code: int) -> NoReturn:
    raise _pynvml.NVMLError(code)


@dataclass
class _GpmSample:
    buffer: ctypes.Array[ctypes.c_char]
    # (GPU index, MIG device index or -1) the sample was taken on.
    gpu: tuple[int, int] | None = None
    t: float = 0.0
    integrals: tuple[float, ...] = ()


class GpmCalls:
    """The GPM part of the pynvml surface; ``FakeNvml`` provides the hooks."""

    if TYPE_CHECKING:
        _lock: threading.RLock
        _model: NodeModel
        # Live sample buffers by address (FakeNvml.__init__ makes the dict).
        _gpm_samples: dict[int, _GpmSample]

        def _device(self, function: str, handle: object) -> tuple[GpuState, float]: ...
        def _ready(self, function: str) -> float: ...

    # --- GPM -----------------------------------------------------------------------------
    def nvmlGpmQueryDeviceSupport(self, device: object) -> Any:
        g, _ = self._device("nvmlGpmQueryDeviceSupport", device)
        support = _pynvml.c_nvmlGpmSupport_t()
        support.version = _pynvml.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = 1 if g.spec.model.gpm else 0
        return support

    def nvmlGpmSampleAlloc(self) -> Any:
        self._ready("nvmlGpmSampleAlloc")
        buffer = ctypes.create_string_buffer(16)
        pointer = ctypes.cast(buffer, _pynvml.c_nvmlGpmSample_t)
        self._gpm_samples[ctypes.addressof(buffer)] = _GpmSample(buffer)
        return pointer

    def _sample(self, pointer: object) -> _GpmSample:
        if not isinstance(pointer, _pynvml.c_nvmlGpmSample_t):
            _raise(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        address = ctypes.cast(pointer, ctypes.c_void_p).value
        sample = self._gpm_samples.get(address or 0)
        if sample is None:
            _raise(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return sample

    def nvmlGpmSampleFree(self, gpmSample: object) -> None:
        self._ready("nvmlGpmSampleFree")
        sample = self._sample(gpmSample)
        del self._gpm_samples[ctypes.addressof(sample.buffer)]

    def nvmlGpmSampleGet(self, device: object, gpmSample: object) -> object:
        # nvml.h: "This API supports the device handle and MIG device handle."
        g, t = self._device("nvmlGpmSampleGet", device)
        return self._gpm_read(g, t, gpmSample)

    def _gpm_read(self, g: GpuState, t: float, gpmSample: object) -> object:
        if not g.spec.model.gpm:
            _raise(_pynvml.NVML_ERROR_NOT_SUPPORTED)
        sample = self._sample(gpmSample)
        with self._lock:
            self._model.advance(g, t)
            sample.gpu = (g.index, g.mig.index if g.mig else -1)
            sample.t = max(t, g.last_t)
            sample.integrals = (
                g.util_integral,
                g.sm_integral,
                g.tensor_integral,
                *g.pipe_integrals,
            )
        return gpmSample

    def nvmlGpmMetricsGet(self, metricsGet: Any) -> Any:
        self._ready("nvmlGpmMetricsGet")
        if metricsGet.version != _pynvml.NVML_GPM_METRICS_GET_VERSION:
            _raise(_pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        first, second = self._sample(metricsGet.sample1), self._sample(metricsGet.sample2)
        if first.gpu is None or first.gpu != second.gpu:
            _raise(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not 0 <= metricsGet.numMetrics <= _pynvml.NVML_GPM_METRIC_MAX:
            _raise(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        dt = second.t - first.t
        metrics = metricsGet.metrics
        for i in range(metricsGet.numMetrics):
            metric = metrics[i]
            which = _GPM_METRICS.get(metric.metricId)
            if which is None:
                metric.nvmlReturn = _pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            if abs(dt) <= GPM_MIN_INTERVAL:  # "greater than 100ms": exactly 100 ms is too short
                metric.value = 0.0  # see GPM_MIN_INTERVAL
            else:
                metric.value = (second.integrals[which] - first.integrals[which]) / dt
            metric.nvmlReturn = _pynvml.NVML_SUCCESS
        return metricsGet
