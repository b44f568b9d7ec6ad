"""What enforcement did, kept so it can be undone exactly and survives a restart.

One ``EnforcementRecord`` per agent, stored as JSON under the name
``enforcement`` in the spool's state table (``get_state``/``put_state``). It
holds:

- the highest counter accepted per class and the ids of recently applied
  directives (so a resend is acknowledged, not applied twice);
- the directives in force (HALT, THROTTLE, the local lease halt) with their scope;
- per GPU, the compute mode and power limit found before the first directive
  touched it, and which directives hold it prohibited or capped: a GPU is
  restored only when the last of them is lifted;
- the processes and jobs stopped, and which directives hold each stopped;
- TERMINATE kills still due (SIGKILL after the grace period).

Several directives may hold one GPU or process: resuming one halt never
releases what another halt still holds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

from agent.enforce.verify import ACTION_CLASS, LEASE_CLASS
from protos.computewatch.v1 import control_pb2
from protos.errors import SpoolError

STATE_NAME = "enforcement"
FORMAT_VERSION = 1
# Applied directive ids remembered for duplicate detection; older resends
# fall back to the counter check (and are refused as stale, never re-applied).
MAX_REMEMBERED = 512
LOCAL_HALT_ID = "local-lease-expired"

T = TypeVar("T")


class StateStore(Protocol):
    """Named blobs that survive a restart (``agent.spool.Spool``)."""

    def get_state(self, name: str) -> bytes | None: ...

    def put_state(self, name: str, value: bytes) -> None: ...


@dataclass
class ActiveDirective:
    """A directive in force on this node (HALT, THROTTLE or the local halt)."""

    id: str
    counter: int
    action: int
    scope_kind: int
    job_ids: list[str] = field(default_factory=list)
    gpu_uuids: list[str] = field(default_factory=list)
    power_cap_watts: float = 0.0
    applied_unix_nanos: int = 0

    @property
    def is_halt(self) -> bool:
        return self.action == control_pb2.ACTION_HALT


@dataclass
class GpuHold:
    """A GPU some directive changed: what it was before, and who holds it."""

    original_mode: int
    # None when the limit could not be read; then it is never rewritten.
    original_power_watts: float | None
    # Directives that hold the GPU's compute mode at PROHIBITED.
    prohibit: list[str] = field(default_factory=list)
    # Directive id -> power cap it holds, watts. The lowest cap applies.
    caps: dict[str, float] = field(default_factory=dict)

    def empty(self) -> bool:
        return not self.prohibit and not self.caps


@dataclass
class Stopped:
    """A process (signal) or job (scheduler) that enforcement suspended."""

    # "pid" or "job".
    kind: str
    job: str
    pid: int
    # "signal", "slurm" or "command".
    method: str
    # /proc/<pid>/stat start time, to tell a reused pid from the stopped one.
    start_time: int | None
    holders: list[str] = field(default_factory=list)
    # /proc/<pid>/cgroup when stopped: a pid that left it is never signalled.
    cgroup: str | None = None

    @property
    def key(self) -> str:
        return target_key(self.kind, self.job, self.pid)


def target_key(kind: str, job: str, pid: int) -> str:
    return f"pid:{pid}" if kind == "pid" else f"job:{job}"


@dataclass
class PendingKill:
    """A TERMINATE target that gets SIGKILL if still alive at the deadline."""

    directive_id: str
    directive_counter: int
    pid: int
    start_time: int | None
    deadline_unix_nanos: int
    cgroup: str | None = None


@dataclass
class EnforcementRecord:
    # Highest counter accepted per class.
    counters: dict[str, int] = field(default_factory=lambda: {ACTION_CLASS: 0, LEASE_CLASS: 0})
    # Applied directive id -> counter, oldest first, bounded.
    applied: dict[str, int] = field(default_factory=dict)
    last_lease_id: str = ""
    last_lease_counter: int = 0
    active: dict[str, ActiveDirective] = field(default_factory=dict)
    gpus: dict[str, GpuHold] = field(default_factory=dict)
    stopped: dict[str, Stopped] = field(default_factory=dict)
    kills: list[PendingKill] = field(default_factory=list)

    # --- SeenCounters ----------------------------------------------------------
    def highest(self, cls: str) -> int:
        return self.counters.get(cls, 0)

    def applied_counter(self, directive_id: str) -> int | None:
        if directive_id and directive_id == self.last_lease_id:
            return self.last_lease_counter
        return self.applied.get(directive_id)

    # --- updates -----------------------------------------------------------------
    def accept(self, directive_id: str, counter: int, cls: str) -> None:
        """Record an applied directive: its counter becomes the class's highest."""
        self.counters[cls] = max(self.counters.get(cls, 0), counter)
        if cls == LEASE_CLASS:
            self.last_lease_id, self.last_lease_counter = directive_id, counter
            return
        self.applied.pop(directive_id, None)
        self.applied[directive_id] = counter
        while len(self.applied) > MAX_REMEMBERED:
            del self.applied[next(iter(self.applied))]

    @property
    def locally_halted(self) -> bool:
        return LOCAL_HALT_ID in self.active

    def halted_gpus(self) -> list[str]:
        # A copy: the metrics thread reads this while the event loop enforces.
        return sorted(u for u, h in list(self.gpus.items()) if h.prohibit)

    # --- serialisation -------------------------------------------------------------
    def to_bytes(self) -> bytes:
        doc = {"version": FORMAT_VERSION, **asdict(self)}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> EnforcementRecord:
        try:
            doc = json.loads(data)
            return _record(doc)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SpoolError(
                f"enforcement state is unreadable ({exc}); the agent will not guess what"
                " it halted: inspect the 'enforcement' row of the spool's state table"
            ) from exc


