"""The fake pynvml's MIG devices, per-pipe GPM, and time-averaged utilization.

Each expectation is what nvml.h (NVIDIA/go-nvml pkg/nvml/nvml.h) documents,
cited where the fake models it.
"""

from __future__ import annotations

import pynvml
import pytest

from agent.fakenvml import SM_FRACTION, FakeNvml, parse_scenario
from agent.fakenvml.activity import SAMPLE_PERIOD
from agent.fakenvml.scenario import Scenario
from protos.errors import ConfigError
from tests.agent_support import T0, FakeClock, mig_scenario


def started(scenario: Scenario) -> tuple[FakeNvml, FakeClock]:
    clock = FakeClock()
    fake = FakeNvml(scenario, "n", clock=clock)
    fake.nvmlInit()
    return fake, clock


def job(job_id: str, **kw: object) -> dict[str, object]:
    spec: dict[str, object] = {"id": job_id, "nodes": ["n"], "gpu_indices": [0]}
    spec.update(kw)
    return spec


def metrics(fake: FakeNvml, first: object, second: object, *ids: int) -> list[float]:
    request = pynvml.c_nvmlGpmMetricsGet_t()
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = len(ids)
    request.sample1, request.sample2 = first, second
    for i, metric_id in enumerate(ids):
        request.metrics[i].metricId = metric_id
    fake.nvmlGpmMetricsGet(request)
    out = []
    for i in range(len(ids)):
        assert request.metrics[i].nvmlReturn == pynvml.NVML_SUCCESS
        out.append(request.metrics[i].value)
    return out


def test_mig_devices_are_enumerated_with_their_ids_and_sms() -> None:
    fake, _ = started(mig_scenario())
    parent = fake.nvmlDeviceGetHandleByIndex(0)
    assert fake.nvmlDeviceGetMigMode(parent) == [pynvml.NVML_DEVICE_MIG_ENABLE] * 2
    assert fake.nvmlDeviceGetMaxMigDeviceCount(parent) == 7
    # nvml.h: "Returns zero if MIG is not supported or enabled."
    assert fake.nvmlDeviceGetMaxMigDeviceCount(fake.nvmlDeviceGetHandleByIndex(1)) == 0
    a = fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    b = fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 1)
    with pytest.raises(pynvml.NVMLError_NotFound):  # no MIG device at index 2
        fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 2)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 7)
    assert fake.nvmlDeviceGetUUID(a).startswith("MIG-")
    assert fake.nvmlDeviceGetUUID(a) != fake.nvmlDeviceGetUUID(b)
    assert fake.nvmlDeviceGetName(b) == "NVIDIA H100 80GB HBM3 MIG 4g.40gb"
    assert fake.nvmlDeviceGetGpuInstanceId(a) != fake.nvmlDeviceGetGpuInstanceId(b)
    assert fake.nvmlDeviceGetComputeInstanceId(a) == 0
    sms = fake.nvmlDeviceGetAttributes(a).multiprocessorCount
    full = fake.nvmlDeviceGetGpuInstanceProfileInfo(
        parent, pynvml.NVML_GPU_INSTANCE_PROFILE_7_SLICE
    ).multiprocessorCount
    assert (sms, full) == (57, 132)
    assert fake.nvmlDeviceGetMemoryInfo(a).total == 40 * 1024**3
    assert fake.nvmlDeviceGetUUID(fake.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(a)) == (
        fake.nvmlDeviceGetUUID(parent)
    )
    assert fake.nvmlDeviceIsMigDeviceHandle(a).value == 1
    assert fake.nvmlDeviceIsMigDeviceHandle(parent).value == 0
    mig_uuid = fake.nvmlDeviceGetUUID(b)
    assert fake.nvmlDeviceGetUUID(fake.nvmlDeviceGetHandleByUUID(mig_uuid)) == mig_uuid


