"""``NvmlBackend`` on MIG GPUs and per-pipe GPM, read through the fake pynvml."""

from __future__ import annotations

import pytest

from agent.fakenvml import SM_FRACTION, FakeNvml, gpu_uuid, parse_scenario
from agent.fakenvml.scenario import Scenario
from agent.nvml.real import NvmlBackend
from protos.computewatch.v1 import telemetry_pb2 as pb
from protos.errors import BackendError
from tests.agent_support import FakeClock, mig_scenario


def job(job_id: str, **kw: object) -> dict[str, object]:
    spec: dict[str, object] = {
        "id": job_id,
        "nodes": ["n"],
        "gpu_indices": [0],
        "utilization": [[0, 100]],
    }
    spec.update(kw)
    return spec


def backend(s: Scenario) -> tuple[NvmlBackend, FakeNvml, FakeClock]:
    clock = FakeClock()
    fake = FakeNvml(s, "n", clock=clock)
    return NvmlBackend(fake, clock=clock), fake, clock


def test_each_mig_device_is_its_own_sample_and_the_parent_has_no_activity() -> None:
    b, _, clock = backend(
        mig_scenario(job("1", mig_slice=0, tensor_fraction=0.5), job("2", gpu_indices=[1]))
    )
    clock.at(1)
    b.sample()
    clock.at(3)
    parent, small, large, whole = b.sample().gpus
    assert parent.uuid == gpu_uuid("n", 0)
    assert parent.mig_enabled
    assert parent.compute_mode == pb.COMPUTE_MODE_UNSPECIFIED  # NotSupported on a MIG parent
    for field in ("sm_activity_percent", "tensor_activity_percent", "utilization_gpu_percent"):
        assert not parent.HasField(field), field
    assert parent.HasField("power_watts")
    assert [p.pid for p in parent.processes] == [p.pid for p in small.processes]
    for dev, profile in ((small, "3g.40gb"), (large, "4g.40gb")):
        assert dev.uuid.startswith("MIG-")
        assert dev.parent_uuid == parent.uuid
        assert dev.index == 0
        assert dev.product_name == "NVIDIA H100 80GB HBM3"  # the device table's key
        assert dev.mig_enabled
        assert dev.mig_profile == profile
        assert dev.health == pb.GPU_HEALTH_OK
        assert dev.compute_mode == pb.COMPUTE_MODE_DEFAULT
        assert dev.memory_total_bytes == 40 * 1024**3
    assert small.mig_instance == "1/0"
    assert large.mig_instance == "2/0"
    assert small.sm_share == pytest.approx(57 / 132)
    assert large.sm_share == pytest.approx(75 / 132)
    assert len(small.processes) == 1
    assert not large.processes
    assert large.processes_known
    # GPM per GPU instance (nvmlGpmMigSampleGet), percent of that instance's SMs.
    assert small.sm_activity_percent == pytest.approx(100 * SM_FRACTION)
    assert small.tensor_activity_percent == pytest.approx(50.0)
    assert small.activity_window_seconds == pytest.approx(2.0)
    assert large.sm_activity_percent == 0.0
    assert whole.parent_uuid == ""
    assert not whole.HasField("sm_share")


def test_compute_mode_is_set_per_mig_device_and_refused_on_the_parent() -> None:
    b, fake, clock = backend(
        mig_scenario(job("1", mig_slice=0, start=5), job("2", mig_slice=1, start=5))
    )
    clock.at(1)
    parent, small, large, _ = b.sample().gpus
    with pytest.raises(BackendError, match="Not Supported"):
        b.set_compute_mode(parent.uuid, pb.COMPUTE_MODE_PROHIBITED)
    b.set_compute_mode(small.uuid, pb.COMPUTE_MODE_PROHIBITED)
    clock.at(6)
    _, small, large, _ = b.sample().gpus
    assert small.compute_mode == pb.COMPUTE_MODE_PROHIBITED
    assert large.compute_mode == pb.COMPUTE_MODE_DEFAULT
    assert not small.processes  # the job starting there was refused a context
    assert len(large.processes) == 1
    assert fake.calls["nvmlDeviceSetComputeMode"] == 2


def test_a_fresh_backend_sets_the_mode_of_a_mig_device_by_uuid() -> None:
    b, fake, clock = backend(mig_scenario())
    clock.at(1)
    uuid = b.sample().gpus[1].uuid
    again = NvmlBackend(fake, clock=clock)  # no sample yet: found through GetHandleByUUID
    again.set_compute_mode(uuid, pb.COMPUTE_MODE_PROHIBITED)
    assert b.sample().gpus[1].compute_mode == pb.COMPUTE_MODE_PROHIBITED


def test_gpm_pipes_fill_the_precision_fields() -> None:
    mix = {"hmma": 0.5, "imma": 0.1, "dfma": 0.05, "fp64": 0.02, "fp32": 0.2, "fp16": 0.1}
    b, _, clock = backend(
        mig_scenario(job("1", gpu_indices=[1], utilization=[[0, 80]], precision=mix))
    )
    clock.at(1)
    b.sample()
    clock.at(2)
    g = b.sample().gpus[-1]
    fields = {
        "dfma": g.dfma_tensor_activity_percent,
        "hmma": g.hmma_tensor_activity_percent,
        "imma": g.imma_tensor_activity_percent,
        "fp64": g.fp64_activity_percent,
        "fp32": g.fp32_activity_percent,
        "fp16": g.fp16_activity_percent,
    }
    for pipe, fraction in mix.items():
        assert fields[pipe] == pytest.approx(80 * fraction), pipe
    assert g.tensor_activity_percent == pytest.approx(80 * 0.65)


def test_a_gpu_without_gpm_has_no_pipe_fields() -> None:
    s = parse_scenario(
        {
            "name": "a100",
            "duration_seconds": 60,
            "nodes": [{"id": "n", "gpus": [{"model": "NVIDIA A100-SXM4-80GB"}]}],
            "jobs": [{"id": "1", "nodes": ["n"], "precision": {"hmma": 0.5}}],
        }
    )
    b, _, clock = backend(s)
    for t in (1, 2):
        clock.at(t)
        (g,) = b.sample().gpus
    for field in ("hmma_tensor_activity_percent", "fp32_activity_percent", "sm_activity_percent"):
        assert not g.HasField(field), field
    assert g.utilization_gpu_percent == pytest.approx(90.0)
