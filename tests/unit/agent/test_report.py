"""Building a NodeReport from a sample, and reading the boot id."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.nvml.backend import Snapshot
from agent.report import build_report, job_ids, read_boot_id, sealable
from protos import dsse
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import ConfigError
from protos.keys import PrivateKey
from protos.reports import validate_report

PREV = hashlib.sha256(b"previous envelope").digest()


def gpu(index: int, *pids_jobs: tuple[int, str]) -> telemetry_pb2.GpuSample:
    sample = telemetry_pb2.GpuSample(
        uuid=f"GPU-{index:04d}",
        index=index,
        product_name="NVIDIA H100 80GB HBM3",
        utilization_gpu_percent=87.5,
        power_watts=612.0,
        health=telemetry_pb2.GPU_HEALTH_OK,
        processes_known=True,
    )
    for pid, job in pids_jobs:
        sample.processes.add(
            pid=pid,
            job_id=job,
            attribution="unattributed" if job == "unattributed" else "slurm",
        )
    return sample


def build(snapshot: Snapshot, **kw: object) -> telemetry_pb2.NodeReport:
    args: dict[str, object] = {
        "sample_time_ns": 1_700_000_000_000_000_000,
        "interval_s": 1.0,
        "snapshot": snapshot,
        "jobs": [telemetry_pb2.JobInfo(job_id="slurm-1", parent_job_ids=["slurm-0"])],
        "enforcement": telemetry_pb2.EnforcementState(fail_mode="open"),
        "receipts": [telemetry_pb2.EnforcementReceipt(directive_id="d1", directive_counter=4)],
        "version": "0.1.0",
    }
    args.update(kw)
    link = args.pop("link", (7, PREV))
    return build_report("node-a", "boot-1", link, **args)  # type: ignore[arg-type]


def test_report_carries_the_link_the_sample_and_the_hooks() -> None:
    snap = Snapshot(status=telemetry_pb2.NVML_STATUS_OK, gpus=[gpu(0, (10, "slurm-1")), gpu(1)])
    report = build(snap)
    assert report.node_id == "node-a"
    assert report.boot_id == "boot-1"
    assert report.sequence == 7
    assert report.previous_digest == PREV
    assert report.sample_unix_nanos == 1_700_000_000_000_000_000
    assert report.interval_seconds == 1.0
    assert report.agent_version == "0.1.0"
    assert report.nvml_status == telemetry_pb2.NVML_STATUS_OK
    assert [g.uuid for g in report.gpus] == ["GPU-0000", "GPU-0001"]
    assert report.gpus[0].processes[0].job_id == "slurm-1"
    assert [j.job_id for j in report.jobs] == ["slurm-1"]
    assert list(report.jobs[0].parent_job_ids) == ["slurm-0"]
    assert report.enforcement.fail_mode == "open"
    assert [r.directive_id for r in report.receipts] == ["d1"]
    validate_report(report, now_ns=1_700_000_000_000_000_000)


def test_report_is_a_copy_later_changes_to_the_sample_do_not_reach_it() -> None:
    gpus = [gpu(0)]
    receipts = [telemetry_pb2.EnforcementReceipt(directive_id="d1")]
    enforcement = telemetry_pb2.EnforcementState(fail_mode="closed")
    report = build(
        Snapshot(status=telemetry_pb2.NVML_STATUS_OK, gpus=gpus),
        receipts=receipts,
        enforcement=enforcement,
    )
    gpus[0].utilization_gpu_percent = 1.0
    receipts[0].directive_id = "changed"
    enforcement.fail_mode = "open"
    assert report.gpus[0].utilization_gpu_percent == 87.5
    assert report.receipts[0].directive_id == "d1"
    assert report.enforcement.fail_mode == "closed"


def test_nvml_failure_is_reported_with_its_reason_and_no_gpus() -> None:
    snap = Snapshot(status=telemetry_pb2.NVML_STATUS_NOT_LOADED, error="libnvidia-ml.so.1 missing")
    report = build(snap, jobs=[], receipts=[])
    assert report.nvml_status == telemetry_pb2.NVML_STATUS_NOT_LOADED
    assert report.nvml_error == "libnvidia-ml.so.1 missing"
    assert len(report.gpus) == 0


def test_first_report_links_to_the_zero_digest() -> None:
    report = build(Snapshot(status=telemetry_pb2.NVML_STATUS_OK), link=(1, bytes(32)))
    assert report.sequence == 1
    assert report.previous_digest == bytes(32)


@pytest.mark.parametrize(
    ("link", "match"),
    [((0, PREV), "numbered from 1"), ((3, b"short"), "5 bytes, expected 32")],
)
def test_a_bad_link_is_refused(link: tuple[int, bytes], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(Snapshot(status=telemetry_pb2.NVML_STATUS_OK), link=link)


def test_a_sealed_report_verifies_and_parses_back_identically() -> None:
    key = PrivateKey.generate()
    report = build(Snapshot(status=telemetry_pb2.NVML_STATUS_OK, gpus=[gpu(0, (1, "slurm-1"))]))
    envelope = dsse.seal(report, key)
    verified = dsse.verify(envelope, {key.keyid: key.public}, expected_type=dsse.REPORT_TYPE)
    assert verified.parse(telemetry_pb2.NodeReport) == report


def test_job_ids_are_distinct_sorted_and_skip_unattributed() -> None:
    gpus = [
        gpu(0, (1, "slurm-9"), (2, "unattributed")),
        gpu(1, (3, "k8s-pod"), (4, "slurm-9")),
        gpu(2),
    ]
    assert job_ids(gpus) == ["k8s-pod", "slurm-9"]
    assert job_ids([]) == []


def test_read_boot_id(tmp_path: Path) -> None:
    path = tmp_path / "boot_id"
    path.write_text("0f6a2c8e-3b3d-4c53-9c1e-5f1f3b1c2d4e\n")
    assert read_boot_id(path) == "0f6a2c8e-3b3d-4c53-9c1e-5f1f3b1c2d4e"


@pytest.mark.parametrize("content", [None, "", "x" * 65])
def test_an_unreadable_or_odd_boot_id_names_the_file(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "boot_id"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=str(path)):
        read_boot_id(path)


def test_a_report_the_collector_would_refuse_is_sealed_without_its_gpu_data() -> None:
    twin = gpu(1, (4242, "slurm-0"))
    twin.uuid = "GPU-0000"  # the same uuid as GPU 0: protos.reports refuses the report
    snap = Snapshot(status=telemetry_pb2.NVML_STATUS_OK, gpus=[gpu(0, (4242, "slurm-0")), twin])
    report = build(snap)
    safe, reason = sealable(report, now_ns=1_700_000_000_000_000_000)
    assert reason is not None
    assert "appears twice" in reason
    assert (safe.sequence, safe.previous_digest) == (report.sequence, report.previous_digest)
    assert safe.node_id == report.node_id
    assert not safe.gpus
    assert not safe.jobs
    assert safe.nvml_status == telemetry_pb2.NVML_STATUS_ERROR
    assert "report checks" in safe.nvml_error
    validate_report(safe, now_ns=1_700_000_000_000_000_000)
    assert len(report.gpus) == 2  # the original is left as it was


def test_a_valid_report_is_sealed_as_built() -> None:
    report = build(Snapshot(status=telemetry_pb2.NVML_STATUS_OK, gpus=[gpu(0), gpu(1)]))
    safe, reason = sealable(report, now_ns=1_700_000_000_000_000_000)
    assert reason is None
    assert safe is report
