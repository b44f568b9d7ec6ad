"""Compute accounting: bounds, own-window integration, unmeasured time."""

from __future__ import annotations

import pytest

from collector.accounting.aggregate import (
    METHOD_PIPES,
    METHOD_UNKNOWN_MODEL,
    METHOD_UNMEASURED,
    Aggregator,
    gpu_figures,
)
from collector.accounting.snapshot import CLUSTER_KEY, Scope
from protos import devices
from protos.computewatch.v1 import telemetry_pb2
from tests.support import gpu

H100 = devices.lookup("NVIDIA H100 80GB HBM3")
assert H100 is not None
UNKNOWN = "NVIDIA RTX PRO 6000 Blackwell Server Edition"


def report(
    node: str,
    gpus: list[telemetry_pb2.GpuSample],
    *,
    seq: int,
    at: float,
    interval: float,
) -> telemetry_pb2.NodeReport:
    return telemetry_pb2.NodeReport(
        node_id=node,
        sequence=seq,
        sample_unix_nanos=int(at * 1e9),
        interval_seconds=interval,
        gpus=gpus,
    )


def run(
    agg: Aggregator, node: str, samples: list[list[telemetry_pb2.GpuSample]], **kw: float
) -> float:
    interval = kw.get("interval", 1.0)
    t = kw.get("start", 1000.0)
    for seq, gpus in enumerate(samples, start=1):
        t += interval
        agg.ingest(report(node, gpus, seq=seq, at=t, interval=interval), seq - 1, t)
    return t


def test_each_report_counts_over_its_own_window_without_a_clamp() -> None:
    # 10 reports x 120 s at full load: the old 60 s clamp counted exactly half.
    agg = Aggregator()
    t = run(agg, "n", [[gpu(0, util=100.0, tensor=100.0, job="j")]] * 10, interval=120.0)
    snap = agg.snapshot(t)
    assert snap.get(Scope.JOB, "j", "cumulative_flop") == pytest.approx(1200 * H100.peak_flops)
    assert snap.get(Scope.JOB, "j", "unmeasured_gpu_seconds") == 0.0


def test_fp8_work_stays_under_the_upper_bound() -> None:
    # An FP8 run keeps the HMMA pipe busy; the estimate counts it at BF16, the
    # upper bound at the highest dense peak (FP8, 1,979 TFLOP/s on H100 SXM).
    g = gpu(0, util=100.0, tensor=100.0, job="fp8")
    g.hmma_tensor_activity_percent = 100.0
    fig = gpu_figures(g)
    assert fig.method == METHOD_PIPES
    assert fig.achieved == pytest.approx(989.4e12)
    assert fig.achieved_upper == pytest.approx(1978.9e12)
    assert fig.achieved_lower == pytest.approx(494.7e12)  # TF32, the slowest HMMA rate
    true_fp8 = 1978.9e12 * 10.0
    agg = Aggregator()
    t = run(agg, "n", [[g]], interval=10.0)
    assert agg.snapshot(t).get(Scope.JOB, "fp8", "cumulative_flop_upper_bound") >= true_fp8


def test_a_job_on_an_unknown_model_is_unmeasured_not_zero_and_keeps_it() -> None:
    agg = Aggregator()
    t = run(agg, "n", [[gpu(0, product=UNKNOWN, util=50.0, job="mystery")]] * 3, interval=2.0)
    snap = agg.snapshot(t)
    assert snap.get(Scope.JOB, "mystery", "cumulative_flop") is None  # unknown, not 0
    upper = 0.5 * devices.TABLE_MAX_PEAK_FLOPS * 6.0
    assert snap.get(Scope.JOB, "mystery", "cumulative_flop_upper_bound") == pytest.approx(upper)
    assert snap.get(Scope.JOB, "mystery", "unmeasured_gpu_seconds") == 6.0
    assert snap.get(Scope.JOB, "mystery", "achieved_flops") is None
    assert snap.methods[(Scope.JOB, "mystery")] == METHOD_UNKNOWN_MODEL
    # The job leaves the node: its history keeps what was unmeasured.
    t += 2.0
    agg.ingest(report("n", [gpu(0, product=UNKNOWN, job=None)], seq=4, at=t, interval=2.0), 3, t)
    snap = agg.snapshot(t)
    assert snap.get(Scope.JOB, "mystery", "unmeasured_gpu_seconds") == 6.0
    assert snap.get(Scope.JOB, "mystery", "cumulative_flop_upper_bound") == pytest.approx(upper)


def test_a_gpu_in_error_is_charged_at_its_peak() -> None:
    g = gpu(0, util=None, job="j")
    g.health = telemetry_pb2.GPU_HEALTH_ERROR
    agg = Aggregator()
    t = run(agg, "n", [[g]], interval=5.0)
    snap = agg.snapshot(t)
    assert snap.methods[(Scope.GPU, g.uuid)] == METHOD_UNMEASURED
    assert snap.get(Scope.JOB, "j", "cumulative_flop_upper_bound") == pytest.approx(
        H100.max_peak_flops * 5.0
    )
    assert snap.get(Scope.JOB, "j", "unmeasured_gpu_seconds") == 5.0


