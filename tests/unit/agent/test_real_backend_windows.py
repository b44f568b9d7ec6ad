"""``NvmlBackend``'s activity windows: what each figure covers, read through the fake."""

from __future__ import annotations

import pytest

from agent.fakenvml import SM_FRACTION, FakeNvml, parse_scenario
from agent.fakenvml.scenario import Scenario
from agent.nvml.real import NvmlBackend
from protos.computewatch.v1 import telemetry_pb2 as pb
from protos.reports import MAX_INTERVAL_SECONDS
from tests.agent_support import FakeClock


def one_gpu(model: str, *jobs: dict[str, object]) -> Scenario:
    return parse_scenario(
        {
            "name": "w",
            "duration_seconds": 600,
            "nodes": [{"id": "n", "gpus": [{"model": model}]}],
            "jobs": [{"nodes": ["n"], **j} for j in jobs],
        }
    )


def backend(s: Scenario) -> tuple[NvmlBackend, FakeNvml, FakeClock]:
    clock = FakeClock()
    fake = FakeNvml(s, "n", clock=clock)
    return NvmlBackend(fake, clock=clock), fake, clock


# Busy (100 %) for 5 s, then idle.
BURST = {"id": "1", "utilization": [[0, 100], [5, 100], [5.001, 0]]}


def test_an_enforcement_read_between_reports_does_not_cut_the_gpm_window() -> None:
    b, fake, clock = backend(one_gpu("NVIDIA H100 80GB HBM3", BURST))
    clock.at(1)
    b.sample()
    clock.at(5)
    enforcement = b.sample(activity=False).gpus[0]  # a halt arrives
    assert enforcement.processes  # what enforcement needs is there
    assert not enforcement.HasField("sm_activity_percent")
    clock.at(6)
    g = b.sample().gpus[0]
    # The report covers 1..6 s: 4 busy seconds of 5, not just the idle second after the halt.
    assert g.activity_window_seconds == pytest.approx(5.0)
    assert g.sm_activity_percent == pytest.approx(100 * SM_FRACTION * 4 / 5, rel=1e-3)
    assert fake.calls["nvmlGpmSampleGet"] == 2


def test_gpm_samples_closer_than_100_ms_are_not_taken() -> None:
    b, fake, clock = backend(
        one_gpu("NVIDIA H100 80GB HBM3", {"id": "1", "utilization": [[0, 100]]})
    )
    clock.at(1)
    b.sample()
    clock.at(1.05)  # an out-of-cycle report 50 ms later: nvml.h wants > 100 ms
    soon = b.sample().gpus[0]
    assert not soon.HasField("sm_activity_percent")  # not the fake's (and NVML's) stale 0 %
    clock.at(2)
    g = b.sample().gpus[0]
    assert g.sm_activity_percent == pytest.approx(100 * SM_FRACTION)
    assert g.activity_window_seconds == pytest.approx(1.0)  # from the sample at 1 s
    assert fake.calls["nvmlGpmSampleGet"] == 2


def test_utilization_is_averaged_over_the_interval_not_the_last_driver_period() -> None:
    # 20 % until 9.5 s, then 100 %: an instantaneous reading at 10 s says 100 %.
    b, _, clock = backend(
        one_gpu(
            "NVIDIA A100-SXM4-80GB", {"id": "1", "utilization": [[0, 20], [9.5, 20], [9.501, 100]]}
        )
    )
    clock.at(5)
    b.sample()
    clock.at(10)
    g = b.sample().gpus[0]
    assert g.activity_window_seconds == pytest.approx(5.0, abs=1e-3)
    assert g.utilization_gpu_percent == pytest.approx((4.5 * 20 + 0.5 * 100) / 5, abs=0.5)


def test_a_read_with_no_new_driver_sample_uses_the_current_reading() -> None:
    """Reports closer together than the driver's period (nvmlDeviceGetSamples answers
    NOT_FOUND) take nvmlDeviceGetUtilizationRates, claiming no window: an unknown
    figure would make such intervals unmeasured in the accounting."""
    b, fake, clock = backend(
        one_gpu("NVIDIA A100-SXM4-80GB", {"id": "1", "utilization": [[0, 50]]})
    )
    clock.at(5)
    b.sample()
    clock.at(5.01)  # no 1/6 s driver period ended since
    g = b.sample().gpus[0]
    assert g.utilization_gpu_percent == pytest.approx(50.0)
    assert not g.HasField("activity_window_seconds")
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 1
    clock.at(6)  # the buffer is read again, from where it was left
    g = b.sample().gpus[0]
    assert g.activity_window_seconds == pytest.approx(1.0, abs=0.2)
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 1


