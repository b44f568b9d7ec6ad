"""The fake pynvml on its own: pynvml's surface, errors, the activity model, faults."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pynvml
import pytest

from agent.fakenvml import SM_FRACTION, FakeNvml, gpu_uuid, load_scenario
from agent.fakenvml.scenario import FAULTABLE_FUNCTIONS, Scenario, parse_scenario
from protos.errors import ConfigError
from tests.agent_support import T0, FakeClock

DATA = Path(__file__).parents[2] / "data" / "scenarios"


@pytest.fixture
def mixed() -> Scenario:
    return load_scenario(DATA / "mixed.yaml")


@pytest.fixture
def faults() -> Scenario:
    return load_scenario(DATA / "faults.yaml")


def one_gpu(model: str = "NVIDIA H100 80GB HBM3", **job: object) -> Scenario:
    spec = {"id": "7", "nodes": ["n"], "utilization": [[0, 80]], "tensor_fraction": 0.5}
    spec.update(job)
    return parse_scenario(
        {
            "name": "one",
            "duration_seconds": 60,
            "nodes": [{"id": "n", "gpus": [{"model": model}]}],
            "jobs": [spec],
        }
    )


def started(scenario: Scenario, node: str = "n0", **kw: object) -> tuple[FakeNvml, FakeClock]:
    clock = FakeClock()
    fake = FakeNvml(scenario, node, clock=clock, **kw)  # type: ignore[arg-type]
    fake.nvmlInit()
    return fake, clock


# --- pynvml's own surface ---------------------------------------------------------------
def test_constants_errors_and_structs_are_pynvmls_own(mixed: Scenario) -> None:
    fake = FakeNvml(mixed, "n0")
    assert fake.NVMLError is pynvml.NVMLError
    assert fake.NVMLError_GpuIsLost is pynvml.NVMLError_GpuIsLost
    assert fake.NVMLError_NotSupported is pynvml.NVMLError_NotSupported
    assert fake.NVML_CLOCK_SM == pynvml.NVML_CLOCK_SM
    assert fake.NVML_GPM_METRIC_ANY_TENSOR_UTIL == pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL
    assert fake.c_nvmlGpmMetricsGet_t is pynvml.c_nvmlGpmMetricsGet_t
    assert fake.NVMLLibraryMismatchError is pynvml.NVMLLibraryMismatchError


def test_functions_it_does_not_implement_are_absent_not_the_real_ones(mixed: Scenario) -> None:
    fake = FakeNvml(mixed, "n0")
    with pytest.raises(AttributeError):
        _ = fake.nvmlDeviceGetFanSpeed
    with pytest.raises(AttributeError):
        _ = fake.something_else


def test_every_faultable_function_is_implemented(mixed: Scenario) -> None:
    fake = FakeNvml(mixed, "n0")
    for name in FAULTABLE_FUNCTIONS:
        assert callable(getattr(fake, name)), name


def test_unknown_node_is_a_config_error(mixed: Scenario) -> None:
    from protos.errors import ConfigError

    with pytest.raises(ConfigError, match="no node 'nope'"):
        FakeNvml(mixed, "nope")


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("nvmlDeviceGetCount", ()),
        ("nvmlDeviceGetHandleByIndex", (0,)),
        ("nvmlSystemGetDriverVersion", ()),
        ("nvmlGpmSampleAlloc", ()),
        ("nvmlShutdown", ()),
    ],
)
def test_calls_before_init_raise_uninitialized(
    mixed: Scenario, call: str, args: tuple[int]
) -> None:
    fake = FakeNvml(mixed, "n0")
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        getattr(fake, call)(*args)


def test_device_calls_after_shutdown_raise_uninitialized(mixed: Scenario) -> None:
    fake, _ = started(mixed)
    fake.nvmlInit()  # refcounted like NVML
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    fake.nvmlShutdown()
    assert fake.nvmlDeviceGetName(handle) == "NVIDIA H100 80GB HBM3"
    fake.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetName(handle)


@pytest.mark.parametrize("handle", [None, 0, "GPU-0", object()])
def test_bad_handles_raise_invalid_argument(mixed: Scenario, handle: object) -> None:
    fake, _ = started(mixed)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetUUID(handle)


def test_a_handle_from_another_node_is_invalid(mixed: Scenario) -> None:
    fake, _ = started(mixed, "n0")
    other, _ = started(mixed, "n1")
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetUUID(other.nvmlDeviceGetHandleByIndex(0))


def test_enumeration_and_identity(mixed: Scenario) -> None:
    fake, _ = started(mixed)
    assert fake.nvmlDeviceGetCount() == 2
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetHandleByIndex(2)
    handle = fake.nvmlDeviceGetHandleByIndex(1)
    uuid = fake.nvmlDeviceGetUUID(handle)
    assert uuid == gpu_uuid("n0", 1)
    assert uuid.startswith("GPU-")
    assert fake.nvmlDeviceGetIndex(fake.nvmlDeviceGetHandleByUUID(uuid)) == 1
    assert fake.nvmlDeviceGetIndex(fake.nvmlDeviceGetHandleByUUID(uuid.encode())) == 1
    with pytest.raises(pynvml.NVMLError_NotFound):
        fake.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")
    assert fake.nvmlDeviceGetName(handle) == "NVIDIA A100-SXM4-80GB"
    assert fake.nvmlSystemGetDriverVersion() == mixed.driver_version
    assert gpu_uuid("n1", 1) != uuid


# --- the activity model ------------------------------------------------------------------
def test_utilization_follows_the_timeline_and_caps_at_100(mixed: Scenario) -> None:
    fake, clock = started(mixed)
    h = fake.nvmlDeviceGetHandleByIndex(0)
    clock.at(0)
    assert fake.nvmlDeviceGetUtilizationRates(h).gpu == 50
    clock.at(5)
    assert fake.nvmlDeviceGetUtilizationRates(h).gpu == 75
    clock.at(15)
    assert fake.nvmlDeviceGetUtilizationRates(h).gpu == 100
    clock.at(25)  # job 101 adds 80 %: still 100
    assert fake.nvmlDeviceGetUtilizationRates(h).gpu == 100
    assert len(fake.nvmlDeviceGetComputeRunningProcesses(h)) == 2
    clock.at(45)  # 101 ended
    assert len(fake.nvmlDeviceGetComputeRunningProcesses(h)) == 1


def test_memory_power_and_clocks(mixed: Scenario) -> None:
    fake, clock = started(mixed)
    h = fake.nvmlDeviceGetHandleByIndex(1)  # A100, job 200 at 60 %, 20 GiB
    clock.at(3)
    memory = fake.nvmlDeviceGetMemoryInfo(h)
    assert memory.used == 20 * 1024**3
    assert memory.total == 80 * 1024**3
    assert memory.free == memory.total - memory.used
    v2 = fake.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert v2.used == memory.used
    assert fake.nvmlDeviceGetPowerUsage(h) == round((55 + (400 - 55) * 0.6) * 1000)
    assert fake.nvmlDeviceGetEnforcedPowerLimit(h) == 400_000
    assert fake.nvmlDeviceGetPowerManagementLimitConstraints(h) == [100_000, 400_000]
    assert fake.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) == 1410
    assert fake.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM) == 1410
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetClockInfo(h, 99)


def test_energy_integrates_power_over_clock_time(mixed: Scenario) -> None:
    fake, clock = started(mixed)
    h = fake.nvmlDeviceGetHandleByIndex(1)  # constant 60 % from t=0
    clock.at(0)
    e0 = fake.nvmlDeviceGetTotalEnergyConsumption(h)
    clock.at(10)
    e1 = fake.nvmlDeviceGetTotalEnergyConsumption(h)
    watts = 55 + (400 - 55) * 0.6
    assert e1 - e0 == pytest.approx(watts * 10 * 1000, rel=1e-6)
    assert e0 > 0  # a counter since the driver loaded, not since the scenario started


def test_gpm_metrics_average_between_two_samples(mixed: Scenario) -> None:
    fake, clock = started(mixed)
    h = fake.nvmlDeviceGetHandleByIndex(0)
    assert fake.nvmlGpmQueryDeviceSupport(h).isSupportedDevice == 1
    first, second = fake.nvmlGpmSampleAlloc(), fake.nvmlGpmSampleAlloc()
    clock.at(10)
    fake.nvmlGpmSampleGet(h, first)
    clock.at(20)
    fake.nvmlGpmSampleGet(h, second)
    request = pynvml.c_nvmlGpmMetricsGet_t()
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = 4
    request.sample1, request.sample2 = first, second
    request.metrics[0].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL
    request.metrics[1].metricId = pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL
    request.metrics[2].metricId = pynvml.NVML_GPM_METRIC_FP64_UTIL
    request.metrics[3].metricId = pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL
    fake.nvmlGpmMetricsGet(request)
    sm, tensor, fp64, dram = (request.metrics[i] for i in range(4))
    assert sm.nvmlReturn == pynvml.NVML_SUCCESS
    assert sm.value == pytest.approx(100 * SM_FRACTION, rel=1e-6)
    assert tensor.value == pytest.approx(50.0, rel=1e-6)
    assert fp64.nvmlReturn == pynvml.NVML_SUCCESS
    assert fp64.value == 0.0  # the job's precision mix has no FP64 work
    assert dram.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    fake.nvmlGpmSampleFree(first)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlGpmSampleFree(first)


def test_gpm_request_checks(mixed: Scenario) -> None:
    fake, _ = started(mixed)
    h0 = fake.nvmlDeviceGetHandleByIndex(0)
    a, b = fake.nvmlGpmSampleAlloc(), fake.nvmlGpmSampleAlloc()
    fake.nvmlGpmSampleGet(h0, a)
    request = pynvml.c_nvmlGpmMetricsGet_t()
    request.version = 99
    request.sample1, request.sample2 = a, b
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        fake.nvmlGpmMetricsGet(request)
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # b was never filled
        fake.nvmlGpmMetricsGet(request)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlGpmSampleGet(h0, ctypes.c_int(3))
    # Same time as a (nvml.h wants > 100 ms between samples and documents no
    # error): the counters did not move, a busy GPU reads 0 %.
    fake.nvmlGpmSampleGet(h0, b)
    request.numMetrics = 1
    request.metrics[0].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL
    fake.nvmlGpmMetricsGet(request)
    assert request.metrics[0].nvmlReturn == pynvml.NVML_SUCCESS
    assert request.metrics[0].value == 0.0


def test_gpm_is_not_supported_before_hopper(mixed: Scenario) -> None:
    fake, _ = started(mixed)
    a100 = fake.nvmlDeviceGetHandleByIndex(1)
    assert fake.nvmlGpmQueryDeviceSupport(a100).isSupportedDevice == 0
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlGpmSampleGet(a100, fake.nvmlGpmSampleAlloc())


def test_mig_and_models_without_it(mixed: Scenario) -> None:
    fake, clock = started(mixed, "n1")
    l40s, mig = fake.nvmlDeviceGetHandleByIndex(0), fake.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetMigMode(l40s)
    assert fake.nvmlDeviceGetMigMode(mig) == [1, 1]
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetUtilizationRates(mig)
    clock.at(1)
    (proc,) = fake.nvmlDeviceGetComputeRunningProcesses(mig)
    assert proc.usedGpuMemory is None
    (proc,) = fake.nvmlDeviceGetComputeRunningProcesses(l40s)
    assert proc.usedGpuMemory == 6 * 1024**3


def test_pids_come_from_the_mapping_or_are_synthetic(mixed: Scenario) -> None:
    fake, clock = started(mixed, pids={"100": 4242})
    clock.at(25)
    procs = fake.nvmlDeviceGetComputeRunningProcesses(fake.nvmlDeviceGetHandleByIndex(0))
    assert sorted(p.pid for p in procs) == [4242, 200_001]


def test_scenario_start_can_be_given() -> None:
    clock = FakeClock()
    fake = FakeNvml(one_gpu(start=10), "n", clock=clock, start=T0 - 15)
    fake.nvmlInit()
    assert fake.now() == 15
    assert fake.nvmlDeviceGetUtilizationRates(fake.nvmlDeviceGetHandleByIndex(0)).gpu == 80


# --- enforcement is reflected ----------------------------------------------------------------
def test_prohibited_compute_mode_keeps_later_jobs_off_the_gpu() -> None:
    fake, clock = started(one_gpu(start=10), "n")
    h = fake.nvmlDeviceGetHandleByIndex(0)
    clock.at(5)
    fake.nvmlDeviceSetComputeMode(h, pynvml.NVML_COMPUTEMODE_PROHIBITED)
    assert fake.nvmlDeviceGetComputeMode(h) == pynvml.NVML_COMPUTEMODE_PROHIBITED
    clock.at(15)  # the job "started" at 10, while prohibited: refused for good
    fake.nvmlDeviceSetComputeMode(h, pynvml.NVML_COMPUTEMODE_DEFAULT)
    clock.at(20)
    assert fake.nvmlDeviceGetComputeRunningProcesses(h) == []
    assert fake.nvmlDeviceGetUtilizationRates(h).gpu == 0


def test_prohibiting_does_not_remove_running_jobs() -> None:
    fake, clock = started(one_gpu(start=0), "n")
    h = fake.nvmlDeviceGetHandleByIndex(0)
    clock.at(5)
    fake.nvmlDeviceSetComputeMode(h, pynvml.NVML_COMPUTEMODE_PROHIBITED)
    clock.at(6)
    assert len(fake.nvmlDeviceGetComputeRunningProcesses(h)) == 1
    assert fake.nvmlDeviceGetUtilizationRates(h).gpu == 80


def test_exclusive_process_refuses_a_second_context() -> None:
    scenario = parse_scenario(
        {
            "name": "x",
            "duration_seconds": 60,
            "nodes": [{"id": "n", "gpus": [{"model": "NVIDIA H100 80GB HBM3"}]}],
            "jobs": [
                {"id": "1", "nodes": ["n"], "start": 0, "utilization": [[0, 30]]},
                {"id": "2", "nodes": ["n"], "start": 10, "utilization": [[0, 30]]},
            ],
        }
    )
    fake, clock = started(scenario, "n")
    h = fake.nvmlDeviceGetHandleByIndex(0)
    fake.nvmlDeviceSetComputeMode(h, pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS)
    clock.at(15)
    assert [p.pid for p in fake.nvmlDeviceGetComputeRunningProcesses(h)] == [200_000]


def test_invalid_compute_modes() -> None:
    fake, _ = started(one_gpu(), "n")
    h = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceSetComputeMode(h, 9)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceSetComputeMode(h, pynvml.NVML_COMPUTEMODE_EXCLUSIVE_THREAD)


def test_stopped_process_is_idle_but_listed_and_gone_is_removed() -> None:
    states = {200_000: "running"}
    clock = FakeClock()
    fake = FakeNvml(one_gpu(memory_gib=5), "n", clock=clock, process_state=states.__getitem__)
    fake.nvmlInit()
    h = fake.nvmlDeviceGetHandleByIndex(0)
    clock.at(1)
    assert fake.nvmlDeviceGetUtilizationRates(h).gpu == 80
    states[200_000] = "stopped"
    assert fake.nvmlDeviceGetUtilizationRates(h).gpu == 0
    assert fake.nvmlDeviceGetPowerUsage(h) == 70_000
    assert [p.pid for p in fake.nvmlDeviceGetComputeRunningProcesses(h)] == [200_000]
    assert fake.nvmlDeviceGetMemoryInfo(h).used == 5 * 1024**3
    states[200_000] = "gone"
    assert fake.nvmlDeviceGetComputeRunningProcesses(h) == []
    assert fake.nvmlDeviceGetMemoryInfo(h).used == 0


def test_power_cap_scales_activity_and_bounds_power() -> None:
    fake, clock = started(one_gpu(utilization=[[0, 100]]), "n")
    h = fake.nvmlDeviceGetHandleByIndex(0)
    clock.at(1)
    assert fake.nvmlDeviceGetPowerUsage(h) == 700_000
    fake.nvmlDeviceSetPowerManagementLimit(h, 385_000)  # halfway between idle 70 and TDP 700
    assert fake.nvmlDeviceGetEnforcedPowerLimit(h) == 385_000
    assert fake.nvmlDeviceGetUtilizationRates(h).gpu == 50
    assert fake.nvmlDeviceGetPowerUsage(h) <= 385_000
    assert fake.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) < 1980


@pytest.mark.parametrize("limit", [199_999, 700_001, 0, True, 300.0])
def test_power_limit_outside_constraints_is_invalid(limit: object) -> None:
    fake, _ = started(one_gpu(), "n")
    h = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceSetPowerManagementLimit(h, limit)  # type: ignore[arg-type]
    assert fake.nvmlDeviceGetEnforcedPowerLimit(h) == 700_000


# --- faults ---------------------------------------------------------------------------------
def test_gpu_lost_stays_lost(faults: Scenario) -> None:
    fake, clock = started(faults, "lost")
    h = fake.nvmlDeviceGetHandleByIndex(1)
    clock.at(9)
    assert fake.nvmlDeviceGetUtilizationRates(h).gpu == 80
    clock.at(10)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        fake.nvmlDeviceGetUtilizationRates(h)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        fake.nvmlDeviceGetHandleByIndex(1)
    clock.at(50)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        fake.nvmlDeviceGetUUID(h)
    assert fake.nvmlDeviceGetCount() == 2
    assert fake.nvmlDeviceGetUtilizationRates(fake.nvmlDeviceGetHandleByIndex(0)).gpu == 80


def test_nvml_not_loaded_window(faults: Scenario) -> None:
    clock = FakeClock()
    fake = FakeNvml(faults, "unloaded", clock=clock)
    fake.nvmlInit()
    clock.at(5)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_LibraryNotFound):
        fake.nvmlInit()
    clock.at(10)
    fake.nvmlInit()
    assert fake.nvmlDeviceGetCount() == 1


def test_driver_not_loaded_and_no_permission_at_init(faults: Scenario) -> None:
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        FakeNvml(faults, "nodriver").nvmlInit()
    with pytest.raises(pynvml.NVMLError_NoPermission):
        FakeNvml(faults, "noperm-init").nvmlInit()


def test_a_library_driver_version_mismatch_fails_init_with_nvmls_code() -> None:
    s = parse_scenario(
        {
            "name": "mismatch",
            "duration_seconds": 60,
            "nodes": [
                {
                    "id": "n",
                    "gpus": [{"model": "NVIDIA L4"}],
                    "faults": [
                        {"kind": "nvml_not_loaded", "error": "lib_rm_version_mismatch", "at": 5}
                    ],
                }
            ],
        }
    )
    fake, clock = started(s, "n")
    clock.at(5)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()  # the running session is void
    with pytest.raises(pynvml.NVMLError) as info:
        fake.nvmlInit()
    assert info.value.value == 18  # nvml.h NVML_ERROR_LIB_RM_VERSION_MISMATCH


def _failing(function: str, error: str) -> Scenario:
    return parse_scenario(
        {
            "name": "codes",
            "duration_seconds": 60,
            "nodes": [
                {
                    "id": "n",
                    "gpus": [{"model": "NVIDIA H100 80GB HBM3"}],
                    "faults": [{"kind": "nvml_error", "functions": [function], "error": error}],
                }
            ],
        }
    )


@pytest.mark.parametrize(
    ("error", "code"), [("insufficient_power", 8), ("irq_issue", 11), ("unknown", 999)]
)
def test_call_errors_carry_nvmls_codes(error: str, code: int) -> None:
    fake, _ = started(_failing("nvmlDeviceGetHandleByIndex", error), "n")
    with pytest.raises(pynvml.NVMLError) as info:
        fake.nvmlDeviceGetHandleByIndex(0)
    assert info.value.value == code


@pytest.mark.parametrize(("error", "code"), [("timeout", 10), ("operating_system", 17)])
def test_gpm_calls_may_fail_with_any_code(error: str, code: int) -> None:
    # nvml.h nvmlGpmSampleGet: "Nonzero NVML_ERROR_? enum on error".
    fake, _ = started(_failing("nvmlGpmSampleGet", error), "n")
    h = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError) as info:
        fake.nvmlGpmSampleGet(h, fake.nvmlGpmSampleAlloc())
    assert info.value.value == code


@pytest.mark.parametrize(
    ("function", "error"),
    [
        ("nvmlDeviceGetPowerUsage", "timeout"),
        ("nvmlDeviceGetUUID", "insufficient_power"),
        ("nvmlDeviceGetPciInfo", "irq_issue"),
    ],
)
def test_an_error_nvml_does_not_document_for_the_function_is_refused(
    function: str, error: str
) -> None:
    with pytest.raises(ConfigError, match=f"does not document NVML_ERROR_{error.upper()}"):
        _failing(function, error)
    doc = {
        "name": "np",
        "duration_seconds": 60,
        "nodes": [
            {
                "id": "n",
                "gpus": [{"model": "NVIDIA L4"}],
                "faults": [{"kind": "no_permission", "functions": ["nvmlDeviceGetUUID"]}],
            }
        ],
    }
    with pytest.raises(ConfigError, match="NO_PERMISSION for nvmlDeviceGetUUID"):
        parse_scenario(doc)


def test_a_handle_fault_hits_only_the_gpus_it_names() -> None:
    s = parse_scenario(
        {
            "name": "one-handle",
            "duration_seconds": 60,
            "nodes": [
                {
                    "id": "n",
                    "gpus": [{"model": "NVIDIA L4", "count": 2}],
                    "faults": [
                        {
                            "kind": "no_permission",
                            "functions": ["nvmlDeviceGetHandleByIndex"],
                            "gpus": [1],
                        }
                    ],
                }
            ],
        }
    )
    fake, _ = started(s, "n")
    assert fake.nvmlDeviceGetUUID(fake.nvmlDeviceGetHandleByIndex(0)) == gpu_uuid("n", 0)
    with pytest.raises(pynvml.NVMLError_NoPermission):
        fake.nvmlDeviceGetHandleByIndex(1)


def test_enforced_power_limit_is_the_lowest_limiter() -> None:
    s = parse_scenario(
        {
            "name": "limits",
            "duration_seconds": 60,
            "nodes": [
                {
                    "id": "n",
                    "gpus": [{"model": "NVIDIA H100 80GB HBM3", "external_power_limit_watts": 500}],
                }
            ],
        }
    )
    fake, _ = started(s, "n")
    h = fake.nvmlDeviceGetHandleByIndex(0)
    assert fake.nvmlDeviceGetPowerManagementLimit(h) == 700_000
    assert fake.nvmlDeviceGetEnforcedPowerLimit(h) == 500_000
    fake.nvmlDeviceSetPowerManagementLimit(h, 300_000)
    assert fake.nvmlDeviceGetPowerManagementLimit(h) == 300_000
    assert fake.nvmlDeviceGetEnforcedPowerLimit(h) == 300_000
    fake.nvmlDeviceSetPowerManagementLimit(h, 650_000)
    assert fake.nvmlDeviceGetEnforcedPowerLimit(h) == 500_000


def test_function_faults_hit_the_named_gpus_and_times(faults: Scenario) -> None:
    fake, clock = started(faults, "partial")
    h0, h1 = fake.nvmlDeviceGetHandleByIndex(0), fake.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_NoPermission):
        fake.nvmlDeviceGetComputeRunningProcesses(h0)
    assert len(fake.nvmlDeviceGetComputeRunningProcesses(h1)) == 1
    for h in (h0, h1):
        with pytest.raises(pynvml.NVMLError_NotSupported):
            fake.nvmlDeviceGetTotalEnergyConsumption(h)
    fake.nvmlDeviceGetPowerUsage(h1)
    clock.at(6)
    with pytest.raises(pynvml.NVMLError_Unknown):
        fake.nvmlDeviceGetPowerUsage(h1)
    fake.nvmlDeviceGetPowerUsage(h0)
    clock.at(8)
    fake.nvmlDeviceGetPowerUsage(h1)


def test_silent_is_exposed_for_the_harness(faults: Scenario) -> None:
    assert faults.node("quiet").silent_at == 3
    assert faults.node("lost").silent_at is None
    fake, clock = started(faults, "quiet")
    clock.at(30)
    assert fake.nvmlDeviceGetCount() == 1  # the fake itself keeps answering


def test_calls_are_counted_per_function(mixed: Scenario) -> None:
    fake, _ = started(mixed)
    fake.nvmlDeviceGetCount()
    fake.nvmlDeviceGetCount()
    assert fake.calls["nvmlDeviceGetCount"] == 2
    assert fake.calls["nvmlInitWithFlags"] == 1
