"""Accounting for MIG: a slice counts at the parent's peak x its SM share, the
parent's own process list and activity are not counted again.

The reports come from the real agent backend reading the fake pynvml."""

from __future__ import annotations

import pytest

from agent.fakenvml import FakeNvml, parse_scenario
from agent.nvml.real import NvmlBackend
from collector.accounting.aggregate import METHOD_PIPES, Aggregator
from collector.accounting.snapshot import Scope
from collector.stop import mig
from protos import devices
from protos.computewatch.v1 import control_pb2, telemetry_pb2

H100 = devices.lookup("NVIDIA H100 80GB HBM3")
assert H100 is not None
PEAK = H100.peak_flops
T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def mig_report() -> telemetry_pb2.NodeReport:
    """GPU 0: H100 as 3g.40gb (job "1", 100 % busy, half tensor) + 4g.40gb (idle);
    GPU 1: a whole H100 running job "2"."""
    scenario = parse_scenario(
        {
            "name": "mig",
            "duration_seconds": 60,
            "nodes": [
                {
                    "id": "n",
                    "gpus": [
                        {"model": "NVIDIA H100 80GB HBM3", "mig": ["3g.40gb", "4g.40gb"]},
                        {"model": "NVIDIA H100 80GB HBM3"},
                    ],
                }
            ],
            "jobs": [
                {"id": "1", "nodes": ["n"], "gpu_indices": [0], "utilization": [[0, 100]]},
                {"id": "2", "nodes": ["n"], "gpu_indices": [1], "utilization": [[0, 100]]},
            ],
        }
    )
    clock = Clock()
    backend = NvmlBackend(FakeNvml(scenario, "n", clock=clock), clock=clock)
    clock.t = T0 + 1
    backend.sample()
    clock.t = T0 + 2
    gpus = backend.sample().gpus
    for g in gpus:
        for p in g.processes:  # attribution: job "1" is pid 200000, job "2" 200001
            p.job_id = str(p.pid - 200_000 + 1)
    return telemetry_pb2.NodeReport(node_id="n", sequence=1, interval_seconds=1.0, gpus=gpus)


def test_a_job_on_a_slice_is_charged_the_slice_not_the_gpu() -> None:
    report = mig_report()
    parent, small, large, _ = report.gpus
    agg = Aggregator()
    agg.ingest(report, log_index=0, received_at=100.0)
    snap = agg.snapshot(100.0)
    share = small.sm_share
    assert share == pytest.approx(57 / 132)
    job = snap.values[(Scope.JOB, "1")]
    assert job["allocated_flops"] == pytest.approx(PEAK * share)
    assert job["achieved_flops"] == pytest.approx(
        PEAK * share * small.tensor_activity_percent / 100
    )
    assert job["gpus"] == 1.0
    assert agg.jobs["1"].cumulative_flop == pytest.approx(job["achieved_flops"])
    assert not agg.jobs["1"].upper_bound  # measured by GPM on its GPU instance
    # GPU scope: each slice at its share, the parent the sum of its slices.
    assert snap.get(Scope.GPU, small.uuid, "installed_flops") == pytest.approx(PEAK * share)
    assert snap.get(Scope.GPU, large.uuid, "achieved_flops") == 0.0
    assert snap.get(Scope.GPU, parent.uuid, "achieved_flops") == pytest.approx(
        job["achieved_flops"]
    )
    # Node: the MIG GPU counts once (its hardware), with its slices' allocation.
    node = snap.values[(Scope.NODE, "n")]
    assert node["installed_flops"] == pytest.approx(2 * PEAK)
    assert node["allocated_flops"] == pytest.approx(PEAK * share + PEAK)
    assert node["achieved_flops"] == pytest.approx(
        job["achieved_flops"] + snap.values[(Scope.JOB, "2")]["achieved_flops"]
    )
    # The parent names the worst method of its devices (per-pipe GPM on each).
    assert agg.nodes["n"].gpus[0].method == METHOD_PIPES


def test_a_slice_without_its_share_counts_at_the_full_peak() -> None:
    report = mig_report()
    report.gpus[1].ClearField("sm_share")
    agg = Aggregator()
    agg.ingest(report, log_index=0, received_at=100.0)
    assert agg.snapshot(100.0).values[(Scope.JOB, "1")]["allocated_flops"] == PEAK


