"""Checks a verified NodeReport must pass before anything uses its values.

The signature says who sent a report, not that its numbers are possible:
these checks reject values no NVML reading can produce, so aggregates never
ingest NaN, negative or absurd figures. They also bound everything a report
can make the collector hold (counts and string lengths): an enrolled node's
key must not be able to grow the collector's memory with one report. The
agent runs the same checks before sealing.

Impossible values raise ``InvalidReportError`` (reason ``invalid_report``);
counts and lengths over a bound raise ``ReportLimitError`` (``report_limit``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from protos.computewatch.v1 import telemetry_pb2
from protos.errors import InvalidReportError, ReportLimitError

MAX_GPUS = 1024
MAX_PROCESSES_PER_GPU = 4096
# Processes over all GPUs of one report.
MAX_PROCESSES = 16_384
# Distinct job ids in one report (GPU processes and JobInfo entries together).
MAX_JOBS_PER_REPORT = 1024
MAX_PARENTS_PER_JOB = 64
MAX_RECEIPTS = 64
MAX_STEPS_PER_RECEIPT = 1024
MAX_ACTIVE_DIRECTIVES = 256
# Identifiers: node, boot, GPU uuid, job, model, directive ids, labels.
# (Kubernetes names are at most 253 characters; a Slurm job id far fewer.)
MAX_ID_CHARS = 256
# Free text: NVML error strings, enforcement step details, refusal reasons.
MAX_TEXT_CHARS = 1024
# GpuSample.field_errors: one per NVML call the agent makes (the agent keeps 32).
MAX_FIELD_ERRORS_PER_GPU = 64
MAX_INTERVAL_SECONDS = 3600.0
# No NodeReport was ever sealed before this (2020-01-01T00:00:00Z): a sample
# time earlier than it is a node clock that never synchronised.
MIN_SAMPLE_UNIX_NANOS = 1_577_836_800 * 10**9
DIGEST_BYTES = 32

_PERCENTS = (
    "utilization_gpu_percent",
    "sm_activity_percent",
    "tensor_activity_percent",
    "dfma_tensor_activity_percent",
    "hmma_tensor_activity_percent",
    "imma_tensor_activity_percent",
    "fp64_activity_percent",
    "fp32_activity_percent",
    "fp16_activity_percent",
)


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


def _count(what: str, n: int, limit: int) -> None:
    if n > limit:
        raise ReportLimitError(f"{what}: {n}, expected at most {limit}")


def _text(what: str, value: str, limit: int = MAX_ID_CHARS) -> None:
    if len(value) > limit:
        raise ReportLimitError(f"{what} is {len(value)} characters, expected at most {limit}")


def _texts(what: str, values: Iterable[str], limit: int = MAX_ID_CHARS) -> None:
    for value in values:
        _text(what, value, limit)


_GPU_IDS = ("uuid", "product_name", "mig_instance", "pci_bus_id", "parent_uuid", "mig_profile")
_NON_NEGATIVE = ("power_watts", "power_limit_watts", "activity_window_seconds")


def _gpu_fine(gpu: telemetry_pb2.GpuSample) -> bool:
    """The checks of ``_explain_gpu`` without building a message: True when
    none fails (every report, every GPU: the hot path). Comparisons are
    false for NaN, and the bounds exclude infinities."""
    if len(gpu.error) > MAX_TEXT_CHARS:
        return False
    for name in _GPU_IDS:
        if len(getattr(gpu, name)) > MAX_ID_CHARS:
            return False
    if (
        len(gpu.processes) > MAX_PROCESSES_PER_GPU
        or len(gpu.field_errors) > MAX_FIELD_ERRORS_PER_GPU
    ):
        return False
    for err in gpu.field_errors:
        if len(err.function) > MAX_ID_CHARS or len(err.message) > MAX_TEXT_CHARS:
            return False
    for proc in gpu.processes:
        if len(proc.job_id) > MAX_ID_CHARS or len(proc.attribution) > MAX_ID_CHARS:
            return False
        if proc.HasField("sm_utilization_percent") and not (
            0.0 <= proc.sm_utilization_percent <= 100.0
        ):
            return False
    for name in _PERCENTS:
        if gpu.HasField(name) and not 0.0 <= getattr(gpu, name) <= 100.0:
            return False
    for name in _NON_NEGATIVE:
        if gpu.HasField(name) and not 0.0 <= getattr(gpu, name) < math.inf:
            return False
    if (
        gpu.HasField("memory_used_bytes")
        and gpu.HasField("memory_total_bytes")
        and gpu.memory_used_bytes > gpu.memory_total_bytes
    ):
        return False
    if gpu.HasField("sm_share") and not 0.0 < gpu.sm_share <= 1.0:
        return False
    return not (
        gpu.HasField("activity_window_seconds")
        and gpu.activity_window_seconds > MAX_INTERVAL_SECONDS
    )


def _check_gpu(gpu: telemetry_pb2.GpuSample) -> None:
    if not _gpu_fine(gpu):
        _explain_gpu(gpu)


def _explain_gpu(gpu: telemetry_pb2.GpuSample) -> None:
    """Raise the first problem of a GPU that ``_gpu_fine`` found wanting."""
    where = f"gpu {gpu.index}"
    _text(f"{where}: uuid", gpu.uuid)
    _text(f"{where}: product_name", gpu.product_name)
    _text(f"{where}: mig_instance", gpu.mig_instance)
    _text(f"{where}: error", gpu.error, MAX_TEXT_CHARS)
    _count(f"{where}: processes", len(gpu.processes), MAX_PROCESSES_PER_GPU)
    _count(f"{where}: field_errors", len(gpu.field_errors), MAX_FIELD_ERRORS_PER_GPU)
    for err in gpu.field_errors:
        _text(f"{where}: field error function", err.function)
        _text(f"{where}: field error message", err.message, MAX_TEXT_CHARS)
    _text(f"{where}: pci_bus_id", gpu.pci_bus_id)
    _text(f"{where}: parent_uuid", gpu.parent_uuid)
    _text(f"{where}: mig_profile", gpu.mig_profile)
    for proc in gpu.processes:
        _text(f"{where}: process {proc.pid} job_id", proc.job_id)
        _text(f"{where}: process {proc.pid} attribution", proc.attribution)
        if proc.HasField("sm_utilization_percent"):
            v = proc.sm_utilization_percent
            if not (math.isfinite(v) and 0.0 <= v <= 100.0):
                raise InvalidReportError(
                    f"{where}: pid {proc.pid} sm_utilization_percent = {v!r}, expected 0..100"
                )
    for name in _PERCENTS:
        _percent(name, gpu)
    for name in _NON_NEGATIVE:
        _non_negative(name, gpu)
    if (
        gpu.HasField("memory_used_bytes")
        and gpu.HasField("memory_total_bytes")
        and gpu.memory_used_bytes > gpu.memory_total_bytes
    ):
        raise InvalidReportError(
            f"{where}: memory_used_bytes = {gpu.memory_used_bytes} exceeds"
            f" memory_total_bytes = {gpu.memory_total_bytes}"
        )
    if gpu.HasField("sm_share") and not (math.isfinite(gpu.sm_share) and 0 < gpu.sm_share <= 1):
        raise InvalidReportError(f"{where}: sm_share = {gpu.sm_share!r}, expected (0, 1]")
    if gpu.HasField("activity_window_seconds") and gpu.activity_window_seconds > (
        MAX_INTERVAL_SECONDS
    ):
        raise InvalidReportError(
            f"{where}: activity_window_seconds = {gpu.activity_window_seconds!r},"
            f" expected 0..{MAX_INTERVAL_SECONDS}"
        )


def _check_jobs(report: telemetry_pb2.NodeReport) -> None:
    _count("jobs", len(report.jobs), MAX_JOBS_PER_REPORT)
    for job in report.jobs:
        _text("job_id", job.job_id)
        _text(f"job {job.job_id}: model_id", job.model_id)
        _count(f"job {job.job_id}: parent_job_ids", len(job.parent_job_ids), MAX_PARENTS_PER_JOB)
        _texts(f"job {job.job_id}: parent_job_id", job.parent_job_ids)
    distinct = {j.job_id for j in report.jobs}
    distinct.update(p.job_id for g in report.gpus for p in g.processes)
    _count("distinct job ids", len(distinct), MAX_JOBS_PER_REPORT)


def _check_enforcement(report: telemetry_pb2.NodeReport) -> None:
    state = report.enforcement
    _count("active_directive_ids", len(state.active_directive_ids), MAX_ACTIVE_DIRECTIVES)
    _texts("active_directive_id", state.active_directive_ids)
    _count("halted_gpu_uuids", len(state.halted_gpu_uuids), MAX_GPUS)
    _texts("halted_gpu_uuid", state.halted_gpu_uuids)
    _text("enforcement.fail_mode", state.fail_mode)
    _count("receipts", len(report.receipts), MAX_RECEIPTS)
    for receipt in report.receipts:
        _text("receipt directive_id", receipt.directive_id)
        _text("receipt refused_reason", receipt.refused_reason, MAX_TEXT_CHARS)
        _count("receipt steps", len(receipt.steps), MAX_STEPS_PER_RECEIPT)
        for step in receipt.steps:
            _text("receipt step", step.step)
            _text("receipt step target", step.target)
            _text("receipt step detail", step.detail, MAX_TEXT_CHARS)


def validate_report(
    report: telemetry_pb2.NodeReport, *, now_ns: int, max_future_skew_ns: int = 300 * 10**9
) -> None:
    """Raise InvalidReportError (or its kin ReportLimitError) naming the first
    impossible or over-limit field."""
    if report.sequence < 1:
        raise InvalidReportError(f"sequence = {report.sequence}, expected >= 1")
    if len(report.previous_digest) != DIGEST_BYTES:
        raise InvalidReportError(
            f"previous_digest is {len(report.previous_digest)} bytes, expected {DIGEST_BYTES}"
        )
    _text("node_id", report.node_id)
    _text("boot_id", report.boot_id)
    _text("agent_version", report.agent_version)
    _text("nvml_error", report.nvml_error, MAX_TEXT_CHARS)
    iv = report.interval_seconds
    if not (math.isfinite(iv) and 0.0 <= iv <= MAX_INTERVAL_SECONDS):
        raise InvalidReportError(f"interval_seconds = {iv!r}, expected 0..{MAX_INTERVAL_SECONDS}")
    if report.sample_unix_nanos <= 0:
        raise InvalidReportError("sample_unix_nanos is not set")
    if report.sample_unix_nanos < MIN_SAMPLE_UNIX_NANOS:
        raise InvalidReportError(
            f"sample_unix_nanos = {report.sample_unix_nanos} is before 2020;"
            " check the node's clock (NTP)"
        )
    if report.sample_unix_nanos > now_ns + max_future_skew_ns:
        ahead = (report.sample_unix_nanos - now_ns) / 1e9
        raise InvalidReportError(
            f"sample time is {ahead:.0f} s in the future; check the node's clock (NTP)"
        )
    _count("GPUs", len(report.gpus), MAX_GPUS)
    _count("processes", sum(len(g.processes) for g in report.gpus), MAX_PROCESSES)
    seen: set[str] = set()
    for gpu in report.gpus:
        if gpu.uuid in seen:
            raise InvalidReportError(f"gpu uuid {gpu.uuid!r} appears twice")
        seen.add(gpu.uuid)
        _check_gpu(gpu)
    _check_mig(report)
    _check_jobs(report)
    _check_enforcement(report)


# Shares are SM counts over the full-GPU profile's: allow rounding, not a second GPU.
_SHARE_SLACK = 0.01


def _check_mig(report: telemetry_pb2.NodeReport) -> None:
    """MIG devices: a device names a MIG-enabled GPU of the same report as its
    parent, and one GPU's devices together hold at most all of its SMs
    (accounting counts a device at the parent's peak x its share)."""
    parents = {g.uuid: g for g in report.gpus if not g.parent_uuid}
    shares: dict[str, float] = {}
    for gpu in report.gpus:
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
