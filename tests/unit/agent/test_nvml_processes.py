"""Process lists (compute, graphics, MPS), answers that cannot be true, PCI identity.

The real ``NvmlBackend`` over the fake pynvml; the fake's behaviours follow
nvml.h (cited in ``agent/fakenvml/_procs.py`` and ``pci.py``).
"""

from __future__ import annotations

import ctypes
import tomllib
from pathlib import Path
from typing import Any

import pynvml

from agent.fakenvml import FakeNvml, gpu_uuid, parse_scenario
from agent.fakenvml._procs import MPS_SERVER_PID
from agent.fakenvml.nvml_errors import DOCUMENTED_ERRORS
from agent.fakenvml.scenario import Scenario
from agent.fakenvml.spec import FAULTABLE_FUNCTIONS
from agent.nvml import procs
from agent.nvml.real import NvmlBackend
from agent.nvml.samples import unique
from protos.computewatch.v1 import telemetry_pb2 as pb
from tests.agent_support import FakeClock

GIB = 1024**3
H100 = "NVIDIA H100 80GB HBM3"


def scenario(
    jobs: list[dict[str, Any]], faults: list[dict[str, Any]] | None = None, model: str = H100
) -> Scenario:
    return parse_scenario(
        {
            "name": "procs",
            "duration_seconds": 60,
            "nodes": [{"id": "n", "gpus": [{"model": model}], "faults": faults or []}],
            "jobs": [{"nodes": ["n"], "utilization": [[0, 40]], **j} for j in jobs],
        }
    )


def backend(s: Scenario, pids: dict[str, int]) -> tuple[NvmlBackend, FakeNvml, FakeClock]:
    clock = FakeClock()
    fake = FakeNvml(s, "n", clock=clock, pids=pids)
    return NvmlBackend(fake, clock=clock), fake, clock


def test_mps_clients_are_listed_with_the_compute_processes() -> None:
    s = scenario(
        [
            {"id": "1", "mps": True, "memory_gib": 3},
            {"id": "2", "mps": True, "memory_gib": 5},
            {"id": "3", "memory_gib": 7},
        ]
    )
    b, fake, clock = backend(s, {"1": 1001, "2": 1002, "3": 1003})
    clock.t += 1
    g = b.sample().gpus[0]
    assert g.health == pb.GPU_HEALTH_OK
    assert g.processes_known
    assert not g.field_errors
    assert {p.pid: p.used_memory_bytes for p in g.processes} == {
        1003: 7 * GIB,
        MPS_SERVER_PID: 8 * GIB,  # the server holds its clients' contexts
        1001: 3 * GIB,
        1002: 5 * GIB,
    }
    assert fake.calls["nvmlDeviceGetMPSComputeRunningProcesses"] == 1
    assert fake.calls["nvmlDeviceGetGraphicsRunningProcesses"] == 1


def test_the_fake_lists_mps_clients_only_in_the_mps_list() -> None:
    s = scenario([{"id": "1", "mps": True}, {"id": "2"}])
    fake = FakeNvml(s, "n", clock=FakeClock(), pids={"1": 1001, "2": 1002})
    fake.nvmlInit()
    h = fake.nvmlDeviceGetHandleByIndex(0)
    assert [p.pid for p in fake.nvmlDeviceGetComputeRunningProcesses(h)] == [1002, MPS_SERVER_PID]
    assert [p.pid for p in fake.nvmlDeviceGetMPSComputeRunningProcesses(h)] == [1001]
    assert fake.nvmlDeviceGetGraphicsRunningProcesses(h) == []


def test_a_pid_in_two_lists_is_one_process() -> None:
    s = scenario([{"id": "1", "mps": True, "memory_gib": 2}, {"id": "2", "memory_gib": 4}])
    b, _, clock = backend(s, {"1": 4242, "2": 4242})
    clock.t += 1
    g = b.sample().gpus[0]
    pids = [p.pid for p in g.processes]
    assert sorted(pids) == sorted({4242, MPS_SERVER_PID})
    # The compute list's entry wins.
    assert next(p for p in g.processes if p.pid == 4242).used_memory_bytes == 4 * GIB


def test_mps_list_not_supported_leaves_the_processes_known() -> None:
    s = scenario(
        [{"id": "1"}],
        faults=[
            {"kind": "not_supported", "functions": ["nvmlDeviceGetMPSComputeRunningProcesses"]}
        ],
    )
    b, _, clock = backend(s, {"1": 1001})
    clock.t += 1
    g = b.sample().gpus[0]
    assert g.processes_known
    assert [p.pid for p in g.processes] == [1001]
    assert not g.field_errors


