"""A GPU shared by jobs is split by each process's measured SM share.

The report comes from the real agent backend reading the fake pynvml
(nvmlDeviceGetProcessUtilization per pid)."""

from __future__ import annotations

import pytest

from agent.fakenvml import FakeNvml, parse_scenario
from agent.nvml.real import NvmlBackend
from collector.accounting.aggregate import Aggregator
from collector.accounting.shares import activity_shares
from collector.accounting.snapshot import Scope
from protos.computewatch.v1 import telemetry_pb2

T0 = 1_700_000_000.0


def shared_gpu_report(*, drop_one_share: bool = False) -> telemetry_pb2.NodeReport:
    """One H100: job "1" at 60 %, job "2" at 20 % (pids 200000 and 200001)."""
    scenario = parse_scenario(
        {
            "name": "shared",
            "duration_seconds": 60,
            "nodes": [{"id": "n", "gpus": [{"model": "NVIDIA H100 80GB HBM3"}]}],
            "jobs": [
                {"id": "1", "nodes": ["n"], "utilization": [[0, 60]], "tensor_fraction": 0.5},
                {"id": "2", "nodes": ["n"], "utilization": [[0, 20]], "tensor_fraction": 0.5},
            ],
        }
    )
    t = [T0]
    backend = NvmlBackend(FakeNvml(scenario, "n", clock=lambda: t[0]), clock=lambda: t[0])
    t[0] += 1
    backend.sample()
    t[0] += 2
    (gpu,) = backend.sample().gpus
    for p in gpu.processes:
        p.job_id = str(p.pid - 200_000 + 1)
    if drop_one_share:
        gpu.processes[1].ClearField("sm_utilization_percent")
    return telemetry_pb2.NodeReport(node_id="n", sequence=1, interval_seconds=2.0, gpus=[gpu])


def achieved(report: telemetry_pb2.NodeReport) -> tuple[float, float, float]:
    agg = Aggregator()
    agg.ingest(report, log_index=0, received_at=100.0)
    snap = agg.snapshot(100.0)
    gpu = snap.get(Scope.GPU, report.gpus[0].uuid, "achieved_flops")
    one = snap.get(Scope.JOB, "1", "achieved_flops")
    two = snap.get(Scope.JOB, "2", "achieved_flops")
    assert gpu is not None
    assert one is not None
    assert two is not None
    return gpu, one, two


def test_jobs_get_their_processes_share_of_the_gpu() -> None:
    report = shared_gpu_report()
    assert sorted(p.sm_utilization_percent for p in report.gpus[0].processes) == [20.0, 60.0]
    gpu, one, two = achieved(report)
    assert one == pytest.approx(gpu * 0.75)
    assert two == pytest.approx(gpu * 0.25)
    assert one + two == pytest.approx(gpu)


def test_an_unknown_share_falls_back_to_an_even_split() -> None:
    gpu, one, two = achieved(shared_gpu_report(drop_one_share=True))
    assert one == two == pytest.approx(gpu / 2)


def test_shares_ignore_nothing_measured() -> None:
    g = telemetry_pb2.GpuSample()
    g.processes.add(pid=1, job_id="a", sm_utilization_percent=0.0)
    g.processes.add(pid=2, job_id="b", sm_utilization_percent=0.0)
    assert activity_shares(g, ("a", "b")) == ()
    g.processes[0].sm_utilization_percent = 30.0
    g.processes.add(pid=3, job_id="a", sm_utilization_percent=10.0)
    assert activity_shares(g, ("a", "b")) == (1.0, 0.0)
