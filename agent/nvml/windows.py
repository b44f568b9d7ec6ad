"""Utilization averaged over the report's interval, and per-process SM shares.

``nvmlDeviceGetUtilizationRates().gpu`` covers only the driver's last sample
period ("between 1 second and 1/6 second depending on the product", nvml.h
``nvmlUtilization_t``), not the interval a report stands for. This module
reads the driver's sample buffer instead: ``nvmlDeviceGetSamples(
NVML_GPU_UTILIZATION_SAMPLES, lastSeenTimeStamp)`` returns every sample newer
than the last one read, and the average of those, each weighted by the time
it covers, is the GPU's utilization over that window. The first read has no
``lastSeen`` base, so its oldest sample only marks where the window starts.
A gap in the buffer (samples lost between reads) is not counted: each sample
covers its own spacing unless that exceeds 1.5 x the shortest spacing seen in
its batch (the driver's period): then it covers one period.

``nvmlDeviceGetProcessUtilization(lastSeenTimeStamp)`` gives each process's
``smUtil`` over the same kind of window: the process's share of the GPU's SM
time, for splitting a GPU between jobs. A process it does not list had no
utilization (nvml.h: one sample "per process running, that had some non-zero
utilization").

Where the buffer cannot be read (NotSupported, e.g. under MIG), or holds no
sample since the last read (NOT_FOUND: reports closer together than the
driver's period), the GPU falls back to ``nvmlDeviceGetUtilizationRates``,
one reading of the driver's last period, with no ``activity_window_seconds``:
the collector then takes it as standing for the report's interval, as it did
before the windows (the estimate's method is ``utilization_upper_bound``). It
must not claim a window of one driver period (1/6 to 1 s): the accounting
counts the rest of the interval as unmeasured, and nearly every second would be.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from agent.nvml.samples import error_code
from protos.computewatch.v1 import telemetry_pb2

log = logging.getLogger(__name__)

_MICROS = 1_000_000


@dataclass
class WindowState:
    """Where one GPU's sample buffers were last read (CPU timestamps, microseconds)."""

    samples: bool = True
    last_seen: int = 0
    processes: bool = True
    proc_last_seen: int = 0


class Windows:
    """Windowed utilization readers over one NVML module."""

    def __init__(self, nvml: Any, absent: frozenset[int]) -> None:
        self._n = nvml
        self._error: type[Exception] = nvml.NVMLError
        self._absent = absent

    def _code(self, exc: BaseException) -> int:
        return error_code(exc)

    def utilization(self, handle: Any, state: WindowState, s: telemetry_pb2.GpuSample) -> None:
        """Fill ``utilization_gpu_percent`` and ``activity_window_seconds``.

        Raises the NVMLError of a failure other than "not available here".
        """
        n = self._n
        if state.samples:
            try:
                _, samples = n.nvmlDeviceGetSamples(
                    handle, n.NVML_GPU_UTILIZATION_SAMPLES, state.last_seen
                )
            except self._error as exc:
                code = self._code(exc)
                if code == n.NVML_ERROR_NOT_FOUND:
                    # No sample period ended since the last read: the interval lies
                    # within the driver's current period; its last reading stands.
                    pass
                elif code not in self._absent:
                    raise
                else:
                    log.info("utilization samples not available (%s); using rates", exc)
                    state.samples = False
            else:
                self._average(samples, state, s)
                return
        try:
            util = n.nvmlDeviceGetUtilizationRates(handle)
        except self._error as exc:
            if self._code(exc) in self._absent:
                return  # not available here either: unknown
            raise
        # One reading of the driver's last period: it claims no window, so the
        # collector takes it as standing for the report's interval (method
        # utilization_upper_bound), as before the windows. A window of one
        # period would make the rest of every interval unmeasured.
        s.utilization_gpu_percent = float(util.gpu)

    def _average(self, samples: list[Any], state: WindowState, s: telemetry_pb2.GpuSample) -> None:
        points = sorted((int(x.timeStamp), float(x.sampleValue.uiVal)) for x in samples)
        base = state.last_seen
        if base == 0 and points:
            base, points = points[0][0], points[1:]
        if not points:
            state.last_seen = max(state.last_seen, base)
            return
        times = [base, *(t for t, _ in points)]
        spans = [max(0, b - a) for a, b in itertools.pairwise(times)]
        period = min((d for d in spans if d > 0), default=0)
        if period <= 0:
            return
        # A span much longer than the period hides lost samples: count one period.
        covered = [d if d <= period * 1.5 else period for d in spans]
        total = sum(covered)
        s.utilization_gpu_percent = (
            sum(v * c for (_, v), c in zip(points, covered, strict=True)) / total
        )
        s.activity_window_seconds = total / _MICROS
        state.last_seen = points[-1][0]

    def processes(self, handle: Any, state: WindowState, s: telemetry_pb2.GpuSample) -> None:
        """Fill each listed process's ``sm_utilization_percent`` (never raises NVMLError)."""
        if not state.processes or not s.processes:
            return
        n = self._n
        try:
            samples = n.nvmlDeviceGetProcessUtilization(handle, state.proc_last_seen)
        except self._error as exc:
            code = self._code(exc)
            # NOT_FOUND: no sample since lastSeen. pynvml raises NVMLError(NVML_SUCCESS)
            # when NVML has no entry to size a buffer for. Either way: unknown now.
            if code in (n.NVML_ERROR_NOT_FOUND, n.NVML_SUCCESS):
                return
            if code in self._absent:
                log.info("process utilization not available: %s", exc)
                state.processes = False
                return
            # A secondary figure: its failure leaves the shares unknown, not the GPU.
            log.warning("nvmlDeviceGetProcessUtilization: %s", exc)
            return
        per_pid: dict[int, list[float]] = defaultdict(list)
        for x in samples:
            per_pid[int(x.pid)].append(float(x.smUtil))
            state.proc_last_seen = max(state.proc_last_seen, int(x.timeStamp))
        for proc in s.processes:
            values = per_pid.get(proc.pid)
            share = sum(values) / len(values) if values else 0.0
            proc.sm_utilization_percent = min(max(share, 0.0), 100.0)
