"""Shaping ``GpuSample`` messages: placeholder identities, field errors, unique uuids.

A report names each GPU by uuid, and the collector refuses a report in which
two GPUs share one (``protos.reports``). A GPU whose UUID cannot be read
(lost before its first read, NO_PERMISSION under a container's device cgroup,
INSUFFICIENT_POWER, ...) therefore stands in the report under a placeholder
that is stable for its slot and cannot be mistaken for a real UUID.
"""

from __future__ import annotations

from protos.computewatch.v1 import telemetry_pb2

PLACEHOLDER_PREFIX = "unreadable:"
# Field errors kept per GPU and sample (a GPU failing every call is still one bounded sample).
FIELD_ERRORS_MAX = 32
ERROR_TEXT_MAX = 300


class GpuReadError(Exception):
    """One NVML call failed for one GPU (internal to the backend's ``sample``)."""

    def __init__(self, call: str, error: BaseException) -> None:
        super().__init__(f"{call}: {error}")
        self.call = call
        self.error = error


def error_code(exc: BaseException) -> int:
    """The NVML return code of a pynvml ``NVMLError`` (``value``), or -1."""
    value = getattr(exc, "value", -1)
    return value if isinstance(value, int) else -1


def placeholder_uuid(index: int, bus_id: str = "") -> str:
    """``unreadable:<PCI bus id>``, or ``unreadable:index-<n>`` when the bus id is unknown.

    Never a real UUID: those start ``GPU-`` or ``MIG-`` (nvml.h nvmlDeviceGetUUID).
    """
    return f"{PLACEHOLDER_PREFIX}{bus_id or f'index-{index}'}"


def is_placeholder(uuid: str) -> bool:
    return uuid.startswith(PLACEHOLDER_PREFIX)


def text(value: object) -> str:
    """A pynvml string (``str``, or ``bytes`` from a ctypes char array)."""
    if isinstance(value, bytes):
        return value.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    return str(value)


def note(s: telemetry_pb2.GpuSample, call: str, code: int, message: str) -> None:
    """Name a failed NVML call in the sample (bounded per GPU)."""
    if len(s.field_errors) < FIELD_ERRORS_MAX:
        s.field_errors.add(function=call, code=code, message=message[:ERROR_TEXT_MAX])


def unique(gpus: list[telemetry_pb2.GpuSample]) -> list[telemetry_pb2.GpuSample]:
    """No two GPUs share a uuid: a later duplicate (an identity remembered for an
    index that a re-enumeration gave to another GPU) falls back to its placeholder
    and is reported unreadable. GPUs read OK claim their uuid first."""
    taken: set[str] = set()
    for g in sorted(gpus, key=lambda g: g.health != telemetry_pb2.GPU_HEALTH_OK):
        if g.uuid in taken:
            g.uuid = placeholder_uuid(g.index, g.pci_bus_id)
            if g.uuid in taken:
                g.uuid = placeholder_uuid(g.index)
            if g.health == telemetry_pb2.GPU_HEALTH_OK:
                g.health = telemetry_pb2.GPU_HEALTH_UNREADABLE
                g.error = "uuid already reported for another GPU of this node"
        taken.add(g.uuid)
    return gpus
