"""``FakeNvml``: an instance with the pynvml module's surface, driven by a scenario.

Constants, ``NVMLError`` and its per-code subclasses, and the ctypes structs
are pynvml's own (looked up on the installed module, which imports without a
driver), so code written against pynvml catches exactly the classes it would
on a GPU. Functions follow pynvml's names, signatures and return types: ints
in NVML units (mW, mJ, MHz, bytes), the same structs, ``str`` for strings.
Calls before ``nvmlInit`` raise Uninitialized; a handle from elsewhere raises
InvalidArgument. One instance simulates one node, so a process can host many.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import pynvml as _pynvml

from agent.fakenvml._procs import ProcessInfo12535, process_list
from agent.fakenvml.activity import GpuState, NodeModel
from agent.fakenvml.fake_gpm import GpmCalls
from agent.fakenvml.fake_mig import MIG_HANDLE_CALLS, MigCalls
from agent.fakenvml.fake_samples import SampleCalls
from agent.fakenvml.pci import pci_identity
from agent.fakenvml.spec import Scenario

_EXPORTED = ("NVML_", "NVMLError", "c_nvml", "struct_c_nvml")
_EXPORTED_NAMES = frozenset(
    {
        "NVMLLibraryMismatchError",
        "nvmlFriendlyObject",
        "nvmlStructToFriendlyObject",
        "nvmlExceptionClass",
    }
)
_SETTABLE_MODES = frozenset(
    {
        _pynvml.NVML_COMPUTEMODE_DEFAULT,
        _pynvml.NVML_COMPUTEMODE_PROHIBITED,
        _pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS,
    }
)
_CALL_FAULTS = {
    "no_permission": _pynvml.NVML_ERROR_NO_PERMISSION,
    "not_supported": _pynvml.NVML_ERROR_NOT_SUPPORTED,
    "nvml_error": _pynvml.NVML_ERROR_UNKNOWN,
}


def _raise(code: int) -> NoReturn:
    raise _pynvml.NVMLError(code)


@dataclass(frozen=True)
class _Handle:
    """A device handle (``mig`` >= 0: a MIG device handle); only meaningful
    to the FakeNvml that made it."""

    owner: int
    index: int
    mig: int = -1


class FakeNvml(GpmCalls, MigCalls, SampleCalls):
    """The pynvml module's surface for one simulated node (see module docstring)."""

    NVMLError = _pynvml.NVMLError

    def __init__(
        self,
        scenario: Scenario,
        node_id: str,
        clock: Callable[[], float] = time.time,
        process_state: Callable[[int], str] | None = None,
        pids: Mapping[str, int] | None = None,
        *,
        start: float | None = None,
    ) -> None:
        self.scenario = scenario
        self.node = scenario.node(node_id)
        self._clock = clock
        self.start = clock() if start is None else start
        self._model = NodeModel(
            scenario, self.node, pids, process_state or (lambda _pid: "running")
        )
        self._refcount = 0
        self._lock = threading.RLock()
        self._gpm_samples = {}
        # Calls per NVML function name (what a backend costs, for tests and benchmarks).
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        if name == "c_nvmlProcessInfo_t" and self._struct_mismatch():
            return ProcessInfo12535
        if name.startswith(_EXPORTED) or name in _EXPORTED_NAMES:
            return getattr(_pynvml, name)
        raise AttributeError(f"FakeNvml has no attribute {name!r}")

    # --- time, faults, checks ------------------------------------------------------
    def now(self) -> float:
        """Seconds since the scenario's start, by the injected clock."""
        return self._clock() - self.start

    def _faulted(self, function: str, gpu: int | None, t: float) -> None:
        for fault in self.node.faults:
            if fault.kind not in _CALL_FAULTS or not fault.active(t):
                continue
            if function in fault.functions and (
                fault.gpus is None or gpu is None or gpu in fault.gpus
            ):
                if fault.kind == "nvml_error":
                    _raise(getattr(_pynvml, f"NVML_ERROR_{fault.error.upper()}"))
                _raise(_CALL_FAULTS[fault.kind])

    def _struct_mismatch(self) -> bool:
        t = self.now()
        return any(f.kind == "process_struct_mismatch" and f.active(t) for f in self.node.faults)

    def _not_loaded(self, t: float) -> str | None:
        for fault in self.node.faults:
            if fault.kind == "nvml_not_loaded" and fault.active(t):
                return fault.error
        return None

    def _begin(self, function: str) -> float:
        """Count the call and check the library is initialised; return the time."""
        self.calls[function] += 1
        t = self.now()
        if self._not_loaded(t) is not None:
            # The driver went away: every earlier nvmlInit is void.
            self._refcount = 0
        if self._refcount <= 0:
            _raise(_pynvml.NVML_ERROR_UNINITIALIZED)
        return t

    def _ready(self, function: str) -> float:
        t = self._begin(function)
        self._faulted(function, None, t)
        return t

    def _lost(self, index: int, t: float) -> bool:
        return any(
            f.kind == "gpu_lost" and f.gpu == index and f.active(t) for f in self.node.faults
        )

    def _device(self, function: str, handle: object) -> tuple[GpuState, float]:
        """The GPU (or MIG device) of ``handle``, after the checks every call makes."""
        t = self._begin(function)
        if not isinstance(handle, _Handle) or handle.owner != id(self):
            _raise(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if self._lost(handle.index, t):
            _raise(_pynvml.NVML_ERROR_GPU_IS_LOST)
        self._faulted(function, handle.index, t)
        g = self._model.gpus[handle.index]
        if handle.mig < 0:
            return g, t
        if handle.mig >= len(g.slices):
            _raise(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if function not in MIG_HANDLE_CALLS:
            # Only the calls whose nvml.h entry says they take a MIG device handle.
            _raise(_pynvml.NVML_ERROR_NOT_SUPPORTED)
        return g.slices[handle.mig], t

    def _handle(self, index: int, mig: int = -1) -> _Handle:
        return _Handle(id(self), index, mig)

    # --- library -----------------------------------------------------------------
    def nvmlInitWithFlags(self, flags: int) -> None:
        self.calls["nvmlInitWithFlags"] += 1
        t = self.now()
        error = self._not_loaded(t)
        if error == "driver_not_loaded":
            _raise(_pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        if error == "lib_rm_version_mismatch":
            _raise(_pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH)
        if error is not None:
            _raise(_pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        self._faulted("nvmlInitWithFlags", None, t)
        self._refcount += 1

    def nvmlInit(self) -> None:
        self._faulted("nvmlInit", None, self.now())
        self.nvmlInitWithFlags(0)

    def nvmlShutdown(self) -> None:
        self._ready("nvmlShutdown")
        self._refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._ready("nvmlSystemGetDriverVersion")
        return self.scenario.driver_version

    # --- enumeration ---------------------------------------------------------------
    def nvmlDeviceGetCount(self) -> int:
        self._ready("nvmlDeviceGetCount")
        return len(self._model.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        # A fault on a handle lookup hits the GPUs it names, not every index.
        t = self._begin("nvmlDeviceGetHandleByIndex")
        if isinstance(index, bool) or not isinstance(index, int):
            _raise(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not 0 <= index < len(self._model.gpus):
            _raise(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if self._lost(index, t):
            _raise(_pynvml.NVML_ERROR_GPU_IS_LOST)
        self._faulted("nvmlDeviceGetHandleByIndex", index, t)
        return _Handle(id(self), index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> _Handle:
        t = self._begin("nvmlDeviceGetHandleByUUID")
        if isinstance(uuid, bytes):
            uuid = uuid.decode(errors="replace")
        if not isinstance(uuid, str):
            _raise(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        # nvml.h: "@param uuid The UUID of the target GPU or MIG instance".
        for g in self._model.gpus:
            mig = (
                -1
                if g.uuid == uuid
                else next((s.mig.index for s in g.slices if s.uuid == uuid and s.mig), None)
            )
            if mig is not None:
                if self._lost(g.index, t):
                    _raise(_pynvml.NVML_ERROR_GPU_IS_LOST)
                self._faulted("nvmlDeviceGetHandleByUUID", g.index, t)
                return _Handle(id(self), g.index, mig)
        _raise(_pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetIndex(self, handle: object) -> int:
        g, _ = self._device("nvmlDeviceGetIndex", handle)
        return g.index

    def nvmlDeviceGetUUID(self, handle: object) -> str:
        g, _ = self._device("nvmlDeviceGetUUID", handle)
        return g.uuid

    def nvmlDeviceGetName(self, handle: object) -> str:
        g, _ = self._device("nvmlDeviceGetName", handle)
        if g.mig is not None:
            return f"{g.spec.model.name} MIG {g.mig.profile}"
        return g.spec.model.name

    def nvmlDeviceGetPciInfo(self, handle: object) -> Any:
        # nvml.h nvmlDeviceGetPciInfo_v3: "For all products"; errors UNINITIALIZED,
        # INVALID_ARGUMENT, GPU_IS_LOST, UNKNOWN.
        g, _ = self._device("nvmlDeviceGetPciInfo", handle)
        pci = pci_identity(g.spec.model.name, g.index)
        return _pynvml.nvmlPciInfo_t(
            busIdLegacy=pci.bus_id_legacy.encode(),
            domain=0,
            bus=pci.bus,
            device=0,
            pciDeviceId=pci.pci_device_id,
            pciSubSystemId=pci.pci_subsystem_id,
            busId=pci.bus_id.encode(),
        )

    nvmlDeviceGetPciInfo_v3 = nvmlDeviceGetPciInfo

    # --- readings --------------------------------------------------------------------
    def nvmlDeviceGetUtilizationRates(self, handle: object) -> Any:
        g, t = self._device("nvmlDeviceGetUtilizationRates", handle)
        if g.spec.mig:
            _raise(_pynvml.NVML_ERROR_NOT_SUPPORTED)
        util = self._model.activity(g, t).utilization
        return _pynvml.c_nvmlUtilization_t(gpu=round(util), memory=round(util * 0.6))

    def nvmlDeviceGetMemoryInfo(self, handle: object, version: int | None = None) -> Any:
        g, t = self._device("nvmlDeviceGetMemoryInfo", handle)
        total = g.memory_bytes
        used = self._model.activity(g, t).memory_used_bytes
        if not version:
            return _pynvml.c_nvmlMemory_t(total=total, free=total - used, used=used)
        if version != _pynvml.nvmlMemory_v2:
            _raise(_pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        return _pynvml.c_nvmlMemory_v2_t(
            version=version, total=total, reserved=0, free=total - used, used=used
        )

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        g, t = self._device("nvmlDeviceGetPowerUsage", handle)
        return round(self._model.activity(g, t).power_watts * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: object) -> int:
        g, _ = self._device("nvmlDeviceGetEnforcedPowerLimit", handle)
        return round(g.enforced_limit_watts * 1000)

    def nvmlDeviceGetPowerManagementLimit(self, handle: object) -> int:
        g, _ = self._device("nvmlDeviceGetPowerManagementLimit", handle)
        return round(g.power_limit_watts * 1000)

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: object) -> int:
        g, _ = self._device("nvmlDeviceGetPowerManagementDefaultLimit", handle)
        return round(g.spec.model.tdp_watts * 1000)

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: object) -> list[int]:
        g, _ = self._device("nvmlDeviceGetPowerManagementLimitConstraints", handle)
        model = g.spec.model
        return [round(model.min_limit_watts * 1000), round(model.tdp_watts * 1000)]

    def nvmlDeviceGetClockInfo(self, handle: object, type: int) -> int:
        g, t = self._device("nvmlDeviceGetClockInfo", handle)
        return self._clock_of(g, type, self._model.activity(g, t).sm_clock_mhz)

    def nvmlDeviceGetMaxClockInfo(self, handle: object, type: int) -> int:
        g, _ = self._device("nvmlDeviceGetMaxClockInfo", handle)
        return self._clock_of(g, type, g.spec.model.max_sm_clock_mhz)

    @staticmethod
    def _clock_of(g: GpuState, clock_type: int, sm_mhz: int) -> int:
        if clock_type in (_pynvml.NVML_CLOCK_GRAPHICS, _pynvml.NVML_CLOCK_SM):
            return sm_mhz
        if clock_type == _pynvml.NVML_CLOCK_MEM:
            return g.spec.model.mem_clock_mhz
        if clock_type == _pynvml.NVML_CLOCK_VIDEO:
            return round(sm_mhz * 0.9)
        _raise(_pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: object) -> int:
        g, t = self._device("nvmlDeviceGetTotalEnergyConsumption", handle)
        with self._lock:
            self._model.advance(g, t)
            return int(g.energy_mj)

    def nvmlDeviceGetComputeMode(self, handle: object) -> int:
        g, t = self._device("nvmlDeviceGetComputeMode", handle)
        self._refuse_mig_parent(g)
        return g.mode_at(t)

    @staticmethod
    def _refuse_mig_parent(g: GpuState) -> None:
        # nvml.h nvmlDeviceGet/SetComputeMode: "If MIG is enabled on a GPU, device
        # must be MIG device handle". nvml.h names no return code for a parent
        # handle; NOT_SUPPORTED is this fake's choice, unverified on a driver
        # (agent/nvml/control.py treats any NVMLError there as a refusal).
        if g.spec.mig and g.mig is None:
            _raise(_pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetMigMode(self, device: object) -> list[int]:
        g, _ = self._device("nvmlDeviceGetMigMode", device)
        if not g.spec.model.mig_capable:
            _raise(_pynvml.NVML_ERROR_NOT_SUPPORTED)
        mode = _pynvml.NVML_DEVICE_MIG_ENABLE if g.spec.mig else _pynvml.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def _processes(self, function: str, handle: object, kind: str) -> list[Any]:
        g, t = self._device(function, handle)
        return process_list(self._model, g, t, kind, struct_mismatch=self._struct_mismatch())

    def nvmlDeviceGetComputeRunningProcesses(self, handle: object) -> list[Any]:
        return self._processes("nvmlDeviceGetComputeRunningProcesses", handle, "compute")

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: object) -> list[Any]:
        return self._processes("nvmlDeviceGetGraphicsRunningProcesses", handle, "graphics")

    def nvmlDeviceGetMPSComputeRunningProcesses(self, handle: object) -> list[Any]:
        return self._processes("nvmlDeviceGetMPSComputeRunningProcesses", handle, "mps")

    nvmlDeviceGetComputeRunningProcesses_v3 = nvmlDeviceGetComputeRunningProcesses
    nvmlDeviceGetGraphicsRunningProcesses_v3 = nvmlDeviceGetGraphicsRunningProcesses
    nvmlDeviceGetMPSComputeRunningProcesses_v3 = nvmlDeviceGetMPSComputeRunningProcesses

    # --- enforcement -------------------------------------------------------------------
    def nvmlDeviceSetComputeMode(self, handle: object, mode: int) -> None:
        g, t = self._device("nvmlDeviceSetComputeMode", handle)
        self._refuse_mig_parent(g)
        if mode == _pynvml.NVML_COMPUTEMODE_EXCLUSIVE_THREAD:
            _raise(_pynvml.NVML_ERROR_NOT_SUPPORTED)
        if mode not in _SETTABLE_MODES:
            _raise(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        with self._lock:
            self._model.set_mode(g, t, mode)

    def nvmlDeviceSetPowerManagementLimit(self, handle: object, limit: int) -> None:
        g, t = self._device("nvmlDeviceSetPowerManagementLimit", handle)
        model = g.spec.model
        if isinstance(limit, bool) or not isinstance(limit, int):
            _raise(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not round(model.min_limit_watts * 1000) <= limit <= round(model.tdp_watts * 1000):
            _raise(_pynvml.NVML_ERROR_INVALID_ARGUMENT)
        with self._lock:
            self._model.set_power_limit(g, t, limit / 1000.0)
