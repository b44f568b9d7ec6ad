"""The agent's enforcement: verified directives in, hardware changes and receipts out.

``Enforcer.handle(envelope_bytes)`` verifies a directive (``verify``), acts on
it and returns the receipts for the next report: HALT and THROTTLE hold GPUs
and processes until a RESUME lifts them (``holds``), TERMINATE sends SIGTERM
now and SIGKILL after the grace period, LEASE renews the lease (``lease``). A
refused directive yields a receipt with ``refused_reason`` (a bounded number
per tick). ``tick(now, snapshot)`` runs every sampling interval: the local
fail-closed halt, kills that are due, and in-force halts applied to processes
and GPUs that appeared since. ``state()`` is the ``EnforcementState`` for the
report. Everything runs on the caller's thread (the agent's event loop);
scheduler commands block for at most their timeout.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.enforce.actions import GpuActions, ProcessController, step
from agent.enforce.holds import Holds, resolve
from agent.enforce.lease import LeaseTracker
from agent.enforce.state import (
    LOCAL_HALT_ID,
    ActiveDirective,
    EnforcementStore,
    PendingKill,
    StateStore,
)
from agent.enforce.verify import (
    ACTION_CLASS,
    LEASE_CLASS,
    DirectiveVerifier,
    action_name,
)
from agent.nvml.backend import GpuBackend, Snapshot
from protos import dsse
from protos.computewatch.v1 import control_pb2, telemetry_pb2
from protos.errors import BackendError, DirectiveError, Error, QuorumError

log = logging.getLogger(__name__)

Receipt = telemetry_pb2.EnforcementReceipt
# Refusal receipts per tick; more refusals are still counted and logged.
MAX_REFUSAL_RECEIPTS = 16
# Leases arrive every interval: their counter is saved at most this often
# (and with every other change). A lease replayed after a crash is still
# bounded by its own not_after.
LEASE_SAVE_SECONDS = 10.0
_HOLDING = (control_pb2.ACTION_HALT, control_pb2.ACTION_THROTTLE)


@dataclass
class EnforcementStats:
    applied: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    steps_failed: int = 0
    local_halts: int = 0


class Enforcer:
    """One node's enforcement state machine. Not thread-safe: one thread/loop."""

    def __init__(
        self,
        *,
        node_id: str,
        verifier: DirectiveVerifier,
        backend: GpuBackend,
        processes: ProcessController,
        sample: Callable[[], Snapshot],
        store: StateStore,
        fail_mode: str = "open",
        lease_grace_seconds: float = 30.0,
        terminate_grace_seconds: float = 10.0,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.verifier = verifier
        self._sample = sample
        self._proc = processes
        self._store = EnforcementStore(store)
        self.record = self._store.load()
        self._clock_ns = clock_ns
        self._monotonic = monotonic
        self._terminate_grace = terminate_grace_seconds
        self.lease = LeaseTracker(
            fail_mode, started_at=monotonic(), grace_seconds=lease_grace_seconds
        )
        self.holds = Holds(self.record, GpuActions(backend), processes, self._save)
        self.stats = EnforcementStats()
        self._refusal_budget = MAX_REFUSAL_RECEIPTS
        self._lease_dirty = False
        self._saved_at = monotonic()
        # (directive id, pid) -> monotonic deadline for SIGKILL.
        self._kill_due: dict[tuple[str, int], float] = {}

    # --- startup -------------------------------------------------------------------------
    def restore(self) -> list[Receipt]:
        """Re-apply what the saved record holds (call once, before the first tick)."""
        receipts: list[Receipt] = []
        now_ns, mono = self._clock_ns(), self._monotonic()
        for k in self.record.kills:
            remaining = max(0.0, (k.deadline_unix_nanos - now_ns) / 1e9)
            self._kill_due[(k.directive_id, k.pid)] = mono + remaining
        for a in self._active_sorted():
            steps = self.holds.reapply(a)
            if steps:
                receipts.append(self._receipt(a.id, a.counter, steps))
        if self.record.locally_halted and not self.lease.fail_closed:
            log.warning("%s: fail_mode is open: lifting the saved local halt", self.node_id)
            receipts.append(self._lift_local("fail_mode is open"))
        if self.record.active:
            log.warning(
                "%s: restored enforcement: %s in force",
                self.node_id,
                ", ".join(sorted(self.record.active)),
            )
        return receipts

    # --- directives ----------------------------------------------------------------------
    def handle(self, envelope: bytes) -> list[Receipt]:
        """Verify and act on one directive envelope; return receipts to report."""
        try:
            acc = self.verifier.check(envelope, now_ns=self._clock_ns(), seen=self.record)
        except Error as exc:
            return self._refused(envelope, exc)
        d = acc.directive
        if acc.duplicate:
            if d.action == control_pb2.ACTION_LEASE:
                # The last lease before a restart, resent: it still counts once.
                return self._lease(d) if self.lease.lease_id != d.id else []
            self.stats.duplicates += 1
            log.info("%s: directive %s already applied; acknowledging", self.node_id, d.id)
            return [
                self._receipt(
                    d.id, d.counter, [step("duplicate", d.id, True, "already applied, not again")]
                )
            ]
        if d.action == control_pb2.ACTION_LEASE:
            return self._lease(d)
        name = action_name(d.action)
        self.stats.applied[name] += 1
        log.warning(
            "%s: %s %s (counter %d, rule %s): %s",
            self.node_id,
            name.upper(),
            d.id,
            d.counter,
            d.rule_id or "-",
            d.reason,
        )
        self.record.accept(d.id, d.counter, ACTION_CLASS)
        if d.action == control_pb2.ACTION_RESUME and d.resumes_directive_id == LOCAL_HALT_ID:
            self._save()
            steps = [step("resume", LOCAL_HALT_ID, False, "the local halt lifts with a lease")]
        elif d.action == control_pb2.ACTION_RESUME:
            steps = self.holds.release(d.resumes_directive_id)
            if acc.approval_keyids:
                approvers = ", ".join(k[:16] for k in acc.approval_keyids)
                steps.insert(0, step("quorum", d.resumes_directive_id, True, approvers))
        elif d.action == control_pb2.ACTION_TERMINATE:
            steps = self._terminate(d)
        else:
            steps = self._hold(d)
        return [self._receipt(d.id, d.counter, steps)]

    def _hold(self, d: control_pb2.Directive) -> list[telemetry_pb2.EnforcementStep]:
        a = ActiveDirective(
            id=d.id,
            counter=d.counter,
            action=int(d.action),
            scope_kind=int(d.scope.kind),
            job_ids=list(d.scope.job_ids),
            gpu_uuids=list(d.scope.gpu_uuids),
            power_cap_watts=d.power_cap_watts,
            applied_unix_nanos=self._clock_ns(),
        )
        self.record.active[a.id] = a
        snapshot, failure = self._snapshot()
        if snapshot is None:
            self._save()
            return [failure]
        steps = self.holds.apply(a, snapshot, save=True)
        return steps or [step("match", d.id, True, "nothing in scope on this node yet")]

    def _terminate(self, d: control_pb2.Directive) -> list[telemetry_pb2.EnforcementStep]:
        snapshot, failure = self._snapshot()
        if snapshot is None:
            self._save()
            return [failure]
        found = resolve(d.scope.kind, list(d.scope.job_ids), list(d.scope.gpu_uuids), snapshot)
        grace = d.grace_seconds or self._terminate_grace
        now_ns, mono = self._clock_ns(), self._monotonic()
        pids = sorted({int(p.pid) for p in found.processes})
        deadline_ns = now_ns + int(grace * 1e9)
        for pid in pids:
            start, cgroup = self._proc.start_time(pid), self._proc.cgroup(pid)
            self.record.kills.append(
                PendingKill(d.id, d.counter, pid, start, deadline_ns, cgroup=cgroup)
            )
            self._kill_due[(d.id, pid)] = mono + grace
        self._save()
        steps = [self._proc.terminate(k.pid, k.start_time, k.cgroup) for k in self._kills_of(d.id)]
        if not steps:
            steps = [step("match", d.id, True, "no GPU process in scope on this node")]
        return steps

    def _kills_of(self, directive_id: str) -> list[PendingKill]:
        return [k for k in self.record.kills if k.directive_id == directive_id]

    def _lease(self, d: control_pb2.Directive) -> list[Receipt]:
        mono = self._monotonic()
        self.record.accept(d.id, d.counter, LEASE_CLASS)
        self.lease.renew(d, mono)
        self._lease_dirty = True
        if self.lease.may_lift(mono, locally_halted=self.record.locally_halted):
            return [self._lift_local(f"valid lease {d.id} received")]
        return []

    # --- the clock -------------------------------------------------------------------------
    def tick(self, now: float | None = None, snapshot: Snapshot | None = None) -> list[Receipt]:
        """Lease expiry, due kills and, given a snapshot, halts applied to newcomers."""
        now = self._monotonic() if now is None else now
        self._refusal_budget = MAX_REFUSAL_RECEIPTS
        receipts: list[Receipt] = []
        if self.lease.should_halt(now, locally_halted=self.record.locally_halted):
            receipts.append(self._local_halt(snapshot))
        receipts += self._due_kills(now)
        if snapshot is not None and snapshot.status == telemetry_pb2.NVML_STATUS_OK:
            drifted = self.holds.reassert(snapshot)
            for a in self._active_sorted():
                if a.action in _HOLDING:
                    steps = drifted.pop(a.id, []) + self.holds.apply(a, snapshot)
                    if steps:
                        receipts.append(self._receipt(a.id, a.counter, steps))
        if self._lease_dirty and now - self._saved_at >= LEASE_SAVE_SECONDS:
            self._save()
        return receipts

    def _local_halt(self, snapshot: Snapshot | None) -> Receipt:
        self.stats.local_halts += 1
        log.error("%s: no valid lease (fail_mode closed): halting every GPU locally", self.node_id)
        a = ActiveDirective(
            id=LOCAL_HALT_ID,
            counter=0,
            action=control_pb2.ACTION_HALT,
            scope_kind=control_pb2.SCOPE_KIND_NODE,
            applied_unix_nanos=self._clock_ns(),
        )
        self.record.active[a.id] = a
        steps = [step("lease", self.node_id, False, "no valid lease; fail_mode closed")]
        failure: telemetry_pb2.EnforcementStep | None = None
        if snapshot is None or snapshot.status != telemetry_pb2.NVML_STATUS_OK:
            snapshot, failure = self._snapshot()
        if snapshot is None:
            self._save()
            steps.append(failure or step("sample", self.node_id, False, "no snapshot"))
        else:
            steps += self.holds.apply(a, snapshot, save=True)
        return self._receipt(a.id, 0, steps)

    def _lift_local(self, why: str) -> Receipt:
        log.warning("%s: lifting the local halt: %s", self.node_id, why)
        steps = [step("lease", self.node_id, True, why), *self.holds.release(LOCAL_HALT_ID)]
        return self._receipt(LOCAL_HALT_ID, 0, steps)

    def _due_kills(self, now: float) -> list[Receipt]:
        due = [
            k for k in self.record.kills if self._kill_due.get((k.directive_id, k.pid), 0) <= now
        ]
        if not due:
            return []
        by_directive: dict[tuple[str, int], list[telemetry_pb2.EnforcementStep]] = {}
        for k in due:
            if self._proc.alive(k.pid, k.start_time):
                s = self._proc.kill(k.pid, k.start_time, k.cgroup)
            else:
                s = step("kill_process", str(k.pid), True, "exited after SIGTERM")
            by_directive.setdefault((k.directive_id, k.directive_counter), []).append(s)
            self._kill_due.pop((k.directive_id, k.pid), None)
        self.record.kills = [k for k in self.record.kills if k not in due]
        self._save()
        return [self._receipt(i, c, steps) for (i, c), steps in by_directive.items()]

    # --- report -----------------------------------------------------------------------------
    def state(self) -> telemetry_pb2.EnforcementState:
        now = self._monotonic()
        return telemetry_pb2.EnforcementState(
            active_directive_ids=[a.id for a in self._active_sorted()],
            highest_directive_counter=self.record.highest(ACTION_CLASS),
            fail_mode=self.lease.fail_mode,
            lease_valid=self.lease.leased and self.lease.valid(now),
            locally_halted=self.record.locally_halted,
            halted_gpu_uuids=self.record.halted_gpus(),
        )

    # --- helpers ------------------------------------------------------------------------------
    def _active_sorted(self) -> list[ActiveDirective]:
        return sorted(self.record.active.values(), key=lambda a: (a.counter, a.id))

    def _snapshot(self) -> tuple[Snapshot | None, telemetry_pb2.EnforcementStep]:
        try:
            snap = self._sample()
        except BackendError as exc:
            return None, step("sample", self.node_id, False, f"GPUs unreadable: {exc}")
        if snap.status != telemetry_pb2.NVML_STATUS_OK:
            return None, step("sample", self.node_id, False, f"NVML: {snap.error or snap.status}")
        return snap, step("sample", self.node_id, True)

    def _save(self) -> None:
        self._store.save(self.record)
        self._lease_dirty = False
        self._saved_at = self._monotonic()

    def _receipt(
        self, directive_id: str, counter: int, steps: list[telemetry_pb2.EnforcementStep]
    ) -> Receipt:
        failed = sum(1 for s in steps if not s.ok)
        self.stats.steps_failed += failed
        if failed:
            log.error("%s: %s: %d step(s) failed", self.node_id, directive_id, failed)
        return Receipt(
            directive_id=directive_id,
            directive_counter=counter,
            enforced_unix_nanos=self._clock_ns(),
            steps=steps,
        )

    def _refused(self, envelope: bytes, exc: Error) -> list[Receipt]:
        if self._refusal_budget <= 0:
            return []
        self._refusal_budget -= 1
        directive_id, counter = "", 0
        if isinstance(exc, DirectiveError | QuorumError):
            # The signature verified: the id and counter are the collector's.
            try:
                env = dsse.open_envelope(envelope)
                d = dsse.parse_message(control_pb2.Directive, env.payload)
                directive_id, counter = d.id[:128], d.counter
            except Error:
                pass
        return [
            Receipt(
                directive_id=directive_id,
                directive_counter=counter,
                enforced_unix_nanos=self._clock_ns(),
                refused_reason=exc.reason,
                steps=[step("verify", directive_id, False, str(exc))],
            )
        ]