def test_a_short_activity_window_leaves_the_rest_unmeasured() -> None:
    g = gpu(0, util=100.0, tensor=100.0, job="j")
    g.activity_window_seconds = 15.0  # samples dropped: 15 s of a 60 s interval measured
    agg = Aggregator()
    t = run(agg, "n", [[g]], interval=60.0)
    snap = agg.snapshot(t)
    assert snap.get(Scope.JOB, "j", "cumulative_flop") == pytest.approx(15.0 * H100.peak_flops)
    assert snap.get(Scope.JOB, "j", "unmeasured_gpu_seconds") == 45.0
    assert snap.get(Scope.JOB, "j", "cumulative_flop_upper_bound") == pytest.approx(
        60.0 * H100.max_peak_flops
    )


def test_a_gap_is_unmeasured_and_charged_only_to_jobs_on_both_sides() -> None:
    agg = Aggregator()
    agg.ingest(
        report("n", [gpu(0, job="a"), gpu(1, job="b")], seq=1, at=10.0, interval=1.0), 0, 10.0
    )
    # Agent down for 100 s; then b has left GPU 1 and c has started there.
    agg.ingest(
        report("n", [gpu(0, job="a"), gpu(1, job="c")], seq=2, at=111.0, interval=1.0), 1, 111.0
    )
    snap = agg.snapshot(111.0)
    for job in ("a", "b", "c"):
        assert snap.get(Scope.JOB, job, "unmeasured_gpu_seconds") == pytest.approx(100.0)
    measured = 0.9 * H100.max_peak_flops  # util 90 % per report
    assert snap.get(Scope.JOB, "a", "cumulative_flop_upper_bound") == pytest.approx(
        2 * measured + 100.0 * H100.max_peak_flops
    )
    assert snap.get(Scope.JOB, "b", "cumulative_flop_upper_bound") == pytest.approx(measured)
    assert snap.get(Scope.NODE, "n", "unmeasured_gpu_seconds") == pytest.approx(200.0)


def test_a_job_on_a_silent_node_has_an_unknown_rate_and_a_growing_bound() -> None:
    agg = Aggregator(silent_after_intervals=3)
    t = run(agg, "n", [[gpu(0, util=100.0, tensor=100.0, job="j")]] * 2, interval=1.0)
    before = agg.snapshot(t).get(Scope.JOB, "j", "cumulative_flop_upper_bound")
    assert before is not None
    snap = agg.snapshot(t + 10.0)
    assert snap.get(Scope.JOB, "j", "achieved_flops") is None  # never a bare 0
    assert snap.get(Scope.JOB, "j", "achieved_flops_upper_bound") == H100.max_peak_flops
    assert snap.get(Scope.JOB, "j", "unmeasured_gpu_seconds") == pytest.approx(10.0)
    after = snap.get(Scope.JOB, "j", "cumulative_flop_upper_bound")
    assert after == pytest.approx(before + 10.0 * H100.max_peak_flops)
    assert snap.get(Scope.NODE, "n", "achieved_flops") is None
    assert snap.get(Scope.CLUSTER, CLUSTER_KEY, "unmeasured_gpu_seconds") == pytest.approx(10.0)


def test_a_mig_slice_counts_its_share_of_the_parent_peak() -> None:
    g = gpu(0, util=100.0, tensor=100.0, job="j")
    g.sm_share = 3 / 7
    fig = gpu_figures(g)
    assert fig.installed == pytest.approx(H100.peak_flops * 3 / 7)
    assert fig.achieved == pytest.approx(H100.peak_flops * 3 / 7)
    assert fig.achieved_upper == pytest.approx(H100.max_peak_flops * 3 / 7)


def test_the_pci_device_id_identifies_a_gpu_whatever_its_name() -> None:
    g = gpu(0, product="GH100 placeholder name", util=100.0)
    assert gpu_figures(g).model is None
    g.pci_device_id = (0x2330 << 16) | 0x10DE
    assert gpu_figures(g).model == "H100 SXM"


def test_installed_capacity_upper_bound_counts_any_precision_and_unknown_models() -> None:
    agg = Aggregator()
    t = run(agg, "n", [[gpu(0, job=None), gpu(1, product=UNKNOWN, job=None)]])
    snap = agg.snapshot(t)
    assert snap.get(Scope.NODE, "n", "installed_flops") == H100.peak_flops
    assert snap.get(Scope.CLUSTER, CLUSTER_KEY, "installed_flops_upper_bound") == pytest.approx(
        H100.max_peak_flops + devices.TABLE_MAX_PEAK_FLOPS
    )
