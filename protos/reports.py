"""Checks a verified NodeReport must pass before anything uses its values.

The signature says who sent a report, not that its numbers are possible:
these checks reject values no NVML reading can produce, so aggregates never
ingest NaN, negative or absurd figures.
"""

from __future__ import annotations

import math

from protos.computewatch.v1 import telemetry_pb2
from protos.errors import InvalidReportError

MAX_GPUS = 1024
MAX_PROCESSES_PER_GPU = 4096
# GpuSample.field_errors: one per NVML call the agent makes (the agent keeps 32).
MAX_FIELD_ERRORS_PER_GPU = 64
MAX_INTERVAL_SECONDS = 3600.0
DIGEST_BYTES = 32


def _percent(name: str, gpu: telemetry_pb2.GpuSample) -> None:
    if gpu.HasField(name):
        v = getattr(gpu, name)
        if not (math.isfinite(v) and 0.0 <= v <= 100.0):
            raise InvalidReportError(f"gpu {gpu.index}: {name} = {v!r}, expected 0..100")


def _non_negative(name: str, gpu: telemetry_pb2.GpuSample) -> None:
    if gpu.HasField(name):
        v = getattr(gpu, name)
        if not (math.isfinite(v) and v >= 0):
            raise InvalidReportError(f"gpu {gpu.index}: {name} = {v!r}, expected >= 0")


def validate_report(
    report: telemetry_pb2.NodeReport, *, now_ns: int, max_future_skew_ns: int = 300 * 10**9
) -> None:
    """Raise InvalidReportError naming the first impossible field."""
    if report.sequence < 1:
        raise InvalidReportError(f"sequence = {report.sequence}, expected >= 1")
    if len(report.previous_digest) != DIGEST_BYTES:
        raise InvalidReportError(
            f"previous_digest is {len(report.previous_digest)} bytes, expected {DIGEST_BYTES}"
        )
    iv = report.interval_seconds
    if not (math.isfinite(iv) and 0.0 <= iv <= MAX_INTERVAL_SECONDS):
        raise InvalidReportError(f"interval_seconds = {iv!r}, expected 0..{MAX_INTERVAL_SECONDS}")
    if report.sample_unix_nanos <= 0:
        raise InvalidReportError("sample_unix_nanos is not set")
    if report.sample_unix_nanos > now_ns + max_future_skew_ns:
        ahead = (report.sample_unix_nanos - now_ns) / 1e9
        raise InvalidReportError(
            f"sample time is {ahead:.0f} s in the future; check the node's clock (NTP)"
        )
    if len(report.gpus) > MAX_GPUS:
        raise InvalidReportError(f"{len(report.gpus)} GPUs, expected at most {MAX_GPUS}")
    seen: set[str] = set()
    for gpu in report.gpus:
        if gpu.uuid in seen:
            raise InvalidReportError(f"gpu uuid {gpu.uuid!r} appears twice")
        seen.add(gpu.uuid)
        for name in ("utilization_gpu_percent", "sm_activity_percent", "tensor_activity_percent"):
            _percent(name, gpu)
        for name in ("power_watts", "power_limit_watts"):
            _non_negative(name, gpu)
        if len(gpu.field_errors) > MAX_FIELD_ERRORS_PER_GPU:
            raise InvalidReportError(
                f"gpu {gpu.index}: {len(gpu.field_errors)} field errors,"
                f" expected at most {MAX_FIELD_ERRORS_PER_GPU}"
            )
        if len(gpu.processes) > MAX_PROCESSES_PER_GPU:
            raise InvalidReportError(
                f"gpu {gpu.index}: {len(gpu.processes)} processes,"
                f" expected at most {MAX_PROCESSES_PER_GPU}"
            )
