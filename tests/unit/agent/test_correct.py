"""Validation before sealing: the agent corrects what the collector would refuse."""

from __future__ import annotations

import math

import pytest

from agent.correct import MAX_CORRECTIONS, correct, minimal, seal_bounded
from protos import dsse
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import InvalidReportError
from protos.keys import PrivateKey
from protos.reports import MAX_GPUS, MAX_PROCESSES_PER_GPU, validate_report

NOW = 1_750_000_000 * 10**9


def report(gpus: list[telemetry_pb2.GpuSample]) -> telemetry_pb2.NodeReport:
    r = telemetry_pb2.NodeReport(
        node_id="n",
        sequence=5,
        previous_digest=bytes(32),
        sample_unix_nanos=NOW,
        interval_seconds=1.0,
        nvml_status=telemetry_pb2.NVML_STATUS_OK,
    )
    r.gpus.extend(gpus)
    r.jobs.add(job_id="77")
    r.receipts.add(directive_id="d1")
    return r


def gpu(i: int, **kw: object) -> telemetry_pb2.GpuSample:
    return telemetry_pb2.GpuSample(
        uuid=f"GPU-{i}", index=i, product_name="NVIDIA H100 80GB HBM3", **kw
    )  # type: ignore[arg-type]


def test_a_valid_report_is_sealed_as_it_is() -> None:
    r = report([gpu(0, utilization_gpu_percent=50.0), gpu(1, power_watts=300.0)])
    out, notes = correct(r, now_ns=NOW)
    assert notes == []
    assert out.SerializeToString() == r.SerializeToString()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("utilization_gpu_percent", 150.0),
        ("sm_activity_percent", math.nan),
        ("power_watts", -1.0),
        ("power_limit_watts", math.inf),
    ],
)
def test_an_impossible_reading_replaces_only_that_gpu_by_an_error_entry(
    field: str, value: float
) -> None:
    bad = gpu(1, memory_used_bytes=5, **{field: value})
    bad.processes.add(pid=1, job_id="77")
    bad.processes_known = True
    r = report([gpu(0, utilization_gpu_percent=50.0), bad, gpu(2, power_watts=10.0)])
    with pytest.raises(InvalidReportError):
        validate_report(r, now_ns=NOW)
    out, notes = correct(r, now_ns=NOW)
    validate_report(out, now_ns=NOW)  # the collector will accept it
    assert [g.uuid for g in out.gpus] == ["GPU-0", "GPU-1", "GPU-2"]
    assert out.gpus[0] == r.gpus[0]
    assert out.gpus[2] == r.gpus[2]
    entry = out.gpus[1]
    assert entry.health == telemetry_pb2.GPU_HEALTH_ERROR
    assert field in entry.error
    # Unknown, never zero: no measurement survives, allocation is unknown.
    assert not entry.HasField(field)
    assert not entry.HasField("memory_used_bytes")
    assert not entry.processes_known
    assert len(entry.processes) == 0
    assert len(notes) == 1
    assert "gpu 1" in notes[0]
    assert field in notes[0]
    assert list(out.corrections) == notes
    assert [j.job_id for j in out.jobs] == ["77"]
    assert [x.directive_id for x in out.receipts] == ["d1"]


def test_a_repeated_uuid_is_dropped_and_noted() -> None:
    r = report([gpu(0), gpu(1), gpu(0)])
    out, notes = correct(r, now_ns=NOW)
    validate_report(out, now_ns=NOW)
    assert [g.uuid for g in out.gpus] == ["GPU-0", "GPU-1"]
    assert notes == ["gpu 0: uuid 'GPU-0' repeated, entry dropped"]


def test_too_many_gpus_are_cut_to_the_limit() -> None:
    r = report([gpu(i) for i in range(MAX_GPUS + 3)])
    out, notes = correct(r, now_ns=NOW)
    validate_report(out, now_ns=NOW)
    assert len(out.gpus) == MAX_GPUS
    assert notes == [f"{MAX_GPUS + 3} GPUs: only the first {MAX_GPUS} reported"]


def test_too_many_processes_replace_the_gpu_entry() -> None:
    crowded = gpu(0, processes_known=True)
    for pid in range(MAX_PROCESSES_PER_GPU + 1):
        crowded.processes.add(pid=pid + 1)
    out, notes = correct(report([crowded]), now_ns=NOW)
    validate_report(out, now_ns=NOW)
    assert out.gpus[0].health == telemetry_pb2.GPU_HEALTH_ERROR
    assert not out.gpus[0].processes_known
    assert "processes" in notes[0]