def test_mig_refusals() -> None:
    fake, _ = started(mig_scenario())
    parent = fake.nvmlDeviceGetHandleByIndex(0)
    mig = fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    # nvml.h Get/SetComputeMode: "If MIG is enabled on a GPU, device must be MIG device handle".
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceSetComputeMode(parent, pynvml.NVML_COMPUTEMODE_PROHIBITED)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetComputeMode(parent)
    # nvmlDeviceGetAttributes_v2: "currently only supports MIG device handles".
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetAttributes(parent)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetGpuInstanceId(parent)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(parent)
    # Readings nvml.h does not document for MIG device handles.
    for call in ("nvmlDeviceGetPowerUsage", "nvmlDeviceGetUtilizationRates"):
        with pytest.raises(pynvml.NVMLError_NotSupported):
            getattr(fake, call)(mig)
    # "On MIG-enabled GPUs, querying ... is not currently supported."
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetSamples(parent, pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetProcessUtilization(parent, 0)


def test_compute_mode_per_mig_device_refuses_new_contexts_there_only() -> None:
    fake, clock = started(
        mig_scenario(job("1", start=10, mig_slice=0), job("2", start=10, mig_slice=1))
    )
    parent = fake.nvmlDeviceGetHandleByIndex(0)
    a = fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    b = fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 1)
    fake.nvmlDeviceSetComputeMode(a, pynvml.NVML_COMPUTEMODE_PROHIBITED)
    assert fake.nvmlDeviceGetComputeMode(a) == pynvml.NVML_COMPUTEMODE_PROHIBITED
    assert fake.nvmlDeviceGetComputeMode(b) == pynvml.NVML_COMPUTEMODE_DEFAULT
    clock.at(20)
    assert fake.nvmlDeviceGetComputeRunningProcesses(a) == []
    (proc,) = fake.nvmlDeviceGetComputeRunningProcesses(b)
    assert proc.gpuInstanceId == fake.nvmlDeviceGetGpuInstanceId(b)
    # nvml.h: with the parent handle in MIG mode the list is the aggregate.
    assert [p.pid for p in fake.nvmlDeviceGetComputeRunningProcesses(parent)] == [proc.pid]


def test_gpm_per_mig_instance_and_the_parent_weighted_by_sm_share() -> None:
    fake, clock = started(
        mig_scenario(job("1", mig_slice=0, utilization=[[0, 100]], tensor_fraction=0.5))
    )
    parent = fake.nvmlDeviceGetHandleByIndex(0)
    a = fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 0)
    b = fake.nvmlDeviceGetMigDeviceHandleByIndex(parent, 1)
    gi_a, gi_b = fake.nvmlDeviceGetGpuInstanceId(a), fake.nvmlDeviceGetGpuInstanceId(b)
    s = [fake.nvmlGpmSampleAlloc() for _ in range(6)]
    clock.at(1)
    fake.nvmlGpmMigSampleGet(parent, gi_a, s[0])
    fake.nvmlGpmMigSampleGet(parent, gi_b, s[1])
    fake.nvmlGpmSampleGet(parent, s[2])
    clock.at(3)
    fake.nvmlGpmMigSampleGet(parent, gi_a, s[3])
    fake.nvmlGpmSampleGet(b, s[4])  # a MIG device handle works too
    fake.nvmlGpmSampleGet(parent, s[5])
    sm, tensor = metrics(
        fake, s[0], s[3], pynvml.NVML_GPM_METRIC_SM_UTIL, pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL
    )
    assert sm == pytest.approx(100 * SM_FRACTION)
    assert tensor == pytest.approx(50.0)
    assert metrics(fake, s[1], s[4], pynvml.NVML_GPM_METRIC_SM_UTIL) == [0.0]
    (whole,) = metrics(fake, s[2], s[5], pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL)
    assert whole == pytest.approx(100 * 57 / 132)
    with pytest.raises(pynvml.NVMLError_NotFound):
        fake.nvmlGpmMigSampleGet(parent, 99, s[0])


def test_gpm_pipes_follow_the_jobs_precision_mix() -> None:
    mix = {"hmma": 0.4, "imma": 0.1, "dfma": 0.05, "fp32": 0.2, "fp16": 0.1, "fp64": 0.02}
    fake, clock = started(
        mig_scenario(job("1", gpu_indices=[1], utilization=[[0, 80]], precision=mix))
    )
    h = fake.nvmlDeviceGetHandleByIndex(1)
    first, second = fake.nvmlGpmSampleAlloc(), fake.nvmlGpmSampleAlloc()
    clock.at(1)
    fake.nvmlGpmSampleGet(h, first)
    clock.at(2)
    fake.nvmlGpmSampleGet(h, second)
    ids = {
        "dfma": pynvml.NVML_GPM_METRIC_DFMA_TENSOR_UTIL,
        "hmma": pynvml.NVML_GPM_METRIC_HMMA_TENSOR_UTIL,
        "imma": pynvml.NVML_GPM_METRIC_IMMA_TENSOR_UTIL,
        "fp64": pynvml.NVML_GPM_METRIC_FP64_UTIL,
        "fp32": pynvml.NVML_GPM_METRIC_FP32_UTIL,
        "fp16": pynvml.NVML_GPM_METRIC_FP16_UTIL,
        "tensor": pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
    }
    got = dict(zip(ids, metrics(fake, first, second, *ids.values()), strict=True))
    for pipe, fraction in mix.items():
        assert got[pipe] == pytest.approx(80 * fraction), pipe
    # Without tensor_fraction, any-tensor is the tensor pipes' sum.
    assert got["tensor"] == pytest.approx(80 * 0.55)


