"""Steering GPUs through NVML: compute mode and power limit, by GPU UUID.

Mixed into ``agent.nvml.real.NvmlBackend``, which owns the NVML session, its
lock and the handle cache; this part only turns a UUID into a handle and each
NVML refusal into a ``BackendError`` that names the GPU.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from agent.nvml.backend import PowerLimits, Snapshot
from agent.nvml.samples import is_placeholder
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import BackendError


class NvmlControl:
    """Set compute mode and power limit (the session comes from the subclass)."""

    _n: Any
    _error: type[Exception]
    _lock: threading.Lock
    _modes: dict[Any, Any]

    def _init(self) -> Snapshot | None:
        raise NotImplementedError

    def _code(self, exc: BaseException) -> int:
        raise NotImplementedError

    def _cached_handle(self, uuid: str) -> Any | None:
        raise NotImplementedError

    def _handle(self, uuid: str) -> Any:
        """The handle of the GPU with ``uuid``; caller holds the lock."""
        if is_placeholder(uuid):
            raise BackendError(
                f"GPU {uuid} is unreadable (NVML could not read its handle or UUID):"
                " it cannot be controlled"
            )
        failed = self._init()
        if failed is not None:
            raise BackendError(f"NVML is not usable: {failed.error}")
        cached = self._cached_handle(uuid)
        if cached is not None:
            return cached
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
                # The limit this agent sets and must restore: the management limit.
                # The enforced limit (nvmlDeviceGetEnforcedPowerLimit) also carries
                # out-of-band limits; writing it back would make them permanent.
                current = self._n.nvmlDeviceGetPowerManagementLimit(handle)
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
