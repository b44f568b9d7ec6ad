"""``NvmlBackend``: the agent's GPU backend over NVML.

The only module in the project that imports ``pynvml`` (``nvidia-ml-py``).
Tests and the demo pass ``agent.fakenvml.FakeNvml``, which has the same
surface, so this exact code runs in both.

Per GPU it reads identity (UUID, name, PCI ids), memory, power and its limit,
SM clock, energy, compute mode, MIG mode, the processes (compute, graphics and
MPS lists, ``agent.nvml.procs``), and GPM SM, tensor and per-pipe activity
(Hopper and later: computed between this sample and the previous one, so the
first sample has none; ``agent.nvml.gpm``). Utilization is the driver's sample
buffer averaged since the previous read, with each process's SM share
(``agent.nvml.windows``); ``activity_window_seconds`` says what the activity
figures cover. A MIG-enabled GPU is followed by one sample per MIG device
(``agent.nvml.mig``): its own UUID, instance, profile, SM share, compute mode,
processes and per-instance GPM; the parent keeps power, energy and the
aggregate process list and has no activity of its own.
``sample(activity=False)`` (enforcement's reads) leaves the activity windows
and GPM bases alone, so the next report still covers its whole interval.

NotSupported and NoPermission leave a
field absent (unknown, never zero). Any other error is per field, as
dcgm-exporter treats them: the field is absent and ``field_errors`` names the
NVML function and error; the rest of the GPU is still read. Only two things
take a whole GPU out: GPU_IS_LOST (health LOST) and a handle or UUID that
cannot be read (health UNREADABLE). Neither ever leaves a GPU without a unique
uuid: one read before is remembered, otherwise a placeholder
``unreadable:<PCI bus id>`` (or ``unreadable:index-<n>``) stands in.
Handles and identities are cached; ``nvmlInit`` is lazy and retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.nvml import procs as proclists
from agent.nvml.backend import Snapshot
from agent.nvml.control import NvmlControl
from agent.nvml.gpm import Gpm, GpmReadError, GpmState
from agent.nvml.mig import MigDevice, MigEnumerator, MigSampling
from agent.nvml.samples import (
    ERROR_TEXT_MAX,
    error_code,
    is_placeholder,
    note,
    placeholder_uuid,
    text,
    unique,
)
from agent.nvml.samples import GpuReadError as _GpuReadError
from agent.nvml.windows import Windows, WindowState
from protos.computewatch.v1 import telemetry_pb2

log = logging.getLogger(__name__)

_ERROR_TEXT_MAX = ERROR_TEXT_MAX


@dataclass
class _Gpu:
    handle: Any
    uuid: str
    name: str = ""
    gpm: bool = False
    # nvmlGpmQueryDeviceSupport answered (an error leaves it to the next sample).
    gpm_checked: bool = False
    # nvmlPciInfo_t.pciDeviceId and busId, once read.
    pci_device_id: int | None = None
    bus_id: str = ""
    gpm_state: GpmState = field(default_factory=GpmState)
    window: WindowState = field(default_factory=WindowState)
    # MIG devices by UUID, and the SMs of the full-GPU instance profile (0: not read yet).
    mig: dict[str, MigDevice] = field(default_factory=dict)
    full_sms: int | None = 0


class NvmlBackend(MigSampling, NvmlControl):
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
        # index -> PCI bus id, for the placeholder of a GPU whose UUID is unreadable.
        self._bus_ids: dict[int, str] = {}
        # Checked once, at start: a binding that would decode wrong pids is never used.
        self._procs_refused = proclists.struct_problem(n)
        if self._procs_refused:
            log.error("process lists disabled: %s", self._procs_refused)

    def _code(self, exc: BaseException) -> int:
        return error_code(exc)

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
            gpus = unique(gpus)
            return Snapshot(status=telemetry_pb2.NVML_STATUS_OK, gpus=gpus)

    def _call(self, call: str, *args: object) -> Any:
        try:
            return getattr(self._n, call)(*args)
        except self._error as exc:
            raise _GpuReadError(call, exc) from exc

    def _opt(self, call: str, *args: object) -> Any:
        """The call's answer, or None when NVML says it is not available here."""
        try:
            return getattr(self._n, call)(*args)
        except self._error as exc:
            if self._code(exc) in self._absent:
                return None
            raise _GpuReadError(call, exc) from exc

    def _field(self, s: telemetry_pb2.GpuSample, call: str, *args: object) -> Any:
        """The call's answer, or None: absent when NVML says the field is not
        available here, absent and named in ``field_errors`` on any other error.
        GPU_IS_LOST raises (the whole GPU is lost)."""
        try:
            return getattr(self._n, call)(*args)
        except self._mismatch as exc:
            # pynvml's unversioned wrapper over a function this driver lacks.
            log.debug("%s unavailable: %s", call, exc)
            return None
        except self._error as exc:
            code = self._code(exc)
            if code == self._lost:
                raise _GpuReadError(call, exc) from exc
            if code not in self._absent:
                note(s, call, code, str(exc))
            return None

    def _gpu(self, index: int) -> _Gpu:
        """The GPU's handle and UUID (cached); raises ``_GpuReadError`` when either fails."""
        gpu = self._gpus.get(index)
        if gpu is not None:
            return gpu
        handle = self._call("nvmlDeviceGetHandleByIndex", index)
        try:
            pci = self._n.nvmlDeviceGetPciInfo(handle)
        except self._error:
            pci = None  # read again (and reported) by _describe
        if pci is not None:
            self._bus_ids[index] = text(pci.busId)
        uuid = text(self._call("nvmlDeviceGetUUID", handle))
        if not uuid or is_placeholder(uuid):
            raise _GpuReadError("nvmlDeviceGetUUID", ValueError(f"implausible UUID {uuid!r}"))
        gpu = _Gpu(handle, uuid)
        if pci is not None:
            gpu.pci_device_id, gpu.bus_id = int(pci.pciDeviceId), self._bus_ids[index]
        self._gpus[index] = gpu
        # Recorded the moment it is read: a failure later in this sample still names it.
        self._seen[index] = (uuid, self._seen.get(index, ("", ""))[1])
        return gpu

    def _describe(self, index: int, gpu: _Gpu, s: telemetry_pb2.GpuSample) -> None:
        """Name, PCI ids and GPM support: read until they answer (errors per field)."""
        h = gpu.handle
        if not gpu.name:
            name = self._field(s, "nvmlDeviceGetName", h)
            if name is not None:
                gpu.name = text(name)
                self._seen[index] = (gpu.uuid, gpu.name)
        if gpu.pci_device_id is None:
            pci = self._field(s, "nvmlDeviceGetPciInfo", h)
            if pci is not None:
                gpu.pci_device_id = int(pci.pciDeviceId)
                gpu.bus_id = text(pci.busId)
                self._bus_ids[index] = gpu.bus_id
        if not gpu.gpm_checked:
            errors = len(s.field_errors)
            support = self._field(s, "nvmlGpmQueryDeviceSupport", h)
            gpu.gpm = bool(support is not None and support.isSupportedDevice)
            gpu.gpm_checked = len(s.field_errors) == errors
        s.uuid, s.product_name = gpu.uuid, gpu.name
        if gpu.pci_device_id is not None:
            s.pci_device_id = gpu.pci_device_id
        s.pci_bus_id = gpu.bus_id

    def _read(self, index: int, activity: bool = True) -> list[telemetry_pb2.GpuSample]:
        """The GPU at ``index`` and, when MIG is enabled, its MIG devices."""
        sample = telemetry_pb2.GpuSample(index=index)
        try:
            gpu = self._gpu(index)
            self._describe(index, gpu, sample)
            self._fill(gpu, sample, activity)
        except _GpuReadError as failed:
            return [self._unusable(index, failed)]
        sample.health = telemetry_pb2.GPU_HEALTH_OK
        if not sample.mig_enabled:
            return [sample]
        return [sample, *self._read_mig(gpu, sample, activity)]

    def _unusable(self, index: int, failed: _GpuReadError) -> telemetry_pb2.GpuSample:
        """A GPU that is lost, or whose handle or UUID cannot be read."""
        error = str(failed)[:_ERROR_TEXT_MAX]
        lost = self._code(failed.error) == self._lost
        if lost:
            self._forget(index)
        health = telemetry_pb2.GPU_HEALTH_LOST if lost else telemetry_pb2.GPU_HEALTH_UNREADABLE
        sample = telemetry_pb2.GpuSample(index=index, health=health, error=error)
        bus_id = self._bus_ids.get(index, "")
        sample.pci_bus_id = bus_id
        uuid, name = self._seen.get(index, ("", ""))
        sample.uuid = uuid or placeholder_uuid(index, bus_id)
        sample.product_name = name
        code = self._code(failed.error)
        note(sample, failed.call, max(code, 0), str(failed.error))
        log.debug("GPU %d %s: %s", index, telemetry_pb2.GpuHealth.Name(health), error)
        return sample

    def _forget(self, index: int) -> None:
        gpu = self._gpus.pop(index, None)
        if gpu is not None:
            self._free_gpm(gpu)

    def _fill(self, gpu: _Gpu, s: telemetry_pb2.GpuSample, activity: bool = True) -> None:
        h = gpu.handle
        memory = self._field(s, "nvmlDeviceGetMemoryInfo", h)
        if memory is not None:
            s.memory_used_bytes = int(memory.used)
            s.memory_total_bytes = int(memory.total)
        power = self._field(s, "nvmlDeviceGetPowerUsage", h)
        if power is not None:
            s.power_watts = power / 1000.0
        limit = self._field(s, "nvmlDeviceGetEnforcedPowerLimit", h)
        if limit is not None:
            s.power_limit_watts = limit / 1000.0
        clock = self._field(s, "nvmlDeviceGetClockInfo", h, self._n.NVML_CLOCK_SM)
        if clock is not None:
            s.sm_clock_mhz = int(clock)
        energy = self._field(s, "nvmlDeviceGetTotalEnergyConsumption", h)
        if energy is not None:
            s.energy_millijoules = int(energy)
        mode = self._field(s, "nvmlDeviceGetComputeMode", h)
        s.compute_mode = self._modes.get(mode, telemetry_pb2.COMPUTE_MODE_UNSPECIFIED)
        errors = len(s.field_errors)
        mig = self._field(s, "nvmlDeviceGetMigMode", h)
        if mig is not None:
            s.mig_enabled = mig[0] == self._n.NVML_DEVICE_MIG_ENABLE
        # False: MIG is off, or the GPU has none (NotSupported); None: the read failed.
        mig_known = s.mig_enabled if len(s.field_errors) == errors else None
        self._processes(h, s, mig_known)
        if not activity or s.mig_enabled:
            # Under MIG activity is per MIG device (nvml.h: utilization rates and
            # samples are not supported on MIG-enabled GPUs).
            return
        self._activity(gpu, s)

    def _activity(self, gpu: _Gpu, s: telemetry_pb2.GpuSample) -> None:
        """Utilization over the window since the last read, per-process SM shares, GPM.
        A failed read is a field error (GPU_IS_LOST takes the GPU out)."""
        h = gpu.handle
        call = "nvmlDeviceGetSamples" if gpu.window.samples else "nvmlDeviceGetUtilizationRates"
        try:
            self._windows.utilization(h, gpu.window, s)
        except self._error as exc:
            self._field_failed(s, call, exc)
        window = s.activity_window_seconds if s.HasField("activity_window_seconds") else None
        self._windows.processes(h, gpu.window, s)
        if gpu.gpm:
            s.ClearField("activity_window_seconds")
            self._gpm(gpu, gpu.gpm_state, lambda buf: self._n.nvmlGpmSampleGet(h, buf), s)
            if not s.HasField("activity_window_seconds") and window is not None:
                s.activity_window_seconds = window

    def _field_failed(self, s: telemetry_pb2.GpuSample, call: str, exc: BaseException) -> None:
        """Note a failed call in ``field_errors``; raise when the GPU is lost."""
        code = self._code(exc)
        if code == self._lost:
            raise _GpuReadError(call, exc) from exc
        note(s, call, max(code, 0), str(exc))

    def _processes(self, handle: Any, s: telemetry_pb2.GpuSample, mig: bool | None) -> None:
        """Compute, graphics and MPS processes, one entry per pid (``agent.nvml.procs``)."""
        if self._procs_refused:
            s.processes_known = False
            note(s, proclists.LIST_FUNCTIONS[0], 0, self._procs_refused)
            return
        proclists.read_into(s, lambda call: self._field(s, call, handle), mig=mig)

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
            self._field_failed(s, failed.call, failed.error)

    def _free_gpm(self, gpu: _Gpu) -> None:
        self._gpm_reader.free(gpu.gpm_state)
        for dev in gpu.mig.values():
            self._gpm_reader.free(dev.gpm)

    # --- control (agent.nvml.control) -----------------------------------------------------
    def _cached_handle(self, uuid: str) -> Any | None:
        for gpu in self._gpus.values():
            if gpu.uuid == uuid:
                return gpu.handle
            if uuid in gpu.mig:
                return gpu.mig[uuid].handle
        return None

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
