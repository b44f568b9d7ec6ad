"""Build a ``NodeReport`` from one sample. Pure: no clock, no I/O, no keys."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from agent.nvml.backend import Snapshot
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import ConfigError
from protos.jobs import is_unattributed

DIGEST_BYTES = 32


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


def job_ids(gpus: Iterable[telemetry_pb2.GpuSample]) -> list[str]:
    """Distinct attributed job ids of the processes on ``gpus``, sorted (no pseudo-jobs)."""
    return sorted(
        {p.job_id for gpu in gpus for p in gpu.processes if not is_unattributed(p.job_id)}
    )


MAX_MEMBERS = 256


def add_members(
    jobs: list[telemetry_pb2.JobInfo], gpus: Iterable[telemetry_pb2.GpuSample]
) -> list[telemetry_pb2.JobInfo]:
    """Set each job's ``members``: its pods, array tasks or het components with a
    GPU process on this node (``GpuProcess.member``), sorted, at most ``MAX_MEMBERS``."""
    members: dict[str, set[str]] = {}
    for gpu in gpus:
        for p in gpu.processes:
            if p.member:
                members.setdefault(p.job_id, set()).add(p.member)
    for job in jobs:
        del job.members[:]
        job.members.extend(sorted(members.get(job.job_id, ()))[:MAX_MEMBERS])
    return jobs


def read_boot_id(path: Path) -> str:
    """The kernel's boot id (a UUID that changes on every boot)."""
    try:
        value = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the boot id ({exc})") from exc
    if not value or len(value) > 64:
        raise ConfigError(f"{path}: expected a boot id (a UUID), got {value[:64]!r}")
    return value
