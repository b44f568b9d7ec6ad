"""``validate_report``: every count and string a report carries is bounded,
and impossible values are refused; a report at every limit passes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from protos.computewatch.v1 import telemetry_pb2
from protos.errors import InvalidReportError, ReportLimitError
from protos.reports import (
    MAX_ACTIVE_DIRECTIVES,
    MAX_GPUS,
    MAX_ID_CHARS,
    MAX_JOBS_PER_REPORT,
    MAX_PARENTS_PER_JOB,
    MAX_PROCESSES,
    MAX_PROCESSES_PER_GPU,
    MAX_RECEIPTS,
    MAX_STEPS_PER_RECEIPT,
    MAX_TEXT_CHARS,
    MIN_SAMPLE_UNIX_NANOS,
    validate_report,
)

NOW = 1_800_000_000 * 10**9


def base() -> telemetry_pb2.NodeReport:
    report = telemetry_pb2.NodeReport(
        node_id="n1",
        boot_id="b",
        sequence=1,
        previous_digest=bytes(32),
        sample_unix_nanos=NOW,
        interval_seconds=1.0,
    )
    g = report.gpus.add(uuid="GPU-0", index=0, product_name="NVIDIA H100 80GB HBM3")
    g.memory_total_bytes = 80 << 30
    g.memory_used_bytes = 1 << 30
    g.processes.add(pid=1, job_id="j", attribution="slurm")
    return report


def _jobs(r: telemetry_pb2.NodeReport, n: int) -> None:
    for i in range(n):
        r.jobs.add(job_id=f"job-{i}")


def _processes(r: telemetry_pb2.NodeReport, per_gpu: int, gpus: int) -> None:
    del r.gpus[:]
    for g in range(gpus):
        sample = r.gpus.add(uuid=f"GPU-{g}", index=g)
        for p in range(per_gpu):
            sample.processes.add(pid=p, job_id="j")


Mutation = Callable[[telemetry_pb2.NodeReport], None]

OVER: list[tuple[str, Mutation]] = [
    ("jobs", lambda r: _jobs(r, MAX_JOBS_PER_REPORT + 1)),
    (
        "distinct job ids",
        lambda r: [
            r.gpus[0].processes.add(pid=i, job_id=f"p{i}") for i in range(MAX_JOBS_PER_REPORT)
        ],
    ),
    (
        "parent_job_ids",
        lambda r: r.jobs.add(job_id="x", parent_job_ids=["p"] * (MAX_PARENTS_PER_JOB + 1)),
    ),
    ("GPUs", lambda r: [r.gpus.add(uuid=f"G{i}") for i in range(MAX_GPUS)]),
    ("processes", lambda r: _processes(r, MAX_PROCESSES_PER_GPU + 1, 1)),
    ("processes", lambda r: _processes(r, MAX_PROCESSES // 4 + 1, 4)),
    ("receipts", lambda r: [r.receipts.add(directive_id="d") for _ in range(MAX_RECEIPTS + 1)]),
    (
        "receipt steps",
        lambda r: r.receipts.add().steps.extend(
            [telemetry_pb2.EnforcementStep()] * (MAX_STEPS_PER_RECEIPT + 1)
        ),
    ),
    (
        "active_directive_ids",
        lambda r: r.enforcement.active_directive_ids.extend(["d"] * (MAX_ACTIVE_DIRECTIVES + 1)),
    ),
    ("boot_id", lambda r: setattr(r, "boot_id", "b" * (MAX_ID_CHARS + 1))),
    ("node_id", lambda r: setattr(r, "node_id", "n" * (MAX_ID_CHARS + 1))),
    ("agent_version", lambda r: setattr(r, "agent_version", "v" * (MAX_ID_CHARS + 1))),
    ("nvml_error", lambda r: setattr(r, "nvml_error", "e" * (MAX_TEXT_CHARS + 1))),
    ("uuid", lambda r: setattr(r.gpus[0], "uuid", "u" * (MAX_ID_CHARS + 1))),
    ("error", lambda r: setattr(r.gpus[0], "error", "e" * (MAX_TEXT_CHARS + 1))),
    ("job_id", lambda r: setattr(r.gpus[0].processes[0], "job_id", "j" * (MAX_ID_CHARS + 1))),
    ("model_id", lambda r: r.jobs.add(job_id="x", model_id="m" * (MAX_ID_CHARS + 1))),
    ("parent_job_id", lambda r: r.jobs.add(job_id="x", parent_job_ids=["p" * (MAX_ID_CHARS + 1)])),
    ("step detail", lambda r: r.receipts.add().steps.add(detail="d" * (MAX_TEXT_CHARS + 1))),
    ("fail_mode", lambda r: setattr(r.enforcement, "fail_mode", "f" * (MAX_ID_CHARS + 1))),
]

IMPOSSIBLE: list[tuple[str, Mutation]] = [
    ("before 2020", lambda r: setattr(r, "sample_unix_nanos", 10**9)),
    ("exceeds", lambda r: setattr(r.gpus[0], "memory_used_bytes", (80 << 30) + 1)),
    ("sm_share", lambda r: setattr(r.gpus[0], "sm_share", 1.5)),
    ("sm_share", lambda r: setattr(r.gpus[0], "sm_share", 0.0)),
    (
        "hmma_tensor_activity_percent",
        lambda r: setattr(r.gpus[0], "hmma_tensor_activity_percent", 101.0),
    ),
    (
        "activity_window_seconds",
        lambda r: setattr(r.gpus[0], "activity_window_seconds", float("inf")),
    ),
    ("activity_window_seconds", lambda r: setattr(r.gpus[0], "activity_window_seconds", 1e9)),
]


@pytest.mark.parametrize(
    ("what", "mutate"), OVER, ids=[f"{i}-{w}" for i, (w, _) in enumerate(OVER)]
)
def test_over_a_limit_is_a_report_limit_error_naming_the_field(what: str, mutate: Mutation) -> None:
    report = base()
    mutate(report)
    with pytest.raises(ReportLimitError, match=what) as info:
        validate_report(report, now_ns=NOW)
    assert info.value.reason == "report_limit"


@pytest.mark.parametrize(
    ("what", "mutate"), IMPOSSIBLE, ids=[f"{i}-{w}" for i, (w, _) in enumerate(IMPOSSIBLE)]
)
def test_an_impossible_value_is_an_invalid_report(what: str, mutate: Mutation) -> None:
    report = base()
    mutate(report)
    with pytest.raises(InvalidReportError, match=what) as info:
        validate_report(report, now_ns=NOW)
    assert info.value.reason == "invalid_report"


def test_a_report_at_every_limit_passes() -> None:
    report = base()
    report.boot_id = "b" * MAX_ID_CHARS
    report.nvml_error = "e" * MAX_TEXT_CHARS
    report.sample_unix_nanos = MIN_SAMPLE_UNIX_NANOS
    report.gpus[0].memory_used_bytes = report.gpus[0].memory_total_bytes
    report.gpus[0].sm_share = 1.0
    for i in range(MAX_JOBS_PER_REPORT - 1):
        report.jobs.add(job_id=f"job-{i}", parent_job_ids=["p"] * MAX_PARENTS_PER_JOB)
    for _ in range(MAX_RECEIPTS):
        report.receipts.add(directive_id="d" * MAX_ID_CHARS)
    report.enforcement.active_directive_ids.extend(["d"] * MAX_ACTIVE_DIRECTIVES)
    validate_report(report, now_ns=NOW)