def test_an_mps_list_error_makes_the_processes_unknown_but_keeps_what_was_read() -> None:
    s = scenario(
        [{"id": "1"}],
        faults=[
            {
                "kind": "nvml_error",
                "functions": ["nvmlDeviceGetMPSComputeRunningProcesses"],
                "error": "unknown",
            }
        ],
    )
    b, _, clock = backend(s, {"1": 1001})
    clock.t += 1
    g = b.sample().gpus[0]
    assert not g.processes_known  # an MPS client may be missing
    assert [p.pid for p in g.processes] == [1001]
    assert [(e.function, e.code) for e in g.field_errors] == [
        ("nvmlDeviceGetMPSComputeRunningProcesses", 999)
    ]


# --- nvidia-ml-py's process struct ----------------------------------------------------
def test_the_bindings_in_use_have_nvmls_24_byte_process_struct() -> None:
    assert ctypes.sizeof(pynvml.c_nvmlProcessInfo_t) == procs.PROCESS_INFO_BYTES
    assert procs.struct_problem(pynvml) is None


def test_the_fake_reproduces_the_12_535_77_struct_decoding() -> None:
    s = scenario(
        [{"id": "1", "memory_gib": 10}, {"id": "2", "memory_gib": 10}],
        faults=[{"kind": "process_struct_mismatch"}],
    )
    fake = FakeNvml(s, "n", clock=FakeClock(), pids={"1": 1001, "2": 1002})
    assert ctypes.sizeof(fake.c_nvmlProcessInfo_t) == 32
    fake.nvmlInit()
    first, second = fake.nvmlDeviceGetComputeRunningProcesses(fake.nvmlDeviceGetHandleByIndex(0))
    assert first.pid == 1001  # the first entry decodes right
    # The second "pid" is bytes 32..35 of the driver's 24-byte entries: the low half
    # of the second entry's usedGpuMemory, 10 GiB = 0x2_8000_0000.
    assert second.pid == 0x8000_0000


def test_a_binding_with_the_wrong_struct_is_refused_at_start() -> None:
    s = scenario([{"id": "1"}, {"id": "2"}], faults=[{"kind": "process_struct_mismatch"}])
    b, fake, clock = backend(s, {"1": 1001, "2": 1002})
    clock.t += 1
    g = b.sample().gpus[0]
    assert g.health == pb.GPU_HEALTH_OK
    assert not g.processes_known
    assert not g.processes
    (error,) = g.field_errors
    assert error.function == "nvmlDeviceGetComputeRunningProcesses"
    assert error.code == 0
    assert "32 bytes" in error.message
    assert "nvidia-ml-py >= 12.535.108" in error.message
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 0  # never decoded


def test_a_list_that_decodes_to_impossible_pids_is_refused_whole() -> None:
    # The binding changes under a running agent (the fault starts at 5 s): the
    # start check passed, the list itself must be caught.
    s = scenario(
        [{"id": "1", "memory_gib": 10}, {"id": "2", "memory_gib": 10}],
        faults=[{"kind": "process_struct_mismatch", "at": 5}],
    )
    b, _, clock = backend(s, {"1": 1001, "2": 1002})
    clock.t += 1
    before = b.sample().gpus[0]
    assert before.processes_known
    assert sorted(p.pid for p in before.processes) == [1001, 1002]
    clock.t += 5
    g = b.sample().gpus[0]
    assert g.health == pb.GPU_HEALTH_OK
    assert not g.processes_known
    assert not g.processes  # not even the first, correctly decoded, pid
    (error,) = g.field_errors
    assert error.function == "nvmlDeviceGetComputeRunningProcesses"
    assert "pid 2147483648 is outside" in error.message
    assert g.utilization_gpu_percent == 80.0  # the rest of the GPU still reads


def test_implausible_entries() -> None:
    class Entry:
        def __init__(self, **kw: object) -> None:
            self.pid = 100
            self.usedGpuMemory: int | None = GIB
            self.gpuInstanceId = self.computeInstanceId = procs.NO_INSTANCE
            self.__dict__.update(kw)

    ok = Entry()
    assert procs.implausible(ok, mig=False, memory_total=80 * GIB) is None
    assert procs.implausible(Entry(pid=0), mig=None, memory_total=None)
    assert procs.implausible(Entry(pid=procs.PID_MAX_LIMIT + 1), mig=None, memory_total=None)
    assert procs.implausible(Entry(usedGpuMemory=81 * GIB), mig=None, memory_total=80 * GIB)
    assert procs.implausible(Entry(usedGpuMemory=None), mig=None, memory_total=80 * GIB) is None
    assert procs.implausible(Entry(gpuInstanceId=0), mig=False, memory_total=None)
    assert procs.implausible(Entry(gpuInstanceId=0), mig=True, memory_total=None) is None
    assert procs.implausible(Entry(gpuInstanceId=0), mig=None, memory_total=None) is None


