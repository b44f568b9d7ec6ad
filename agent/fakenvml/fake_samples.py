"""Time-averaged utilization calls of ``FakeNvml`` (a mixin).

``nvmlDeviceGetSamples(NVML_GPU_UTILIZATION_SAMPLES)`` and
``nvmlDeviceGetProcessUtilization`` read the driver's sample buffer that
``NodeModel.advance`` fills (one sample per ``SAMPLE_PERIOD``, the last
``SAMPLE_BUFFER`` kept). Each behaviour cites nvml.h (NVIDIA/go-nvml
``pkg/nvml/nvml.h``); the return shapes are pynvml's.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, NoReturn

import pynvml as _pynvml

if TYPE_CHECKING:
    from agent.fakenvml.activity import GpuState, NodeModel


def _raise(code: int) -> NoReturn:
    raise _pynvml.NVMLError(code)


class SampleCalls:
    """nvmlDeviceGetSamples and nvmlDeviceGetProcessUtilization over the model."""

    if TYPE_CHECKING:
        start: float
        _lock: threading.RLock
        _model: NodeModel

        def _device(self, function: str, handle: object) -> tuple[GpuState, float]: ...

    def _micros(self, t: float) -> int:
        # nvml.h nvmlSample_t: "CPU Timestamp in microseconds".
        return round((self.start + t) * 1_000_000)

    def _since(self, g: GpuState, t: float, last_seen: int) -> list[tuple[int, Any, Any]]:
        """(timestamp us, entry, previous entry) of buffered samples newer than ``last_seen``."""
        with self._lock:
            self._model.advance(g, t)
            grid = g.grid
            out = []
            # Newest first, back to the last one seen (each with its predecessor).
            for i in range(len(grid) - 1, 0, -1):
                cur = grid[i]
                stamp = self._micros(cur[0])
                if stamp <= last_seen:
                    break
                out.append((stamp, cur, grid[i - 1]))
        out.reverse()
        return out

    def nvmlDeviceGetSamples(self, device: object, sampling_type: int, timeStamp: int) -> Any:
        g, t = self._device("nvmlDeviceGetSamples", device)
        # nvml.h: "On MIG-enabled GPUs, querying ... NVML_GPU_UTILIZATION_SAMPLES ...
        # is not currently supported." Only that sample type is modelled.
        if g.spec.mig or sampling_type != _pynvml.NVML_GPU_UTILIZATION_SAMPLES:
            _raise(_pynvml.NVML_ERROR_NOT_SUPPORTED)
        out = []
        for stamp, cur, prev in self._since(g, t, int(timeStamp)):
            # NVML_GPU_UTILIZATION_SAMPLES: "percent of time during which one or
            # more kernels was executing on the GPU" over the sample's period.
            percent = (cur[1] - prev[1]) / (cur[0] - prev[0])
            sample = _pynvml.c_nvmlSample_t()
            sample.timeStamp = stamp
            sample.sampleValue.uiVal = max(0, min(100, round(percent)))
            out.append(sample)
        # nvml.h: NVML_ERROR_NOT_FOUND "if sample entries are not found".
        if not out:
            _raise(_pynvml.NVML_ERROR_NOT_FOUND)
        return (_pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, out)

    def nvmlDeviceGetProcessUtilization(self, handle: object, timeStamp: int) -> list[Any]:
        g, t = self._device("nvmlDeviceGetProcessUtilization", handle)
        # nvml.h: "On MIG-enabled GPUs, querying process utilization is not currently supported."
        if g.spec.mig:
            _raise(_pynvml.NVML_ERROR_NOT_SUPPORTED)
        fresh = self._since(g, t, int(timeStamp))
        # nvml.h: "If no valid sample entries are found since the lastSeenTimeStamp,
        # NVML_ERROR_NOT_FOUND is returned."
        if not fresh:
            _raise(_pynvml.NVML_ERROR_NOT_FOUND)
        stamp, last, _ = fresh[-1]
        first = fresh[0][2]
        span = last[0] - first[0]
        out = []
        for pid, total in sorted(last[2].items()):
            # smUtil of each process over the samples since lastSeenTimeStamp;
            # nvml.h: "One utilization sample structure is returned per process
            # running, that had some non-zero utilization".
            percent = (total - first[2].get(pid, 0.0)) / span
            if round(percent) <= 0:
                continue
            sample = _pynvml.c_nvmlProcessUtilizationSample_t()
            sample.pid = pid
            sample.timeStamp = stamp
            sample.smUtil = min(100, round(percent))
            sample.memUtil = min(100, round(percent * 0.6))
            out.append(sample)
        if not out:
            _raise(_pynvml.NVML_ERROR_NOT_FOUND)
        return out
