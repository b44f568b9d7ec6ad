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
        if len(gpu.processes) > MAX_PROCESSES_PER_GPU:
            raise InvalidReportError(
                f"gpu {gpu.index}: {len(gpu.processes)} processes,"
                f" expected at most {MAX_PROCESSES_PER_GPU}"
            )
    _check_activity_and_mig(report)


_PIPE_FIELDS = (
    "dfma_tensor_activity_percent",
    "hmma_tensor_activity_percent",
    "imma_tensor_activity_percent",
    "fp64_activity_percent",
    "fp32_activity_percent",
    "fp16_activity_percent",
)
# Shares are SM counts over the full-GPU profile's: allow rounding, not a second GPU.
_SHARE_SLACK = 0.01


def _check_activity_and_mig(report: telemetry_pb2.NodeReport) -> None:
    """Per-pipe activity, activity windows, per-process SM shares, and MIG devices:
    a device names a MIG-enabled GPU of the same report as its parent, its share
    is in (0, 1], and one GPU's devices together hold at most all of its SMs
    (accounting counts a device at the parent's peak x its share)."""
    parents = {g.uuid: g for g in report.gpus if not g.parent_uuid}
    shares: dict[str, float] = {}
    for gpu in report.gpus:
        for name in _PIPE_FIELDS:
            _percent(name, gpu)
        if gpu.HasField("activity_window_seconds"):
            w = gpu.activity_window_seconds
            if not (math.isfinite(w) and 0.0 <= w <= MAX_INTERVAL_SECONDS):
                raise InvalidReportError(
                    f"gpu {gpu.index}: activity_window_seconds = {w!r},"
                    f" expected 0..{MAX_INTERVAL_SECONDS}"
                )
        for proc in gpu.processes:
            if proc.HasField("sm_utilization_percent"):
                v = proc.sm_utilization_percent
                if not (math.isfinite(v) and 0.0 <= v <= 100.0):
                    raise InvalidReportError(
                        f"gpu {gpu.index}: pid {proc.pid} sm_utilization_percent = {v!r},"
                        " expected 0..100"
                    )
        if gpu.HasField("sm_share"):
            v = gpu.sm_share
            if not (math.isfinite(v) and 0.0 < v <= 1.0):
                raise InvalidReportError(f"gpu {gpu.uuid}: sm_share = {v!r}, expected (0, 1]")
        if not gpu.parent_uuid:
            continue
        parent = parents.get(gpu.parent_uuid)
        if parent is None or not parent.mig_enabled:
            raise InvalidReportError(
                f"MIG device {gpu.uuid}: parent {gpu.parent_uuid!r} is not a MIG-enabled GPU"
                " of this report"
            )
        shares[parent.uuid] = shares.get(parent.uuid, 0.0) + (
            gpu.sm_share if gpu.HasField("sm_share") else 0.0
        )
        if shares[parent.uuid] > 1.0 + _SHARE_SLACK:
            raise InvalidReportError(
                f"MIG devices of {parent.uuid} hold {shares[parent.uuid]:.3f} of its SMs,"
                " expected at most 1"
            )
