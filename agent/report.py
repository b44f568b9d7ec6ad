"""Build a ``NodeReport`` from one sample. Pure: no clock, no I/O, no keys."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from agent.nvml.backend import Snapshot
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import ConfigError, InvalidReportError
from protos.reports import validate_report

DIGEST_BYTES = 32
UNATTRIBUTED = "unattributed"


def build_report(
    node_id: str,
    boot_id: str,
    link: tuple[int, bytes],
    *,
    sample_time_ns: int,
    interval_s: float,
    snapshot: Snapshot,
    jobs: Iterable[telemetry_pb2.JobInfo],
    enforcement: telemetry_pb2.EnforcementState,
    receipts: Sequence[telemetry_pb2.EnforcementReceipt],
    version: str,
) -> telemetry_pb2.NodeReport:
    """The report for chain position ``link`` = (sequence, previous_digest).

    Copies everything it is given, so later changes to the snapshot or the
    receipts cannot alter a report once built.
    """
    sequence, previous = link
    if sequence < 1:
        raise ValueError(f"sequence {sequence}: reports are numbered from 1")
    if len(previous) != DIGEST_BYTES:
        raise ValueError(f"previous digest is {len(previous)} bytes, expected {DIGEST_BYTES}")
    report = telemetry_pb2.NodeReport(
        node_id=node_id,
        boot_id=boot_id,
        sequence=sequence,
        previous_digest=previous,
        sample_unix_nanos=sample_time_ns,
        interval_seconds=interval_s,
        agent_version=version,
        nvml_status=snapshot.status,
        nvml_error=snapshot.error,
    )
    report.gpus.extend(snapshot.gpus)
    report.jobs.extend(jobs)
    report.enforcement.CopyFrom(enforcement)
    report.receipts.extend(receipts)
    return report


def sealable(
    report: telemetry_pb2.NodeReport, *, now_ns: int
) -> tuple[telemetry_pb2.NodeReport, str | None]:
    """``report`` if the collector's checks (``protos.reports``) accept it; otherwise
    the same chain position with its GPU data removed, NVML status ERROR and the
    reason, and that reason. A sealed report the collector refuses for its
    content would leave a hole in the node's chain: never seal one."""
    try:
        validate_report(report, now_ns=now_ns)
    except InvalidReportError as exc:
        reason = f"the agent's sample failed the report checks: {exc}"[:512]
        safe = telemetry_pb2.NodeReport()
        safe.CopyFrom(report)
        safe.ClearField("gpus")
        safe.ClearField("jobs")
        safe.nvml_status = telemetry_pb2.NVML_STATUS_ERROR
        safe.nvml_error = reason
        return safe, reason
    return report, None


def job_ids(gpus: Iterable[telemetry_pb2.GpuSample]) -> list[str]:
    """Distinct attributed job ids of the processes on ``gpus``, sorted."""
    return sorted(
        {p.job_id for gpu in gpus for p in gpu.processes if p.job_id and p.job_id != UNATTRIBUTED}
    )


def read_boot_id(path: Path) -> str:
    """The kernel's boot id (a UUID that changes on every boot)."""
    try:
        value = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the boot id ({exc})") from exc
    if not value or len(value) > 64:
        raise ConfigError(f"{path}: expected a boot id (a UUID), got {value[:64]!r}")
    return value
