"""Compute accounting: installed, allocated, achieved, cumulative; unknowns."""

from __future__ import annotations

import pytest

from collector.accounting.aggregate import (
    METHOD_TENSOR,
    METHOD_UTILIZATION,
    Aggregator,
    gpu_figures,
)
from collector.accounting.snapshot import CLUSTER_KEY, Scope
from collector.services.status import build_status
from collector.telemetry.ingest import IngestStats
from protos import devices
from protos.computewatch.v1 import telemetry_pb2
from tests.support import gpu

H100 = devices.lookup("NVIDIA H100 80GB HBM3")
A100 = devices.lookup("NVIDIA A100-SXM4-80GB")
assert H100 is not None
assert A100 is not None


def report(
    node: str, gpus: list[telemetry_pb2.GpuSample], interval: float = 1.0, seq: int = 1
) -> telemetry_pb2.NodeReport:
    return telemetry_pb2.NodeReport(
        node_id=node, sequence=seq, interval_seconds=interval, gpus=gpus
    )


def test_tensor_activity_is_preferred_and_utilization_is_an_upper_bound() -> None:
    assert H100 is not None
    t = gpu_figures(gpu(0, util=95.0, tensor=60.0), devices.lookup)
    assert t.method == METHOD_TENSOR
    assert t.achieved == pytest.approx(0.6 * H100.peak_flops)
    u = gpu_figures(gpu(1, util=95.0), devices.lookup)
    assert u.method == METHOD_UTILIZATION
    assert u.achieved == pytest.approx(0.95 * H100.peak_flops)
    assert u.allocated == H100.peak_flops


def test_unknown_model_lost_gpu_and_unknown_processes_are_never_zero() -> None:
    unknown = gpu_figures(gpu(0, product="NVIDIA Mystery 9000"), devices.lookup)
    assert unknown.installed is None
    assert unknown.achieved is None
    assert unknown.model is None
    lost = gpu(1)
    lost.health = telemetry_pb2.GPU_HEALTH_LOST
    fl = gpu_figures(lost, devices.lookup)
    assert fl.lost
    assert fl.achieved is None
    assert fl.allocated is None
    hidden = gpu(2, job=None)
    hidden.processes_known = False
    assert gpu_figures(hidden, devices.lookup).allocated is None
    idle = gpu(3, job=None, util=0.0)
    assert gpu_figures(idle, devices.lookup).allocated == 0.0


def test_an_unreadable_gpu_is_unknown_and_counted_and_field_errors_keep_the_rest() -> None:
    assert H100 is not None
    unreadable = telemetry_pb2.GpuSample(
        index=1,
        uuid="unreadable:00000000:2A:00.0",
        health=telemetry_pb2.GPU_HEALTH_UNREADABLE,
    )
    fu = gpu_figures(unreadable, devices.lookup)
    assert fu.unreadable
    assert not fu.lost
    assert fu.achieved is None
    assert fu.allocated is None
    # A failed reading is a field error: the GPU stays readable, that field unknown.
    partial = gpu(0, util=80.0)
    partial.ClearField("power_watts")
    partial.field_errors.add(function="nvmlDeviceGetPowerUsage", code=999)
    fp = gpu_figures(partial, devices.lookup)
    assert fp.achieved == pytest.approx(0.8 * H100.peak_flops)
    assert fp.power_watts is None
    agg = Aggregator()
    agg.ingest(report("n1", [partial, unreadable]), 0, 100.0)
    snap = agg.snapshot(100.0)
    assert snap.get(Scope.NODE, "n1", "gpus_unreadable") == 1.0
    assert snap.get(Scope.NODE, "n1", "gpus_lost") == 0.0
    assert snap.get(Scope.CLUSTER, CLUSTER_KEY, "gpus_unreadable") == 1.0
    assert snap.get(Scope.GPU, "unreadable:00000000:2A:00.0", "achieved_flops") is None
    status = build_status(agg, IngestStats(), 1, 100.0)
    assert status.gpus_unreadable == 1
    assert status.gpus_lost == 0
    assert [(n.node_id, n.gpus, n.gpus_unreadable) for n in status.nodes] == [("n1", 2, 1)]


