"""``NvmlBackend``: the agent's GPU backend over NVML.

The only module in the project that imports ``pynvml`` (``nvidia-ml-py``).
Tests and the demo pass ``agent.fakenvml.FakeNvml``, which has the same
surface, so this exact code runs in both.

Per GPU it reads identity, utilization, memory, power and its limit, SM clock,
energy, compute mode, MIG mode, the compute processes, and GPM SM, tensor and
per-pipe activity (Hopper and later: computed between this sample and the
previous one, so the first sample has none; ``agent.nvml.gpm``). Utilization
is the driver's sample buffer averaged since the previous read, with each
process's SM share (``agent.nvml.windows``); ``activity_window_seconds`` says
what the activity figures cover. A MIG-enabled GPU is followed by one sample
per MIG device (``agent.nvml.mig``): its own UUID, instance, profile, SM share,
compute mode, processes and per-instance GPM; the parent keeps power, energy
and the aggregate process list and has no activity of its own.
``sample(activity=False)`` (enforcement's reads) leaves the activity windows
and GPM bases alone, so the next report still covers its whole interval.

NotSupported and NoPermission leave a field absent (unknown, never zero). A
GPU that fell off the bus is reported LOST, any other failure ERROR with the
error text; the other GPUs are still read. Handles and identities are cached;
``nvmlInit`` is lazy and retried.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.nvml.backend import PowerLimits, Snapshot
from agent.nvml.gpm import Gpm, GpmReadError, GpmState
from agent.nvml.mig import MigDevice, MigEnumerator
from agent.nvml.windows import Windows, WindowState
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import BackendError

log = logging.getLogger(__name__)

_ERROR_TEXT_MAX = 300


@dataclass
class _Gpu:
    handle: Any
    uuid: str
    name: str
    gpm: bool
    gpm_state: GpmState = field(default_factory=GpmState)
    window: WindowState = field(default_factory=WindowState)
    # MIG devices by UUID, and the SMs of the full-GPU instance profile (0: not read yet).
    mig: dict[str, MigDevice] = field(default_factory=dict)
    full_sms: int | None = 0


class _GpuReadError(Exception):
    """One NVML call failed for one GPU (internal to ``sample``)."""

    def __init__(self, call: str, error: BaseException) -> None:
        super().__init__(f"{call}: {error}")
        self.call = call
        self.error = error


class NvmlBackend:
    """``agent.nvml.backend.GpuBackend`` over pynvml (or an object with its surface)."""

    def __init__(
        self, nvml: object | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if nvml is None:
            import pynvml

            nvml = pynvml
        n: Any = nvml
        self._n = n
        self._error: type[Exception] = n.NVMLError
        mismatch = getattr(n, "NVMLLibraryMismatchError", None)
        self._mismatch: tuple[type[Exception], ...] = (mismatch,) if mismatch else ()
        self._lost = n.NVML_ERROR_GPU_IS_LOST
        self._uninitialized = n.NVML_ERROR_UNINITIALIZED
        self._absent = frozenset(
            {
                n.NVML_ERROR_NOT_SUPPORTED,
                n.NVML_ERROR_NO_PERMISSION,
                n.NVML_ERROR_FUNCTION_NOT_FOUND,
            }
        )
        self._not_loaded = frozenset(
            {n.NVML_ERROR_LIBRARY_NOT_FOUND, n.NVML_ERROR_DRIVER_NOT_LOADED}
        )
        self._not_available = n.NVML_VALUE_NOT_AVAILABLE_ulonglong.value
        self._modes = {
            n.NVML_COMPUTEMODE_DEFAULT: telemetry_pb2.COMPUTE_MODE_DEFAULT,
            n.NVML_COMPUTEMODE_EXCLUSIVE_THREAD: telemetry_pb2.COMPUTE_MODE_EXCLUSIVE_THREAD,
            n.NVML_COMPUTEMODE_PROHIBITED: telemetry_pb2.COMPUTE_MODE_PROHIBITED,
            n.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS: telemetry_pb2.COMPUTE_MODE_EXCLUSIVE_PROCESS,
        }
        self._gpm_reader = Gpm(n, clock)
        self._windows = Windows(n, self._absent)
        self._migs = MigEnumerator(n, self._opt)
        self._lock = threading.Lock()
        self._initialized = False
        self._last_init_error = ""
        self._gpus: dict[int, _Gpu] = {}
        # index -> (uuid, name), kept after a GPU is lost so its report names it.
        self._seen: dict[int, tuple[str, str]] = {}

    def _code(self, exc: BaseException) -> int:
        value = getattr(exc, "value", -1)
        return value if isinstance(value, int) else -1

    # --- initialisation -------------------------------------------------------------
    def _init(self) -> Snapshot | None:
        """Initialise NVML if needed; a Snapshot saying why when it cannot be."""
        if self._initialized:
            return None
        try:
            self._n.nvmlInit()
        except self._error as exc:
            code = self._code(exc)
            if code in self._not_loaded:
                status = telemetry_pb2.NVML_STATUS_NOT_LOADED
            elif code == self._n.NVML_ERROR_NO_PERMISSION:
                status = telemetry_pb2.NVML_STATUS_NO_PERMISSION
            else:
                status = telemetry_pb2.NVML_STATUS_ERROR
            text = f"nvmlInit: {exc}"
            if text != self._last_init_error:
                log.warning("NVML unavailable: %s", text)
                self._last_init_error = text
            return Snapshot(status=status, error=text)
        if self._last_init_error:
            log.info("NVML initialised after: %s", self._last_init_error)
        self._last_init_error = ""
        self._initialized = True
        return None

    def _reset(self) -> None:
        """Forget everything tied to the NVML session (after it became invalid)."""
        self._initialized = False
        self._gpus.clear()

    # --- sampling ----------------------------------------------------------------------
    def sample(self, *, activity: bool = True) -> Snapshot:
        with self._lock:
            failed = self._init()
            if failed is not None:
                return failed
            try:
                count = self._n.nvmlDeviceGetCount()
            except self._error as exc:
                if self._code(exc) != self._uninitialized:
                    return Snapshot(
                        status=telemetry_pb2.NVML_STATUS_ERROR,
                        error=f"nvmlDeviceGetCount: {exc}",
                    )
                # NVML was shut down or unloaded under us: start a new session once.
                self._reset()
                failed = self._init()
                if failed is not None:
                    return failed
                try:
                    count = self._n.nvmlDeviceGetCount()
                except self._error as again:
                    return Snapshot(
                        status=telemetry_pb2.NVML_STATUS_ERROR,
                        error=f"nvmlDeviceGetCount: {again}",
                    )
            gpus: list[telemetry_pb2.GpuSample] = []
            for i in range(count):
                gpus.extend(self._read(i, activity))
            return Snapshot(status=telemetry_pb2.NVML_STATUS_OK, gpus=gpus)

    def _call(self, call: str, *args: object) -> Any:
        try:
            return getattr(self._n, call)(*args)
        except self._error as exc:
            raise _GpuReadError(call, exc) from exc

    def _opt(self, call: str, *args: object) -> Any:
        """The call's answer, or None when NVML says the field is not available here."""
        try:
            return getattr(self._n, call)(*args)
        except self._error as exc:
            if self._code(exc) in self._absent:
                return None
            raise _GpuReadError(call, exc) from exc

    def _gpu(self, index: int) -> _Gpu:
        gpu = self._gpus.get(index)
        if gpu is not None:
            return gpu
        handle = self._call("nvmlDeviceGetHandleByIndex", index)
        uuid = str(self._call("nvmlDeviceGetUUID", handle))
        name = str(self._call("nvmlDeviceGetName", handle))
        support = self._opt("nvmlGpmQueryDeviceSupport", handle)
        gpm = bool(support is not None and support.isSupportedDevice)
        gpu = _Gpu(handle, uuid, name, gpm)
        self._gpus[index] = gpu
        self._seen[index] = (uuid, name)
        return gpu

    def _read(self, index: int, activity: bool) -> list[telemetry_pb2.GpuSample]:
        """The GPU at ``index`` and, when MIG is enabled, its MIG devices."""
        sample = telemetry_pb2.GpuSample(index=index)
        try:
            gpu = self._gpu(index)
            sample.uuid, sample.product_name = gpu.uuid, gpu.name
            self._fill(gpu, sample, activity)
        except _GpuReadError as failed:
            error = str(failed)[:_ERROR_TEXT_MAX]
            if self._code(failed.error) == self._lost:
                self._forget(index)
                sample = telemetry_pb2.GpuSample(
                    index=index, health=telemetry_pb2.GPU_HEALTH_LOST, error=error
                )
            else:
                sample.health = telemetry_pb2.GPU_HEALTH_ERROR
                sample.error = error
            if not sample.uuid and index in self._seen:
                sample.uuid, sample.product_name = self._seen[index]
            return [sample]
        sample.health = telemetry_pb2.GPU_HEALTH_OK
        if not sample.mig_enabled:
            return [sample]
        return [sample, *self._read_mig(gpu, sample, activity)]

    def _read_mig(
        self, gpu: _Gpu, parent: telemetry_pb2.GpuSample, activity: bool
    ) -> list[telemetry_pb2.GpuSample]:
        """One sample per MIG device of ``gpu`` (a failure marks that device only)."""
        try:
            if gpu.full_sms == 0:
                gpu.full_sms = self._migs.full_sms(gpu.handle)
            devices = self._migs.devices(gpu.handle, gpu.mig)
        except (self._error, _GpuReadError) as exc:
            parent.error = f"MIG devices unreadable: {exc}"[:_ERROR_TEXT_MAX]
            return []
        present = {d.uuid for d in devices}
        for uuid in [u for u in gpu.mig if u not in present]:
            self._gpm_reader.free(gpu.mig.pop(uuid).gpm)
        out = []
        for dev in devices:
            s = telemetry_pb2.GpuSample(
                uuid=dev.uuid,
                index=parent.index,
                product_name=parent.product_name,
                mig_enabled=True,
                mig_instance=dev.instance,
                mig_profile=dev.profile,
                parent_uuid=gpu.uuid,
            )
            if parent.HasField("pci_device_id"):
                s.pci_device_id = parent.pci_device_id
            if dev.sms and gpu.full_sms:
                s.sm_share = min(1.0, dev.sms / gpu.full_sms)
            try:
                self._fill_mig(gpu, dev, s, activity)
                s.health = telemetry_pb2.GPU_HEALTH_OK
            except _GpuReadError as failed:
                s.health = telemetry_pb2.GPU_HEALTH_ERROR
                s.error = str(failed)[:_ERROR_TEXT_MAX]
            out.append(s)
        return out

    def _fill_mig(
        self, gpu: _Gpu, dev: MigDevice, s: telemetry_pb2.GpuSample, activity: bool
    ) -> None:
        h = dev.handle
        memory = self._opt("nvmlDeviceGetMemoryInfo", h)
        if memory is not None:
            s.memory_used_bytes = int(memory.used)
            s.memory_total_bytes = int(memory.total)
        # nvml.h: "If MIG is enabled on a GPU, device must be MIG device handle."
        mode = self._opt("nvmlDeviceGetComputeMode", h)
        s.compute_mode = self._modes.get(mode, telemetry_pb2.COMPUTE_MODE_UNSPECIFIED)
        self._processes(h, s)
        if activity and gpu.gpm:
            gi = dev.gpu_instance_id
            self._gpm(
                gpu,
                dev.gpm,
                lambda buf: self._n.nvmlGpmMigSampleGet(gpu.handle, gi, buf),
                s,
            )

    def _forget(self, index: int) -> None:
        gpu = self._gpus.pop(index, None)
        if gpu is not None:
            self._free_gpm(gpu)

    def _fill(self, gpu: _Gpu, s: telemetry_pb2.GpuSample, activity: bool = True) -> None:
        h = gpu.handle
        memory = self._opt("nvmlDeviceGetMemoryInfo", h)
        if memory is not None:
            s.memory_used_bytes = int(memory.used)
            s.memory_total_bytes = int(memory.total)
        power = self._opt("nvmlDeviceGetPowerUsage", h)
        if power is not None:
            s.power_watts = power / 1000.0
        limit = self._opt("nvmlDeviceGetEnforcedPowerLimit", h)
        if limit is not None:
            s.power_limit_watts = limit / 1000.0
        clock = self._opt("nvmlDeviceGetClockInfo", h, self._n.NVML_CLOCK_SM)
        if clock is not None:
            s.sm_clock_mhz = int(clock)
        energy = self._opt("nvmlDeviceGetTotalEnergyConsumption", h)
        if energy is not None:
            s.energy_millijoules = int(energy)
        mode = self._opt("nvmlDeviceGetComputeMode", h)
        s.compute_mode = self._modes.get(mode, telemetry_pb2.COMPUTE_MODE_UNSPECIFIED)
        mig = self._opt("nvmlDeviceGetMigMode", h)
        if mig is not None:
            s.mig_enabled = mig[0] == self._n.NVML_DEVICE_MIG_ENABLE
        self._processes(h, s)
        if not activity or s.mig_enabled:
            # Under MIG activity is per MIG device (nvml.h: utilization rates and
            # samples are not supported on MIG-enabled GPUs).
            return
        self._activity(gpu, s)

    def _activity(self, gpu: _Gpu, s: telemetry_pb2.GpuSample) -> None:
        """Utilization over the window since the last read, per-process SM shares, GPM."""
        h = gpu.handle
        try:
            self._windows.utilization(h, gpu.window, s)
        except self._error as exc:
            call = "nvmlDeviceGetSamples" if gpu.window.samples else "nvmlDeviceGetUtilizationRates"
            raise _GpuReadError(call, exc) from exc
        window = s.activity_window_seconds if s.HasField("activity_window_seconds") else None
        self._windows.processes(h, gpu.window, s)
        if gpu.gpm:
            s.ClearField("activity_window_seconds")
            self._gpm(gpu, gpu.gpm_state, lambda buf: self._n.nvmlGpmSampleGet(h, buf), s)
            if not s.HasField("activity_window_seconds") and window is not None:
                s.activity_window_seconds = window

    def _processes(self, handle: Any, s: telemetry_pb2.GpuSample) -> None:
        try:
            procs = self._opt("nvmlDeviceGetComputeRunningProcesses", handle)
        except self._mismatch as exc:
            log.debug("process list unavailable: %s", exc)
            procs = None
        s.processes_known = procs is not None
        for proc in procs or ():
            entry = s.processes.add(pid=int(proc.pid))
            used = proc.usedGpuMemory
            if used is not None and used != self._not_available:
                entry.used_memory_bytes = int(used)

    def _gpm(
        self,
        gpu: _Gpu,
        state: GpmState,
        take: Callable[[Any], object],
        s: telemetry_pb2.GpuSample,
    ) -> None:
        """GPM activity between ``state``'s previous sample and a new one (``take``)."""
        try:
            self._gpm_reader.read(state, take, s)
        except GpmReadError as failed:
            if self._code(failed.error) in self._absent:
                log.info("GPU %s: GPM not available (%s)", gpu.uuid, failed)
                self._free_gpm(gpu)
                gpu.gpm = False
                return
            raise _GpuReadError(failed.call, failed.error) from failed

    def _free_gpm(self, gpu: _Gpu) -> None:
        self._gpm_reader.free(gpu.gpm_state)
        for dev in gpu.mig.values():
            self._gpm_reader.free(dev.gpm)

    # --- control --------------------------------------------------------------------------
    def _handle(self, uuid: str) -> Any:
        """The handle of the GPU with ``uuid``; caller holds the lock."""
        failed = self._init()
        if failed is not None:
            raise BackendError(f"NVML is not usable: {failed.error}")
        for gpu in self._gpus.values():
            if gpu.uuid == uuid:
                return gpu.handle
            if uuid in gpu.mig:
                return gpu.mig[uuid].handle
        try:
            return self._n.nvmlDeviceGetHandleByUUID(uuid)
        except self._error as exc:
            if self._code(exc) == self._n.NVML_ERROR_NOT_FOUND:
                raise BackendError(f"no GPU with UUID {uuid!r} on this node") from exc
            raise BackendError(f"nvmlDeviceGetHandleByUUID({uuid}): {exc}") from exc

    def set_compute_mode(self, uuid: str, mode: telemetry_pb2.ComputeMode) -> None:
        nvml_mode = next((k for k, v in self._modes.items() if v == mode), None)
        if nvml_mode is None:
            raise BackendError(f"compute mode {mode!r} cannot be set (GPU {uuid})")
        with self._lock:
            handle = self._handle(uuid)
            try:
                self._n.nvmlDeviceSetComputeMode(handle, nvml_mode)
            except self._error as exc:
                name = telemetry_pb2.ComputeMode.Name(mode)
                raise BackendError(f"nvmlDeviceSetComputeMode({uuid}, {name}): {exc}") from exc

    def power_limits(self, uuid: str) -> PowerLimits:
        with self._lock:
            handle = self._handle(uuid)
            try:
                low, high = self._n.nvmlDeviceGetPowerManagementLimitConstraints(handle)
                current = self._n.nvmlDeviceGetEnforcedPowerLimit(handle)
            except self._error as exc:
                raise BackendError(f"power limits of GPU {uuid}: {exc}") from exc
        return PowerLimits(low / 1000.0, high / 1000.0, current / 1000.0)

    def set_power_limit(self, uuid: str, watts: float) -> None:
        if not math.isfinite(watts) or watts <= 0:
            raise BackendError(f"power limit for GPU {uuid} must be a positive number of watts")
        with self._lock:
            handle = self._handle(uuid)
            try:
                self._n.nvmlDeviceSetPowerManagementLimit(handle, round(watts * 1000))
            except self._error as exc:
                if self._code(exc) == self._n.NVML_ERROR_INVALID_ARGUMENT:
                    raise BackendError(
                        f"power limit {watts:g} W is outside what GPU {uuid} accepts"
                        " (see power_limits())"
                    ) from exc
                raise BackendError(f"nvmlDeviceSetPowerManagementLimit({uuid}): {exc}") from exc

    def close(self) -> None:
        """Free GPM samples and shut NVML down (errors are logged, not raised)."""
        with self._lock:
            if not self._initialized:
                return
            for gpu in self._gpus.values():
                self._free_gpm(gpu)
            try:
                self._n.nvmlShutdown()
            except self._error as exc:
                log.warning("nvmlShutdown: %s", exc)
            self._reset()