def test_effectiveness_judges_a_mig_gpu_by_its_devices_and_its_power_by_the_parent() -> None:
    parent, small, large, whole = mig_report().gpus
    gpus = [parent, small, large, whole]
    halt, throttle = control_pb2.ACTION_HALT, control_pb2.ACTION_THROTTLE
    node, job = control_pb2.SCOPE_KIND_NODE, control_pb2.SCOPE_KIND_JOB
    everything = {g.uuid for g in gpus}
    assert mig.judged(halt, node, everything, gpus) == {small.uuid, large.uuid, whole.uuid}
    assert mig.judged(halt, job, {parent.uuid, small.uuid}, gpus) == {small.uuid}
    assert mig.judged(throttle, job, {parent.uuid, small.uuid}, gpus) == {parent.uuid}
    assert mig.judged(throttle, node, everything, gpus) == {parent.uuid, whole.uuid}


def test_mig_devices_are_not_counted_twice_in_bounds_or_unmeasured_time() -> None:
    report = mig_report()
    small = report.gpus[1]
    # The small slice's activity covers half of the 1 s interval (samples dropped).
    small.activity_window_seconds = 0.5
    agg = Aggregator()
    agg.ingest(report, log_index=0, received_at=100.0)
    snap = agg.snapshot(100.0)
    node = snap.values[(Scope.NODE, "n")]
    # The parent's window is what all its devices cover; its devices add nothing again.
    assert node["unmeasured_gpu_seconds"] == pytest.approx(0.5)
    assert snap.get(Scope.JOB, "1", "unmeasured_gpu_seconds") == pytest.approx(0.5)
    uppers = [snap.get(Scope.GPU, g.uuid, "achieved_flops_upper_bound") for g in report.gpus]
    assert all(u is not None for u in uppers)
    p_up, s_up, l_up, w_up = (u or 0.0 for u in uppers)
    assert p_up == pytest.approx(s_up + l_up)  # the parent carries its devices' bound
    assert node["achieved_flops_upper_bound"] == pytest.approx(p_up + w_up)
    # Installed capacity: two physical GPUs at any precision, the slices not again.
    assert node["installed_flops_upper_bound"] == pytest.approx(2 * H100.max_peak_flops)
    assert snap.values[(Scope.CLUSTER, "cluster")]["gpus_unknown_model"] == 0.0
    # The parent holds no job: job "1" is charged its slice only, "2" its whole GPU.
    job_one = agg.jobs["1"]
    assert job_one.cumulative_flop_upper == pytest.approx(
        s_up * 0.5 + H100.max_peak_flops * small.sm_share * 0.5
    )


def test_a_utilization_rate_reading_counts_for_the_whole_interval() -> None:
    """Without the driver's sample buffer the agent reads nvmlDeviceGetUtilizationRates;
    it claims no activity window, so the estimate covers the report's interval rather
    than one driver period (1/6 s) with the rest unmeasured."""
    scenario = parse_scenario(
        {
            "name": "rates",
            "duration_seconds": 60,
            "nodes": [
                {
                    "id": "n",
                    "gpus": [{"model": "NVIDIA L4"}],
                    "faults": [{"kind": "not_supported", "functions": ["nvmlDeviceGetSamples"]}],
                }
            ],
            "jobs": [{"id": "1", "nodes": ["n"], "utilization": [[0, 70]]}],
        }
    )
    clock = Clock()
    backend = NvmlBackend(FakeNvml(scenario, "n", clock=clock), clock=clock)
    clock.t = T0 + 1
    backend.sample()
    clock.t = T0 + 11
    (gpu,) = backend.sample().gpus
    for p in gpu.processes:
        p.job_id = "1"
    report = telemetry_pb2.NodeReport(node_id="n", sequence=1, interval_seconds=10.0, gpus=[gpu])
    agg = Aggregator()
    agg.ingest(report, log_index=0, received_at=100.0)
    l4 = devices.lookup("NVIDIA L4")
    assert l4 is not None
    assert agg.jobs["1"].cumulative_flop == pytest.approx(l4.peak_flops * 0.7 * 10)
    assert agg.jobs["1"].unmeasured_gpu_seconds == 0.0