def test_process_utilization_splits_the_gpu_between_jobs() -> None:
    b, _, clock = backend(
        one_gpu(
            "NVIDIA L40S",
            {"id": "1", "utilization": [[0, 60]]},
            {"id": "2", "utilization": [[0, 20]], "start": 2},
        )
    )
    clock.at(2)
    b.sample()
    clock.at(6)
    g = b.sample().gpus[0]
    shares = sorted((p.sm_utilization_percent for p in g.processes), reverse=True)
    assert shares == [60.0, 20.0]
    assert g.utilization_gpu_percent == pytest.approx(80.0)


def test_without_a_sample_buffer_the_rate_claims_no_window() -> None:
    s = parse_scenario(
        {
            "name": "w",
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
    b, _, clock = backend(s)
    clock.at(3)
    g = b.sample().gpus[0]
    assert g.utilization_gpu_percent == 70.0
    # nvml.h nvmlUtilization_t: the period "may be between 1 second and 1/6 second".
    # Claiming that period as the window would leave the rest of every report's
    # interval unmeasured (collector.accounting.window): one reading claims none,
    # and the collector takes it for the interval.
    assert not g.HasField("activity_window_seconds")


@pytest.mark.parametrize("kind", ["nvml_error", "not_supported"])
def test_a_process_utilization_failure_leaves_only_the_shares_unknown(kind: str) -> None:
    s = parse_scenario(
        {
            "name": "w",
            "duration_seconds": 60,
            "nodes": [
                {
                    "id": "n",
                    "gpus": [{"model": "NVIDIA L4"}],
                    "faults": [{"kind": kind, "functions": ["nvmlDeviceGetProcessUtilization"]}],
                }
            ],
            "jobs": [{"id": "1", "nodes": ["n"], "utilization": [[0, 70]]}],
        }
    )
    b, fake, clock = backend(s)
    for t in (2, 3, 4):
        clock.at(t)
        g = b.sample().gpus[0]
    assert g.health == pb.GPU_HEALTH_OK
    assert g.utilization_gpu_percent == pytest.approx(70.0)
    (proc,) = g.processes
    assert not proc.HasField("sm_utilization_percent")
    # NotSupported is asked once; another error is asked again next time.
    expected = 1 if kind == "not_supported" else 3
    assert fake.calls["nvmlDeviceGetProcessUtilization"] == expected


def test_a_gpm_base_older_than_any_report_interval_is_not_used() -> None:
    b, _, clock = backend(
        parse_scenario(
            {
                "name": "w",
                "duration_seconds": 10_000,
                "nodes": [{"id": "n", "gpus": [{"model": "NVIDIA H100 80GB HBM3"}]}],
                "jobs": [{"id": "1", "nodes": ["n"], "utilization": [[0, 100]]}],
            }
        )
    )
    clock.at(1)
    b.sample()
    clock.at(1 + MAX_INTERVAL_SECONDS + 1)  # the agent was away for over an hour
    late = b.sample().gpus[0]
    assert not late.HasField("sm_activity_percent")
    if late.HasField("activity_window_seconds"):
        assert late.activity_window_seconds <= MAX_INTERVAL_SECONDS
    clock.at(2 + MAX_INTERVAL_SECONDS + 1)
    g = b.sample().gpus[0]
    assert g.sm_activity_percent == pytest.approx(100 * SM_FRACTION)
    assert g.activity_window_seconds == pytest.approx(1.0)


def test_no_utilization_source_leaves_utilization_unknown_not_the_gpu_broken() -> None:
    s = parse_scenario(
        {
            "name": "w",
            "duration_seconds": 60,
            "nodes": [
                {
                    "id": "n",
                    "gpus": [{"model": "NVIDIA L4"}],
                    "faults": [
                        {
                            "kind": "not_supported",
                            "functions": ["nvmlDeviceGetSamples", "nvmlDeviceGetUtilizationRates"],
                        }
                    ],
                }
            ],
            "jobs": [{"id": "1", "nodes": ["n"], "utilization": [[0, 70]]}],
        }
    )
    b, _, clock = backend(s)
    clock.at(3)
    g = b.sample().gpus[0]
    assert g.health == pb.GPU_HEALTH_OK
    assert not g.HasField("utilization_gpu_percent")
    assert not g.HasField("activity_window_seconds")
    assert g.HasField("power_watts")