def test_many_problems_are_noted_within_the_bound() -> None:
    r = report([gpu(i, power_watts=-1.0) for i in range(40)])
    out, _ = correct(r, now_ns=NOW)
    validate_report(out, now_ns=NOW)
    assert len(out.corrections) == MAX_CORRECTIONS
    assert out.corrections[-1] == f"... and {40 - MAX_CORRECTIONS + 1} more"
    assert len(out.gpus) == 40


def test_a_bad_header_cannot_be_corrected() -> None:
    r = report([gpu(0)])
    r.sample_unix_nanos = NOW + 3600 * 10**9
    with pytest.raises(InvalidReportError, match="future"):
        correct(r, now_ns=NOW)


def test_minimal_keeps_the_chain_and_says_what_it_dropped() -> None:
    r = report([gpu(0, utilization_gpu_percent=50.0)])
    out = minimal(r, "too big")
    validate_report(out, now_ns=NOW)
    assert (out.sequence, out.previous_digest) == (r.sequence, r.previous_digest)
    assert len(out.gpus) == 0
    assert len(out.jobs) == 0
    assert [x.directive_id for x in out.receipts] == ["d1"]
    assert out.nvml_status == telemetry_pb2.NVML_STATUS_ERROR
    assert "too big" in out.nvml_error
    assert list(out.corrections) == ["GPUs and jobs dropped: too big"]
    bare = minimal(r, "still", keep_receipts=False)
    assert len(bare.receipts) == 0


def test_an_envelope_over_the_limit_is_sealed_minimal_instead() -> None:
    key = PrivateKey.generate()
    r = report([gpu(i) for i in range(8)])
    small, notes = seal_bounded(r, key, max_bytes=1 << 20)
    assert notes == []
    assert small == dsse.seal(r, key)
    big, notes = seal_bounded(r, key, max_bytes=450)
    assert len(big) <= 450
    out = dsse.parse_message(telemetry_pb2.NodeReport, dsse.open_envelope(big).payload)
    assert len(out.gpus) == 0
    assert [x.directive_id for x in out.receipts] == ["d1"]  # kept: small enough
    assert len(notes) == 1
    assert "over the 450-byte limit" in notes[0]
    with pytest.raises(InvalidReportError, match="even a minimal report"):
        seal_bounded(r, key, max_bytes=50)


def mig_device(uuid: str, share: float, **kw: object) -> telemetry_pb2.GpuSample:
    """A MIG device of GPU-0."""
    g = gpu(
        0,
        mig_enabled=True,
        parent_uuid="GPU-0",
        mig_profile="3g.40gb",
        mig_instance="1/0",
        sm_share=share,
        **kw,
    )
    g.uuid = uuid
    return g


def test_a_mig_report_keeps_its_devices_when_one_of_them_is_corrected() -> None:
    parent = gpu(0, mig_enabled=True, power_watts=300.0)
    good = mig_device("MIG-a", 0.43, sm_activity_percent=40.0)
    bad = mig_device("MIG-b", 0.43, sm_activity_percent=140.0)
    # A third device would give the GPU more SMs than it has (0.43 + 0.6): it is the
    # one replaced (the corrected MIG-b holds no share any more).
    extra = mig_device("MIG-c", 0.6)
    r = report([parent, good, bad, extra, gpu(1, power_watts=10.0)])
    out, notes = correct(r, now_ns=NOW)
    validate_report(out, now_ns=NOW)
    assert [g.uuid for g in out.gpus] == ["GPU-0", "MIG-a", "MIG-b", "MIG-c", "GPU-1"]
    assert out.gpus[0] == parent
    assert out.gpus[1] == good  # checked with its parent: nothing to correct
    for entry in (out.gpus[2], out.gpus[3]):
        # Still a MIG device of GPU-0 (never a physical GPU of its own), unknown.
        assert entry.health == telemetry_pb2.GPU_HEALTH_ERROR
        assert entry.parent_uuid == "GPU-0"
        assert entry.mig_enabled
        assert not entry.HasField("sm_share")
        assert not entry.HasField("sm_activity_percent")
    assert "sm_activity_percent" in notes[0]
    assert "SMs" in notes[1]
    assert len(notes) == 2
