"""GPM (GPU Performance Monitoring) for one device or MIG GPU instance.

Per device the backend keeps two sample buffers and computes, between the
previous GPM sample and a new one, SM and any-tensor activity plus each pipe
(nvml.h ``nvmlGpmMetricId_t``: DFMA/HMMA/IMMA tensor, FP64/FP32/FP16). nvml.h
says two ``nvmlGpmSampleGet``/``nvmlGpmMigSampleGet`` calls "should be greater
than 100ms" apart and documents no error for a shorter pair (the counters are
simply not refreshed), so a device sampled again sooner than ``MIN_INTERVAL``
keeps its previous sample as the base and reports no GPM figure this time: the
next one covers both intervals. ``activity_window_seconds`` is the time
between the two samples the figures come from.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protos.computewatch.v1 import telemetry_pb2
from protos.reports import MAX_INTERVAL_SECONDS

log = logging.getLogger(__name__)

MIN_INTERVAL = 0.1
# A value this little outside 0..100 is rounding and is clamped; further out it is
# not a percentage NVML can mean, and the field stays absent (unknown).
_PERCENT_SLACK = 0.5

# (nvml.h metric id name, GpuSample field)
_METRICS = (
    ("NVML_GPM_METRIC_SM_UTIL", "sm_activity_percent"),
    ("NVML_GPM_METRIC_ANY_TENSOR_UTIL", "tensor_activity_percent"),
    ("NVML_GPM_METRIC_DFMA_TENSOR_UTIL", "dfma_tensor_activity_percent"),
    ("NVML_GPM_METRIC_HMMA_TENSOR_UTIL", "hmma_tensor_activity_percent"),
    ("NVML_GPM_METRIC_IMMA_TENSOR_UTIL", "imma_tensor_activity_percent"),
    ("NVML_GPM_METRIC_FP64_UTIL", "fp64_activity_percent"),
    ("NVML_GPM_METRIC_FP32_UTIL", "fp32_activity_percent"),
    ("NVML_GPM_METRIC_FP16_UTIL", "fp16_activity_percent"),
)


class GpmReadError(Exception):
    """An NVML call of a GPM read failed (``error`` is the NVMLError)."""

    def __init__(self, call: str, error: BaseException) -> None:
        super().__init__(f"{call}: {error}")
        self.call = call
        self.error = error


@dataclass
class GpmState:
    """One device's (or GPU instance's) GPM buffers."""

    prev: Any = None
    spare: Any = None
    prev_t: float = 0.0
    request: Any = None


class Gpm:
    """Reads GPM for any number of ``GpmState``s through one NVML module."""

    def __init__(
        self, nvml: Any, clock: Callable[[], float], min_interval: float = MIN_INTERVAL
    ) -> None:
        self._n = nvml
        self._error: type[Exception] = nvml.NVMLError
        self._clock = clock
        self._min_interval = min_interval
        self._ids = tuple(getattr(nvml, name) for name, _ in _METRICS)

    def read(
        self, state: GpmState, take: Callable[[Any], object], s: telemetry_pb2.GpuSample
    ) -> None:
        """Take a GPM sample with ``take(buffer)`` and fill ``s`` from the pair.

        Raises ``GpmReadError``; the state then holds no base (the next read starts over).
        """
        n = self._n
        now = self._clock()
        if state.prev is not None and now - state.prev_t <= self._min_interval:
            log.debug("GPM sample skipped: %.3f s after the previous one", now - state.prev_t)
            return
        call = "nvmlGpmSampleAlloc"
        try:
            if state.spare is None:
                state.spare = n.nvmlGpmSampleAlloc()
            call = "nvmlGpmSampleGet"
            take(state.spare)
            if state.prev is not None:
                call = "nvmlGpmMetricsGet"
                request = self._request(state)
                request.sample1 = state.prev
                request.sample2 = state.spare
                window = now - state.prev_t
                if window <= MAX_INTERVAL_SECONDS:
                    n.nvmlGpmMetricsGet(request)
                    self._fill(request, s)
                    s.activity_window_seconds = window
                else:
                    # A base this old (NVML was away for hours) stands for no interval
                    # a report can carry: start over from the new sample.
                    log.info("GPM base %.0f s old: not used", window)
        except self._error as exc:
            # The previous sample is no base for the next interval: free it
            # (dropping the reference alone leaks NVML's allocation).
            self.free_one(state.prev)
            state.prev = None
            raise GpmReadError(call, exc) from exc
        state.prev, state.spare = state.spare, state.prev
        state.prev_t = now

    def _fill(self, request: Any, s: telemetry_pb2.GpuSample) -> None:
        metrics = request.metrics  # one lookup: pynvml's struct attribute access is slow
        success = self._n.NVML_SUCCESS
        for i, (_, field) in enumerate(_METRICS):
            metric = metrics[i]
            if metric.nvmlReturn != success:
                continue
            value = float(metric.value)
            if not (math.isfinite(value) and -_PERCENT_SLACK <= value <= 100 + _PERCENT_SLACK):
                log.warning("GPM %s = %r is not a percentage: left unknown", field, value)
                continue
            setattr(s, field, min(max(value, 0.0), 100.0))

    def _request(self, state: GpmState) -> Any:
        """The state's reusable c_nvmlGpmMetricsGet_t asking for every metric above."""
        if state.request is None:
            request = self._n.c_nvmlGpmMetricsGet_t()
            request.version = self._n.NVML_GPM_METRICS_GET_VERSION
            request.numMetrics = len(self._ids)
            for i, metric_id in enumerate(self._ids):
                request.metrics[i].metricId = metric_id
            state.request = request
        return state.request

    def free(self, state: GpmState) -> None:
        for sample in (state.prev, state.spare):
            self.free_one(sample)
        state.prev = state.spare = None

    def free_one(self, sample: Any) -> None:
        if sample is not None:
            try:
                self._n.nvmlGpmSampleFree(sample)
            except self._error as exc:
                log.debug("nvmlGpmSampleFree: %s", exc)
