"""Accounting for MIG: a slice counts at the parent's peak x its SM share, the
parent's own process list and activity are not counted again.

The reports come from the real agent backend reading the fake pynvml."""

from __future__ import annotations

import pytest

from agent.fakenvml import FakeNvml, parse_scenario
from agent.nvml.real import NvmlBackend
from collector import mig
from collector.aggregate import METHOD_TENSOR, Aggregator
from collector.snapshot import Scope
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
    assert agg.nodes["n"].gpus[0].method == METHOD_TENSOR


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