def test_precision_mix_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"jobs\[0\]\.precision"):
        mig_scenario(job("1", precision={"bf16": 0.5}))
    with pytest.raises(ConfigError, match=r"jobs\[0\]\.tensor_fraction"):
        mig_scenario(job("1", precision={"hmma": 0.6}, tensor_fraction=0.5))
    with pytest.raises(ConfigError, match=r"jobs\[0\]\.mig_slice"):
        mig_scenario(job("1", mig_slice=2))
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.gpus\[0\]\.mig"):
        parse_scenario(
            {
                "name": "x",
                "duration_seconds": 1,
                "nodes": [
                    {
                        "id": "n",
                        "gpus": [{"model": "NVIDIA H100 80GB HBM3", "mig": ["4g.40gb", "4g.40gb"]}],
                    }
                ],
            }
        )


def test_a_gpm_pair_closer_than_100_ms_reads_zero() -> None:
    fake, clock = started(mig_scenario(job("1", gpu_indices=[1], utilization=[[0, 100]])))
    h = fake.nvmlDeviceGetHandleByIndex(1)
    first, second = fake.nvmlGpmSampleAlloc(), fake.nvmlGpmSampleAlloc()
    clock.at(5.0)
    fake.nvmlGpmSampleGet(h, first)
    clock.at(5.05)
    fake.nvmlGpmSampleGet(h, second)
    assert metrics(fake, first, second, pynvml.NVML_GPM_METRIC_SM_UTIL) == [0.0]
    clock.at(5.2)
    fake.nvmlGpmSampleGet(h, second)
    (sm,) = metrics(fake, first, second, pynvml.NVML_GPM_METRIC_SM_UTIL)
    assert sm == pytest.approx(100 * SM_FRACTION)


def test_utilization_samples_since_the_last_seen_timestamp() -> None:
    # 30 % for 10 s, then 90 %.
    fake, clock = started(
        mig_scenario(job("1", gpu_indices=[1], utilization=[[0, 30], [10, 30], [10, 90]]))
    )
    h = fake.nvmlDeviceGetHandleByIndex(1)
    clock.at(0.05)
    with pytest.raises(pynvml.NVMLError_NotFound):  # no sample period has ended yet
        fake.nvmlDeviceGetSamples(h, pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0)
    clock.at(9.0)
    kind, samples = fake.nvmlDeviceGetSamples(h, pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0)
    assert kind == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    assert len(samples) == round(9.0 / SAMPLE_PERIOD)
    assert {s.sampleValue.uiVal for s in samples} == {30}
    stamps = [s.timeStamp for s in samples]
    assert stamps == sorted(stamps)
    assert stamps[-1] == round((T0 + 9.0) * 1e6)
    clock.at(12.0)
    _, newer = fake.nvmlDeviceGetSamples(h, pynvml.NVML_GPU_UTILIZATION_SAMPLES, stamps[-1])
    assert len(newer) == round(3.0 / SAMPLE_PERIOD)
    assert newer[0].timeStamp > stamps[-1]
    assert newer[-1].sampleValue.uiVal == 90
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetSamples(h, pynvml.NVML_TOTAL_POWER_SAMPLES, 0)


def test_process_utilization_splits_the_gpu_between_processes() -> None:
    scenario = mig_scenario(
        job("1", gpu_indices=[1], utilization=[[0, 60]]),
        job("2", gpu_indices=[1], utilization=[[0, 20]], start=2),
    )
    fake, clock = started(scenario)
    h = fake.nvmlDeviceGetHandleByIndex(1)
    clock.at(2.0)
    (only,) = fake.nvmlDeviceGetProcessUtilization(h, 0)
    assert only.smUtil == 60
    clock.at(6.0)
    both = fake.nvmlDeviceGetProcessUtilization(h, only.timeStamp)
    assert sorted((s.smUtil for s in both), reverse=True) == [60, 20]
    assert {s.timeStamp for s in both} == {round((T0 + 6.0) * 1e6)}
    with pytest.raises(pynvml.NVMLError_NotFound):  # nothing newer than the last sample
        fake.nvmlDeviceGetProcessUtilization(h, both[0].timeStamp)