class EnforcementStore:
    """Loads and saves the record through a ``StateStore``."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def load(self) -> EnforcementRecord:
        data = self._store.get_state(STATE_NAME)
        return EnforcementRecord() if data is None else EnforcementRecord.from_bytes(data)

    def save(self, record: EnforcementRecord) -> None:
        self._store.put_state(STATE_NAME, record.to_bytes())


# --- strict JSON reading: a corrupt row raises, it is never half-loaded -------------
def _get(doc: Any, key: str, kind: type[T]) -> T:
    value = doc[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{key}: expected {kind.__name__}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key}: not a finite number")
    return value


def _opt(doc: Any, key: str, kind: type[T]) -> T | None:
    return None if doc[key] is None else _get(doc, key, kind)


def _opt_new(doc: Any, key: str, kind: type[T]) -> T | None:
    """A field later agents added: absent in a record an older agent saved."""
    return _opt(doc, key, kind) if key in doc else None


def _strs(doc: Any, key: str) -> list[str]:
    items = _get(doc, key, list)
    if not all(isinstance(x, str) for x in items):
        raise TypeError(f"{key}: expected a list of strings")
    return [str(x) for x in items]


def _map(doc: Any, key: str, item: Callable[[Any], T]) -> dict[str, T]:
    return {str(k): item(v) for k, v in _get(doc, key, dict).items()}


def _active(d: Any) -> ActiveDirective:
    return ActiveDirective(
        id=_get(d, "id", str),
        counter=_get(d, "counter", int),
        action=_get(d, "action", int),
        scope_kind=_get(d, "scope_kind", int),
        job_ids=_strs(d, "job_ids"),
        gpu_uuids=_strs(d, "gpu_uuids"),
        power_cap_watts=_get(d, "power_cap_watts", float),
        applied_unix_nanos=_get(d, "applied_unix_nanos", int),
    )


def _hold(d: Any) -> GpuHold:
    return GpuHold(
        original_mode=_get(d, "original_mode", int),
        original_power_watts=_opt(d, "original_power_watts", float),
        prohibit=_strs(d, "prohibit"),
        caps=_map(d, "caps", lambda v: _get({"cap": v}, "cap", float)),
    )


def _stopped(d: Any) -> Stopped:
    kind = _get(d, "kind", str)
    if kind not in ("pid", "job"):
        raise ValueError(f"kind: expected 'pid' or 'job', got {kind!r}")
    return Stopped(
        kind=kind,
        job=_get(d, "job", str),
        pid=_get(d, "pid", int),
        method=_get(d, "method", str),
        start_time=_opt(d, "start_time", int),
        holders=_strs(d, "holders"),
        cgroup=_opt_new(d, "cgroup", str),
    )


def _kill(d: Any) -> PendingKill:
    return PendingKill(
        directive_id=_get(d, "directive_id", str),
        directive_counter=_get(d, "directive_counter", int),
        pid=_get(d, "pid", int),
        start_time=_opt(d, "start_time", int),
        deadline_unix_nanos=_get(d, "deadline_unix_nanos", int),
        cgroup=_opt_new(d, "cgroup", str),
    )


def _record(doc: Any) -> EnforcementRecord:
    version = _get(doc, "version", int)
    if version != FORMAT_VERSION:
        raise ValueError(f"format version {version}, this agent reads {FORMAT_VERSION}")
    return EnforcementRecord(
        counters=_map(doc, "counters", lambda v: _get({"n": v}, "n", int)),
        applied=_map(doc, "applied", lambda v: _get({"n": v}, "n", int)),
        last_lease_id=_get(doc, "last_lease_id", str),
        last_lease_counter=_get(doc, "last_lease_counter", int),
        active=_map(doc, "active", _active),
        gpus=_map(doc, "gpus", _hold),
        stopped=_map(doc, "stopped", _stopped),
        kills=[_kill(k) for k in _get(doc, "kills", list)],
    )