# --- PCI identity -------------------------------------------------------------------------
def test_pci_device_id_and_bus_id_are_reported() -> None:
    s = parse_scenario(
        {
            "name": "pci",
            "duration_seconds": 60,
            "nodes": [
                {
                    "id": "n",
                    "gpus": [{"model": H100}, {"model": "NVIDIA B200"}, {"model": "Some GPU"}],
                }
            ],
        }
    )
    b = NvmlBackend(FakeNvml(s, "n", clock=FakeClock()))
    h100, b200, unknown = b.sample().gpus
    # nvml.h nvmlPciInfo_t.pciDeviceId: device id << 16 | vendor id 0x10DE.
    assert h100.pci_device_id == 0x233010DE
    assert b200.pci_device_id == 0x290110DE
    assert unknown.pci_device_id == 0x000010DE
    assert [g.pci_bus_id for g in (h100, b200, unknown)] == [
        "00000000:18:00.0",
        "00000000:2A:00.0",
        "00000000:3A:00.0",
    ]


def test_the_fake_pci_info_is_pynvmls_struct() -> None:
    s = scenario([])
    fake = FakeNvml(s, "n", clock=FakeClock())
    fake.nvmlInit()
    pci = fake.nvmlDeviceGetPciInfo(fake.nvmlDeviceGetHandleByIndex(0))
    assert isinstance(pci, pynvml.nvmlPciInfo_t)
    assert pci.pciDeviceId == 0x233010DE
    assert pci.pciSubSystemId == 0x16C110DE
    assert pci.bus == 0x18
    assert pci.busId == "00000000:18:00.0"  # pynvml's structs decode char arrays
    assert pci.busIdLegacy == "0000:18:00.0"


# --- identities -----------------------------------------------------------------------------
def test_no_two_gpus_keep_one_uuid() -> None:
    real = gpu_uuid("n", 0)
    gpus = [
        pb.GpuSample(index=0, uuid=real, health=pb.GPU_HEALTH_LOST),
        pb.GpuSample(index=1, uuid=real, health=pb.GPU_HEALTH_OK, pci_bus_id="00000000:2A:00.0"),
        pb.GpuSample(index=2, uuid="unreadable:index-2", health=pb.GPU_HEALTH_UNREADABLE),
    ]
    out = unique(gpus)
    assert [g.uuid for g in out] == ["unreadable:index-0", real, "unreadable:index-2"]
    assert out[1].health == pb.GPU_HEALTH_OK


def test_the_dependency_floor_excludes_the_release_with_the_wrong_struct() -> None:
    pyproject = Path(__file__).parents[3] / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if d.startswith("nvidia-ml-py")]
    floor = spec.removeprefix("nvidia-ml-py>=")

    def version(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split("."))

    assert version(floor) >= version(procs.FIXED_IN) > version("12.535.77")


def test_a_name_that_cannot_be_read_yet_is_a_field_error_and_read_later() -> None:
    s = scenario(
        [{"id": "1"}],
        faults=[
            {
                "kind": "nvml_error",
                "functions": ["nvmlDeviceGetName", "nvmlGpmQueryDeviceSupport"],
                "error": "unknown",
                "until": 5,
            }
        ],
    )
    b, fake, clock = backend(s, {"1": 1001})
    clock.t += 1
    g = b.sample().gpus[0]
    assert g.health == pb.GPU_HEALTH_OK
    assert g.uuid == gpu_uuid("n", 0)  # the UUID read fine: the GPU is identified
    assert g.product_name == ""
    assert {e.function for e in g.field_errors} == {
        "nvmlDeviceGetName",
        "nvmlGpmQueryDeviceSupport",
    }
    assert g.utilization_gpu_percent == 40.0
    clock.t += 5
    b.sample()
    clock.t += 1
    g = b.sample().gpus[0]
    assert g.product_name == H100
    assert not g.field_errors
    assert g.HasField("tensor_activity_percent")  # GPM support was asked again
    assert fake.calls["nvmlDeviceGetUUID"] == 1


def test_every_faultable_function_has_its_documented_errors() -> None:
    assert set(FAULTABLE_FUNCTIONS) <= set(DOCUMENTED_ERRORS)
