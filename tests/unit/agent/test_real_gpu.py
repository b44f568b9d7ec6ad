"""``NvmlBackend()`` on the real pynvml and driver: runs only where a GPU is present."""

from __future__ import annotations

import math
import time

import pynvml
import pytest

from agent.nvml import procs
from agent.nvml.real import NvmlBackend
from protos.computewatch.v1 import telemetry_pb2 as pb

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_count() -> int:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no usable NVIDIA driver here (nvmlInit: {exc})")
    try:
        count = int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()
    if count == 0:
        pytest.skip("NVML initialises but sees no GPU")
    return count


def test_reads_every_gpu(gpu_count: int) -> None:
    backend = NvmlBackend()
    try:
        first = backend.sample()
        time.sleep(0.2)
        snap = backend.sample()
    finally:
        backend.close()
    assert first.status == snap.status == pb.NVML_STATUS_OK
    # MIG devices follow their GPU; nvmlDeviceGetCount counts physical GPUs.
    assert len([g for g in snap.gpus if not g.parent_uuid]) == gpu_count
    for g in snap.gpus:
        assert g.health == pb.GPU_HEALTH_OK, g.error
        assert g.uuid.startswith(("GPU-", "MIG-"))
        assert g.product_name
        if g.HasField("utilization_gpu_percent"):
            assert 0 <= g.utilization_gpu_percent <= 100
        if g.HasField("memory_total_bytes"):
            assert 0 <= g.memory_used_bytes <= g.memory_total_bytes
        if g.HasField("power_watts"):
            assert 0 < g.power_watts < 2000
        if g.HasField("sm_activity_percent"):
            assert math.isfinite(g.sm_activity_percent)
            # GPM pair 0.2 s apart (> 100 ms, nvml.h): the window is that pair's.
            assert 0.1 <= g.activity_window_seconds < 5
            for name in ("hmma_tensor_activity_percent", "fp32_activity_percent"):
                if g.HasField(name):
                    assert 0 <= getattr(g, name) <= 100
        if g.parent_uuid:
            assert 0 < g.sm_share <= 1
        if not (g.mig_enabled and not g.parent_uuid):  # NVML refuses a MIG parent's mode
            assert g.compute_mode != pb.COMPUTE_MODE_UNSPECIFIED
        # nvmlPciInfo_t.pciDeviceId: device id << 16 | NVIDIA's vendor id.
        assert g.pci_device_id & 0xFFFF == 0x10DE
        assert g.pci_bus_id.count(":") == 2
        # A healthy GPU: no call failed, the process lists decoded sanely.
        assert not g.field_errors, list(g.field_errors)
        assert g.processes_known


def test_power_limits_are_consistent(gpu_count: int) -> None:
    backend = NvmlBackend()
    try:
        uuid = backend.sample().gpus[0].uuid
        limits = backend.power_limits(uuid)
    finally:
        backend.close()
    assert 0 < limits.min_watts <= limits.current_watts <= limits.max_watts


def test_the_installed_binding_decodes_the_drivers_process_entries(gpu_count: int) -> None:
    assert procs.struct_problem(pynvml) is None
