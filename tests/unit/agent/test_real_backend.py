"""``NvmlBackend`` reading and steering GPUs through the fake pynvml.

The backend's code is the one that runs on a GPU; only the module under it
is the fake. Every field, every fault, and enforcement seen back in readings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.fakenvml import SM_FRACTION, FakeNvml, gpu_uuid, load_scenario, parse_scenario
from agent.fakenvml.scenario import Scenario
from agent.nvml.backend import GpuBackend, PowerLimits
from agent.nvml.real import NvmlBackend
from protos.computewatch.v1 import telemetry_pb2 as pb
from protos.errors import BackendError
from tests.agent_support import FakeClock

DATA = Path(__file__).parents[2] / "data" / "scenarios"
GIB = 1024**3


def backend(
    scenario: Scenario | str, node: str, **kw: object
) -> tuple[NvmlBackend, FakeNvml, FakeClock]:
    if isinstance(scenario, str):
        scenario = load_scenario(DATA / scenario)
    clock = FakeClock()
    fake = FakeNvml(scenario, node, clock=clock, **kw)  # type: ignore[arg-type]
    return NvmlBackend(fake, clock=clock), fake, clock


def one_gpu(**job: object) -> Scenario:
    spec: dict[str, object] = {"id": "7", "nodes": ["n"], "utilization": [[0, 80]]}
    spec.update(job)
    return parse_scenario(
        {
            "name": "one",
            "duration_seconds": 60,
            "nodes": [{"id": "n", "gpus": [{"model": "NVIDIA H100 80GB HBM3"}]}],
            "jobs": [spec],
        }
    )


def test_it_is_a_gpu_backend() -> None:
    b: GpuBackend = backend("mixed.yaml", "n0")[0]
    assert b.sample().status == pb.NVML_STATUS_OK


def test_every_field_of_a_hopper_gpu() -> None:
    b, _, clock = backend("mixed.yaml", "n0", pids={"100": 4242})
    clock.at(12)
    first = b.sample()
    assert first.status == pb.NVML_STATUS_OK
    assert first.error == ""
    g = first.gpus[0]
    assert g.index == 0
    assert g.uuid == gpu_uuid("n0", 0)
    assert g.product_name == "NVIDIA H100 80GB HBM3"
    assert g.health == pb.GPU_HEALTH_OK
    # The driver's 1/6 s samples since the first one (t = 1/6 .. 12): the job
    # ramps 50 -> 100 % over 10 s, then holds 100 %.
    window = 12 - 1 / 6
    ramp = (50 * 10 + 2.5 * 10**2) - (50 / 6 + 2.5 / 36)
    assert g.activity_window_seconds == pytest.approx(window)
    assert g.utilization_gpu_percent == pytest.approx((ramp + 200) / window, rel=1e-3)
    assert g.memory_used_bytes == 10 * GIB
    assert g.memory_total_bytes == 81559 * 1024 * 1024
    assert g.power_watts == 700.0
    assert g.power_limit_watts == 700.0
    assert g.sm_clock_mhz == 1980
    assert g.energy_millijoules > 0
    assert g.compute_mode == pb.COMPUTE_MODE_DEFAULT
    assert g.HasField("mig_enabled")
    assert not g.mig_enabled
    assert g.processes_known
    assert [(p.pid, p.used_memory_bytes) for p in g.processes] == [(4242, 10 * GIB)]
    assert g.processes[0].job_id == ""  # attribution fills it later
    # GPM needs two samples: the first has none.
    assert not g.HasField("sm_activity_percent")
    assert not g.HasField("tensor_activity_percent")
    clock.at(17)
    g2 = b.sample().gpus[0]
    assert g2.sm_activity_percent == pytest.approx(100 * SM_FRACTION, rel=1e-6)
    assert g2.tensor_activity_percent == pytest.approx(50.0, rel=1e-6)
    assert g2.energy_millijoules - g.energy_millijoules == pytest.approx(700 * 5 * 1000, rel=1e-6)


def test_gpm_averages_over_the_interval_since_the_previous_sample() -> None:
    b, _, clock = backend("mixed.yaml", "n0")
    clock.at(0)
    b.sample()
    clock.at(10)  # utilization ramps 50 -> 100 linearly: mean 75
    g = b.sample().gpus[0]
    assert g.sm_activity_percent == pytest.approx(75 * SM_FRACTION, rel=1e-3)
    assert g.tensor_activity_percent == pytest.approx(37.5, rel=1e-3)


def test_a_gpm_pair_exactly_100_ms_apart_is_not_taken() -> None:
    """nvml.h: two nvmlGpmSampleGet() calls "should be greater than 100ms" apart.
    A pair exactly 100 ms apart is skipped (0.2 - 0.1 == 0.1 exactly in binary
    floating point); the next read covers both intervals."""
    clock = FakeClock()
    clock.t = 0.1
    fake = FakeNvml(load_scenario(DATA / "mixed.yaml"), "n0", clock=clock)
    b = NvmlBackend(fake, clock=clock)
    b.sample()
    clock.t = 0.2
    b.sample()
    assert fake.calls["nvmlGpmSampleGet"] == 1
    clock.t = 0.2 + 1e-6  # just over 100 ms: taken
    b.sample()
    assert fake.calls["nvmlGpmSampleGet"] == 2


def test_pre_hopper_gpu_has_no_gpm_fields_but_everything_else() -> None:
    b, fake, clock = backend("mixed.yaml", "n0")
    for t in (1, 2, 3):
        clock.at(t)
        g = b.sample().gpus[1]
    assert g.product_name == "NVIDIA A100-SXM4-80GB"
    assert not g.HasField("sm_activity_percent")
    assert not g.HasField("tensor_activity_percent")
    assert g.utilization_gpu_percent == 60.0
    assert g.health == pb.GPU_HEALTH_OK
    assert fake.calls["nvmlGpmSampleGet"] == 3  # the H100 only


def test_mig_gpu_and_a_gpu_without_mig() -> None:
    b, _, clock = backend("mixed.yaml", "n1")
    clock.at(1)
    l40s, mig, device = b.sample().gpus
    assert not l40s.HasField("mig_enabled")
    assert mig.mig_enabled
    assert not mig.HasField("utilization_gpu_percent")
    (proc,) = mig.processes
    assert not proc.HasField("used_memory_bytes")
    assert l40s.processes[0].used_memory_bytes == 6 * GIB
    assert mig.health == l40s.health == pb.GPU_HEALTH_OK
    # ``mig: true``: one MIG device spanning the GPU, holding the job's process.
    assert device.parent_uuid == mig.uuid
    assert device.mig_profile == "7g.40gb"
    assert [p.pid for p in device.processes] == [proc.pid]


def test_handles_and_identity_are_cached() -> None:
    b, fake, clock = backend("mixed.yaml", "n0")
    for t in range(5):
        clock.at(t)
        b.sample()
    assert fake.calls["nvmlDeviceGetHandleByIndex"] == 2
    assert fake.calls["nvmlDeviceGetUUID"] == 2
    assert fake.calls["nvmlGpmQueryDeviceSupport"] == 2
    assert fake.calls["nvmlInitWithFlags"] == 1
    assert fake.calls["nvmlDeviceGetPciInfo"] == 2
    assert fake.calls["nvmlGpmSampleAlloc"] == 2  # two samples, reused alternately
    # Identity: handle, PCI info, UUID, name, GPM support; then per sample 12 readings
    # and the graphics and MPS process lists.
    per_sample = (sum(fake.calls.values()) - 2 * 5 - 1) / 5
    assert per_sample <= 1 + 2 * 14


# --- faults --------------------------------------------------------------------------------
def test_lost_gpu_is_reported_lost_and_the_others_still_read() -> None:
    b, _, clock = backend("faults.yaml", "lost")
    clock.at(5)
    before = b.sample()
    assert [g.health for g in before.gpus] == [pb.GPU_HEALTH_OK] * 2
    clock.at(12)
    after = b.sample()
    assert after.status == pb.NVML_STATUS_OK
    ok, lost = after.gpus
    assert ok.health == pb.GPU_HEALTH_OK
    assert ok.utilization_gpu_percent == 80.0
    assert lost.health == pb.GPU_HEALTH_LOST
    assert lost.index == 1
    assert lost.uuid == before.gpus[1].uuid  # from the cache of earlier reads
    assert lost.product_name == "NVIDIA H100 80GB HBM3"
    assert "GPU is lost" in lost.error
    assert not lost.HasField("utilization_gpu_percent")
    clock.at(13)
    assert b.sample().gpus[1].health == pb.GPU_HEALTH_LOST


def test_gpu_lost_before_the_first_read_gets_a_placeholder_identity() -> None:
    b, _, clock = backend("faults.yaml", "lost")
    clock.at(30)
    ok, lost = b.sample().gpus
    assert lost.health == pb.GPU_HEALTH_LOST
    # Never an empty uuid (two such GPUs would make the report a duplicate).
    assert lost.uuid == "unreadable:index-1"
    assert "nvmlDeviceGetHandleByIndex" in lost.error
    assert [(e.function, e.code) for e in lost.field_errors] == [
        ("nvmlDeviceGetHandleByIndex", 15)  # nvml.h NVML_ERROR_GPU_IS_LOST
    ]
    assert ok.health == pb.GPU_HEALTH_OK


def test_not_loaded_is_a_status_and_init_is_retried() -> None:
    b, fake, clock = backend("faults.yaml", "unloaded")
    clock.at(1)
    assert b.sample().status == pb.NVML_STATUS_OK
    clock.at(6)  # the library goes away under a running session
    snap = b.sample()
    assert snap.status == pb.NVML_STATUS_NOT_LOADED
    assert snap.gpus == []
    assert "NVML Shared Library Not Found" in snap.error
    clock.at(7)
    assert b.sample().status == pb.NVML_STATUS_NOT_LOADED
    clock.at(11)
    snap = b.sample()
    assert snap.status == pb.NVML_STATUS_OK
    assert len(snap.gpus) == 1
    assert fake.calls["nvmlInitWithFlags"] == 4


def test_driver_not_loaded_and_no_permission() -> None:
    b = backend("faults.yaml", "nodriver")[0]
    snap = b.sample()
    assert snap.status == pb.NVML_STATUS_NOT_LOADED
    assert "Driver Not Loaded" in snap.error
    b = backend("faults.yaml", "noperm-init")[0]
    snap = b.sample()
    assert snap.status == pb.NVML_STATUS_NO_PERMISSION
    assert snap.gpus == []


def test_no_permission_and_not_supported_leave_fields_absent() -> None:
    b, _, clock = backend("faults.yaml", "partial")
    clock.at(1)
    b.sample()
    clock.at(2)
    g0, g1 = b.sample().gpus
    assert g0.health == g1.health == pb.GPU_HEALTH_OK
    assert not g0.processes_known
    assert len(g0.processes) == 0
    assert g1.processes_known
    assert len(g1.processes) == 1
    for g in (g0, g1):
        assert not g.HasField("energy_millijoules")
        assert not g.HasField("sm_activity_percent")  # GPM sampling not supported here
        assert g.utilization_gpu_percent == 80.0


def test_another_nvml_error_is_a_field_error_not_a_gpu_error() -> None:
    b, _, clock = backend("faults.yaml", "partial")
    clock.at(6)
    g0, g1 = b.sample().gpus
    assert g0.health == g1.health == pb.GPU_HEALTH_OK
    assert not g0.field_errors
    assert g1.error == ""
    assert [(e.function, e.code, e.message) for e in g1.field_errors] == [
        ("nvmlDeviceGetPowerUsage", 999, "Unknown Error")
    ]
    assert not g1.HasField("power_watts")  # unknown, never zero
    # Everything else of the GPU is still read.
    assert g1.uuid == gpu_uuid("partial", 1)
    assert g1.utilization_gpu_percent == 80.0
    assert g1.power_limit_watts == 700.0
    assert g1.compute_mode == pb.COMPUTE_MODE_DEFAULT
    assert g1.processes_known
    assert len(g1.processes) == 1
    clock.at(9)
    g1 = b.sample().gpus[1]
    assert g1.HasField("power_watts")
    assert not g1.field_errors


# --- control and enforcement seen in readings ---------------------------------------------------
def test_prohibited_gpu_refuses_jobs_that_start_later() -> None:
    b, _, clock = backend(one_gpu(start=10), "n")
    uuid = gpu_uuid("n", 0)
    clock.at(1)
    b.set_compute_mode(uuid, pb.COMPUTE_MODE_PROHIBITED)
    clock.at(15)
    g = b.sample().gpus[0]
    assert g.compute_mode == pb.COMPUTE_MODE_PROHIBITED
    assert len(g.processes) == 0
    assert g.utilization_gpu_percent == 0.0
    b.set_compute_mode(uuid, pb.COMPUTE_MODE_DEFAULT)
    assert b.sample().gpus[0].compute_mode == pb.COMPUTE_MODE_DEFAULT


def test_stopped_process_shows_an_idle_gpu() -> None:
    state = {"pid": "running"}
    b, _, clock = backend(one_gpu(), "n", process_state=lambda _pid: state["pid"])
    clock.at(1)
    b.sample()
    clock.at(2)
    assert b.sample().gpus[0].utilization_gpu_percent == 80.0
    state["pid"] = "stopped"
    clock.at(3)
    g = b.sample().gpus[0]
    assert g.utilization_gpu_percent == 0.0
    assert g.tensor_activity_percent == 0.0
    assert len(g.processes) == 1


def test_power_cap_through_the_backend() -> None:
    b, _, clock = backend(one_gpu(utilization=[[0, 100]]), "n")
    uuid = gpu_uuid("n", 0)
    assert b.power_limits(uuid) == PowerLimits(200.0, 700.0, 700.0)
    b.set_power_limit(uuid, 385.0)
    assert b.power_limits(uuid).current_watts == 385.0
    clock.at(1)
    g = b.sample().gpus[0]
    assert g.power_limit_watts == 385.0
    assert g.power_watts <= 385.0
    assert g.utilization_gpu_percent == 50.0


def test_power_limits_current_is_the_management_limit() -> None:
    scenario = parse_scenario(
        {
            "name": "oob",
            "duration_seconds": 60,
            "nodes": [
                {
                    "id": "n",
                    "gpus": [{"model": "NVIDIA H100 80GB HBM3", "external_power_limit_watts": 450}],
                }
            ],
            "jobs": [{"id": "7", "nodes": ["n"], "utilization": [[0, 100]]}],
        }
    )
    b, _, clock = backend(scenario, "n")
    uuid = gpu_uuid("n", 0)
    assert b.power_limits(uuid) == PowerLimits(200.0, 700.0, 700.0)
    clock.at(1)
    g = b.sample().gpus[0]
    assert g.power_limit_watts == 450.0  # the enforced limit: what the GPU runs under
    assert g.power_watts <= 450.0
    b.set_power_limit(uuid, 300.0)
    assert b.power_limits(uuid).current_watts == 300.0
    assert b.sample().gpus[0].power_limit_watts == 300.0


@pytest.mark.parametrize("watts", [50.0, 900.0, float("nan"), -1.0])
def test_power_limit_out_of_range_is_a_backend_error(watts: float) -> None:
    b = backend(one_gpu(), "n")[0]
    with pytest.raises(BackendError) as info:
        b.set_power_limit(gpu_uuid("n", 0), watts)
    assert gpu_uuid("n", 0) in str(info.value)
    assert b.power_limits(gpu_uuid("n", 0)).current_watts == 700.0


def test_out_of_range_power_limit_chains_the_nvml_error() -> None:
    b = backend(one_gpu(), "n")[0]
    with pytest.raises(BackendError) as info:
        b.set_power_limit(gpu_uuid("n", 0), 100.0)
    assert type(info.value.__cause__).__name__ == "NVMLError_InvalidArgument"


def test_unknown_uuid_and_unsettable_mode() -> None:
    b = backend(one_gpu(), "n")[0]
    with pytest.raises(BackendError, match="no GPU with UUID"):
        b.set_compute_mode("GPU-nope", pb.COMPUTE_MODE_PROHIBITED)
    with pytest.raises(BackendError, match="no GPU with UUID"):
        b.power_limits("GPU-nope")
    with pytest.raises(BackendError, match="cannot be set"):
        b.set_compute_mode(gpu_uuid("n", 0), pb.COMPUTE_MODE_UNSPECIFIED)
    with pytest.raises(BackendError, match="NotSupported|Not Supported"):
        b.set_compute_mode(gpu_uuid("n", 0), pb.COMPUTE_MODE_EXCLUSIVE_THREAD)


def test_control_without_nvml_is_a_backend_error() -> None:
    b = backend("faults.yaml", "nodriver")[0]
    with pytest.raises(BackendError, match="NVML is not usable"):
        b.set_compute_mode(gpu_uuid("nodriver", 0), pb.COMPUTE_MODE_PROHIBITED)


def test_close_frees_gpm_samples_and_shuts_down_then_sampling_reinitialises() -> None:
    b, fake, clock = backend("mixed.yaml", "n0")
    for t in (1, 2):
        clock.at(t)
        b.sample()
    assert fake.calls["nvmlGpmSampleAlloc"] == 2
    b.close()
    assert fake.calls["nvmlGpmSampleFree"] == 2
    assert fake.calls["nvmlShutdown"] == 1
    b.close()  # idempotent
    assert fake.calls["nvmlShutdown"] == 1
    clock.at(3)
    assert b.sample().status == pb.NVML_STATUS_OK
    assert fake.calls["nvmlInitWithFlags"] == 2


def test_a_gpm_error_is_a_field_error_and_gpm_recovers_after() -> None:
    scenario = parse_scenario(
        {
            "name": "gpm",
            "duration_seconds": 60,
            "nodes": [
                {
                    "id": "n",
                    "gpus": [{"model": "NVIDIA H200"}],
                    "faults": [
                        {
                            "kind": "nvml_error",
                            "error": "timeout",
                            "functions": ["nvmlGpmMetricsGet"],
                            "at": 3,
                            "until": 4,
                        }
                    ],
                }
            ],
            "jobs": [{"id": "1", "nodes": ["n"], "utilization": [[0, 50]]}],
        }
    )
    b, _, clock = backend(scenario, "n")
    readings = []
    for t in (1, 2, 3, 4, 5, 6):
        clock.at(t)
        readings.append(b.sample().gpus[0])
    assert [g.health for g in readings] == [pb.GPU_HEALTH_OK] * 6
    assert [[(e.function, e.code) for e in g.field_errors] for g in readings] == [
        [],
        [],
        [("nvmlGpmMetricsGet", 10)],  # nvml.h NVML_ERROR_TIMEOUT
        [],
        [],
        [],
    ]
    assert readings[2].utilization_gpu_percent == 50.0
    assert [g.HasField("sm_activity_percent") for g in readings] == [
        False,
        True,
        False,
        False,  # the previous GPM sample was dropped with the error
        True,
        True,
    ]


def test_a_gpm_error_frees_the_samples_it_drops() -> None:
    # Every sample NVML allocated is freed by close(), errors or not: an agent
    # on a GPU whose GPM calls keep failing must not leak one per interval.
    scenario = parse_scenario(
        {
            "name": "gpm-leak",
            "duration_seconds": 60,
            "nodes": [
                {
                    "id": "n",
                    "gpus": [{"model": "NVIDIA H200"}],
                    "faults": [
                        {
                            "kind": "nvml_error",
                            "error": "timeout",
                            "functions": ["nvmlGpmMetricsGet"],
                            "at": 2,
                            "until": 9,
                        }
                    ],
                }
            ],
            "jobs": [{"id": "1", "nodes": ["n"], "utilization": [[0, 50]]}],
        }
    )
    b, fake, clock = backend(scenario, "n")
    for t in range(1, 12):
        clock.at(t)
        b.sample()
    allocated = fake.calls["nvmlGpmSampleAlloc"]
    assert allocated > 2  # the error path really ran
    b.close()
    assert fake.calls["nvmlGpmSampleFree"] == allocated