def test_cumulative_flop_integrates_achieved_over_intervals_and_splits_shared_gpus() -> None:
    assert H100 is not None
    agg = Aggregator()
    shared = gpu(0, util=100.0, job="a")
    shared.processes.add(pid=2, job_id="b", attribution="slurm")
    for seq in range(1, 4):
        agg.ingest(report("n1", [shared, gpu(1, util=50.0, job="a")], 2.0, seq), seq - 1, 100.0)
    a = 3 * 2.0 * (0.5 * H100.peak_flops + 0.5 * H100.peak_flops)
    b = 3 * 2.0 * 0.5 * H100.peak_flops
    assert agg.jobs["a"].cumulative_flop == pytest.approx(a)
    assert agg.jobs["b"].cumulative_flop == pytest.approx(b)
    snap = agg.snapshot(100.5)
    assert snap.get(Scope.CLUSTER, CLUSTER_KEY, "cumulative_flop") == pytest.approx(a + b)
    assert snap.evidence[(Scope.JOB, "a")] == (0, 1, 2)


def test_silent_node_figures_become_unknown_but_installed_stays() -> None:
    assert H100 is not None
    assert A100 is not None
    agg = Aggregator(silent_after_intervals=3)
    agg.ingest(report("live", [gpu(0, util=100.0)]), 0, 100.0)
    agg.ingest(report("quiet", [gpu(0, product="NVIDIA A100-SXM4-80GB", util=100.0)]), 1, 90.0)
    agg.enroll("never")
    snap = agg.snapshot(100.5)
    assert snap.get(Scope.NODE, "quiet", "achieved_flops") is None
    assert snap.get(Scope.NODE, "quiet", "silent_seconds") == pytest.approx(10.5)
    assert snap.get(Scope.NODE, "never", "installed_flops") is None
    assert snap.get(Scope.CLUSTER, CLUSTER_KEY, "nodes_silent") == 1
    assert (
        snap.get(Scope.CLUSTER, CLUSTER_KEY, "installed_flops") == H100.peak_flops + A100.peak_flops
    )
    assert snap.get(Scope.CLUSTER, CLUSTER_KEY, "achieved_flops") == H100.peak_flops


def test_job_leaving_a_node_stops_counting_there_and_lineage_is_kept() -> None:
    agg = Aggregator()
    r1 = report("n1", [gpu(0, job="ft")])
    r1.jobs.add(job_id="ft", parent_job_ids=["base"], model_id="m")
    agg.ingest(r1, 0, 10.0)
    assert agg.snapshot(10.0).get(Scope.JOB, "ft", "gpus") == 1
    agg.ingest(report("n1", [gpu(0, job=None)], seq=2), 1, 11.0)
    snap = agg.snapshot(11.0)
    assert snap.get(Scope.JOB, "ft", "gpus") == 0
    assert snap.lineage["ft"] == ("base",)


def test_device_table_knows_the_required_models_and_guesses_nothing() -> None:
    for name in [
        "NVIDIA A100-SXM4-40GB",
        "NVIDIA H100 80GB HBM3",
        "NVIDIA H100 PCIe",
        "NVIDIA H100 NVL",
        "NVIDIA H200",
        "NVIDIA B200",
        "NVIDIA L40S",
        "NVIDIA L4",
        "AMD Instinct MI300X",
    ]:
        spec = devices.lookup(name)
        assert spec is not None, name
        assert spec.peak_flops > 1e13
        assert spec.source
        assert "dense" in spec.precision
    assert devices.lookup("NVIDIA H100 80GB HBM3 ") is not None  # whitespace normalised
    assert devices.lookup("NVIDIA H1000") is None
    assert devices.lookup("") is None


def test_an_out_of_cycle_report_does_not_make_a_node_look_silent() -> None:
    agg = Aggregator(silent_after_intervals=3, expected_interval_seconds=1.0)
    agg.ingest(report("n", [gpu(0)], interval=5.0, seq=1), 0, 100.0)
    # An enforcement receipt 0.2 s later: a short interval.
    agg.ingest(report("n", [gpu(0)], interval=0.2, seq=2), 1, 100.2)
    node = agg.nodes["n"]
    assert not agg.is_silent(node, 110.0)  # within 3 x the regular 5 s
    assert agg.is_silent(node, 115.3)
    # The configured interval is a floor for the silence clock.
    quick = Aggregator(silent_after_intervals=3, expected_interval_seconds=1.0)
    quick.ingest(report("q", [gpu(0)], interval=0.1, seq=1), 0, 100.0)
    assert not quick.is_silent(quick.nodes["q"], 102.5)
    assert quick.is_silent(quick.nodes["q"], 103.5)


def test_upper_bound_follows_the_current_measurement() -> None:
    agg = Aggregator()
    # GPM has no activity on the first sample (it needs two): utilization only.
    agg.ingest(report("n", [gpu(0, util=90.0, job="j")], seq=1), 0, 10.0)
    assert agg.jobs["j"].upper_bound
    agg.ingest(report("n", [gpu(0, util=90.0, tensor=70.0, job="j")], seq=2), 1, 11.0)
    assert not agg.jobs["j"].upper_bound
