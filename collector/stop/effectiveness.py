"""Is a directive *effective*? Only later telemetry can say.

A directive is effective when, for every node in its scope, a report
committed after the directive shows its receipt (an accepted
``EnforcementReceipt``, or the id among the node's active directives) and a
report from then on shows the targeted GPUs in the required state:

- HALT: compute mode PROHIBITED and every activity figure the GPU reports
  (utilization, SM, tensor) below 5 %; a GPU with no activity figure is
  unknown, which is not effective;
- THROTTLE: power limit at or below the cap (1 W tolerance), or, when the
  limit is not reported, power draw at or below it;
- TERMINATE: no process of the targeted jobs (JOB scope) or on the targeted
  GPUs remains;
- RESUME: the lifted directive no longer among the node's active ones.

A GPU that fell off the bus (health LOST) runs nothing and counts as
enforced; one that cannot be read (health UNREADABLE, or ERROR from older
agents) is unknown and does not. A reading that failed (a ``field_errors``
entry) leaves that field absent: a HALT needs the compute mode and an
activity figure, so a GPU missing either is not shown effective.
Targeted GPUs: every GPU of the node (CLUSTER, NODE), the listed uuids (GPU);
for JOB scope the GPUs that ran the jobs when the directive was issued
plus any that show their processes now, and for ACTOR scope the same for the
actor's jobs and processes (``GpuProcess.actor``); a node where the actor
runs nothing only has to show the receipt.

Reports are read back from the ledger (only while something is pending, and
only for nodes in scope). Past ``timeout_seconds`` without becoming
effective, a directive raises the not-effective alert: one log line naming
what is missing, and the ``computewatch_directives_not_effective`` gauge.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from collector.accounting.aggregate import Aggregator
from collector.stop import mig
from collector.stop.directives import DirectiveRecord, action_name
from collector.stop.scoping import describe
from collector.store.ledger import Ledger, LedgerEntry
from protos import dsse
from protos.actors import actor_key
from protos.computewatch.v1 import control_pb2, telemetry_pb2
from protos.errors import VerificationError
from protos.jobs import job_key

log = logging.getLogger(__name__)

ACTIVITY_LIMIT_PERCENT = 5.0
POWER_TOLERANCE_WATTS = 1.0
TRACKED = frozenset(
    {
        control_pb2.ACTION_HALT,
        control_pb2.ACTION_THROTTLE,
        control_pb2.ACTION_TERMINATE,
        control_pb2.ACTION_RESUME,
    }
)
_MAX_ENTRIES_PER_TICK = 50_000


@dataclass
class _NodeProgress:
    gpus_at_issue: frozenset[str] = frozenset()
    receipt: bool = False
    refused: str = ""
    satisfied: bool = False
    last_index: int = -1
    detail: str = "no report since the directive"


@dataclass
class _Tracking:
    directive: control_pb2.Directive
    log_index: int
    deadline: float
    nodes: dict[str, _NodeProgress]
    job_ids: frozenset[str] = frozenset()
    alerted: bool = False
    # ACTOR scope: the actors whose processes it holds.
    actor_ids: frozenset[str] = frozenset()
    # How many of ``nodes`` are satisfied now: kept up to date by ``_apply``
    # so a report costs O(1) here, not a rescan of every node in scope.
    satisfied: int = 0


@dataclass(frozen=True)
class Progress:
    """What telemetry has shown about one directive so far."""

    effective_unix_nanos: int
    receipt_node_ids: tuple[str, ...]
    not_effective: bool


@dataclass
class EffectStats:
    effective: int = 0
    alerts: int = 0
    seconds_to_effective_sum: float = 0.0


_ACTIVITY_FIGURES = ("utilization_gpu_percent", "sm_activity_percent", "tensor_activity_percent")


def _activity_ok(gpu: telemetry_pb2.GpuSample) -> bool:
    """Some activity figure is reported, and every one reported is below the limit."""
    known = False
    for name in _ACTIVITY_FIGURES:
        if gpu.HasField(name):
            if not getattr(gpu, name) < ACTIVITY_LIMIT_PERCENT:
                return False
            known = True
    return known


def _gpu_ok(action: int, gpu: telemetry_pb2.GpuSample, cap: float) -> bool:
    if gpu.health == telemetry_pb2.GPU_HEALTH_LOST:
        return True  # off the bus: runs nothing (the gpus_lost rule reports it)
    if gpu.health != telemetry_pb2.GPU_HEALTH_OK:
        return False  # unreadable: unknown is not enforced
    if action == control_pb2.ACTION_HALT:
        return gpu.compute_mode == telemetry_pb2.COMPUTE_MODE_PROHIBITED and _activity_ok(gpu)
    if action == control_pb2.ACTION_THROTTLE:
        if gpu.HasField("power_limit_watts"):
            return gpu.power_limit_watts <= cap + POWER_TOLERANCE_WATTS
        return gpu.HasField("power_watts") and gpu.power_watts <= cap + POWER_TOLERANCE_WATTS
    return True


class EffectTracker:
    """Follows directives until telemetry shows them effective."""

    def __init__(
        self,
        ledger: Ledger,
        aggregator: Aggregator,
        *,
        timeout_seconds: float,
        max_entries_per_tick: int = _MAX_ENTRIES_PER_TICK,
    ) -> None:
        self._ledger = ledger
        self._agg = aggregator
        self._timeout = timeout_seconds
        self._max_entries = max_entries_per_tick
        self._pending: dict[str, _Tracking] = {}
        self._done: dict[str, Progress] = {}
        self._receipts: dict[str, set[str]] = {}
        # Nodes in scope of any pending directive; rebuilt only when the
        # pending set changes (None: to rebuild), not on every tick.
        self._wanted: frozenset[str] | None = None
        self._cursor = ledger.size
        self.stats = EffectStats()

    # -- registration ------------------------------------------------------------
    def track(self, record: DirectiveRecord, now: float, *, from_index: int | None = None) -> None:
        """Follow ``record`` (a committed directive) from its log index on.

        ``from_index``: read reports from this index instead (a directive
        restored after a restart is judged on reports from then on).
        """
        d = record.directive
        if d.action not in TRACKED:
            return
        jobs = frozenset(d.scope.job_ids) if d.scope.kind == control_pb2.SCOPE_KIND_JOB else None
        actors = frozenset(d.scope.actor_ids)
        if d.scope.kind == control_pb2.SCOPE_KIND_ACTOR:
            # The actor's jobs at issue: their GPUs must show the hold.
            of = self._agg.actors.actor_of
            jobs = frozenset(j for j in list(self._agg.jobs) if of(j) in actors)
        nodes: dict[str, _NodeProgress] = {}
        for node_id in d.scope.node_ids:
            at_issue: frozenset[str] = frozenset()
            state = self._agg.nodes.get(node_id)
            if jobs is not None and state is not None:
                at_issue = frozenset(g.uuid for g in state.gpus if jobs.intersection(g.jobs))
            nodes[node_id] = _NodeProgress(gpus_at_issue=at_issue)
        start = record.log_index + 1 if from_index is None else max(from_index, 0)
        self._pending[d.id] = _Tracking(
            d,
            start - 1,
            now + self._timeout,
            nodes,
            (jobs or frozenset()) if d.scope.kind == control_pb2.SCOPE_KIND_JOB else frozenset(),
            actor_ids=actors if d.scope.kind == control_pb2.SCOPE_KIND_ACTOR else frozenset(),
        )
        self._receipts.setdefault(d.id, set())
        self._wanted = None
        self._cursor = min(self._cursor, start)
        if d.action == control_pb2.ACTION_RESUME:
            # The RESUME supersedes the lifted directive's tracking.
            lifted = self._pending.pop(d.resumes_directive_id, None)
            if lifted is not None:
                self._wanted = None
                self._done[lifted.directive.id] = Progress(
                    0, tuple(sorted(self._receipts.get(lifted.directive.id, ()))), False
                )
        if not nodes:
            self._finish(d.id, d.issued_unix_nanos)

    # -- reading -------------------------------------------------------------------
    def tracks(self, directive_id: str) -> bool:
        """True while ``directive_id`` is followed, or once it was judged."""
        return directive_id in self._pending or directive_id in self._done

    def progress(self, directive_id: str) -> Progress:
        done = self._done.get(directive_id)
        if done is not None:
            return done
        t = self._pending.get(directive_id)
        receipts = tuple(sorted(self._receipts.get(directive_id, ())))
        return Progress(0, receipts, t is not None and t.alerted)

    def not_effective(self) -> int:
        """Directives past their timeout and still not effective."""
        return sum(t.alerted for t in list(self._pending.values()))  # metrics thread

    def pending(self) -> int:
        return len(self._pending)

    # -- each tick -------------------------------------------------------------------
    def tick(self, now: float) -> None:
        size = self._ledger.size
        if not self._pending:
            self._cursor = size
            return
        if self._cursor < size:
            end = min(size, self._cursor + self._max_entries)
            if self._wanted is None:
                self._wanted = frozenset(n for t in self._pending.values() for n in t.nodes)
            self._consume(self._ledger.entries(self._cursor, end), self._wanted)
            self._cursor = end
        for t in list(self._pending.values()):
            if not t.alerted and now >= t.deadline:
                self._alert(t, now)

    def _consume(self, entries: Iterable[LedgerEntry], wanted: frozenset[str]) -> None:
        for entry in entries:
            if entry.payload_type != dsse.REPORT_TYPE or entry.node_id not in wanted:
                continue
            try:
                env = dsse.open_envelope(entry.data)
                report = dsse.parse_message(telemetry_pb2.NodeReport, env.payload)
            except VerificationError as exc:
                log.warning("ledger entry %d does not parse: %s", entry.index, exc)
                continue
            for t in list(self._pending.values()):
                if entry.index > t.log_index and entry.node_id in t.nodes:
                    self._apply(t, entry, report)

    def _apply(self, t: _Tracking, entry: LedgerEntry, report: telemetry_pb2.NodeReport) -> None:
        d = t.directive
        p = t.nodes[report.node_id]
        if entry.index <= p.last_index:
            return
        p.last_index = entry.index
        for receipt in report.receipts:
            if receipt.directive_id != d.id:
                continue
            if receipt.refused_reason:
                p.receipt, p.refused = False, receipt.refused_reason
                log.warning(
                    "node %s refused %s %s: %s",
                    report.node_id,
                    action_name(d.action),
                    d.id,
                    receipt.refused_reason,
                )
            else:
                p.receipt, p.refused = True, ""
                self._receipts[d.id].add(report.node_id)
        active = report.enforcement.active_directive_ids
        if d.action != control_pb2.ACTION_RESUME and d.id in active:
            p.receipt = True
        was = p.satisfied
        p.satisfied, p.detail = self._state(t, p, report)
        t.satisfied += int(p.satisfied) - int(was)
        if t.satisfied == len(t.nodes):
            self._finish(d.id, entry.received_unix_nanos)

    def _state(
        self, t: _Tracking, p: _NodeProgress, report: telemetry_pb2.NodeReport
    ) -> tuple[bool, str]:
        d = t.directive
        if not p.receipt:
            return False, f"refused: {p.refused}" if p.refused else "no receipt yet"
        if d.action == control_pb2.ACTION_RESUME:
            if d.resumes_directive_id in report.enforcement.active_directive_ids:
                return False, f"still enforces {d.resumes_directive_id}"
            return True, ""
        if d.action == control_pb2.ACTION_TERMINATE:
            return self._terminated(t, p, report)
        targets = mig.judged(d.action, d.scope.kind, self._targets(t, p, report), report.gpus)
        bad = [
            g.uuid
            for g in report.gpus
            if g.uuid in targets and not _gpu_ok(d.action, g, d.power_cap_watts)
        ]
        missing = targets - {g.uuid for g in report.gpus}
        if bad or missing:
            what = (
                "still active or not prohibited"
                if d.action == control_pb2.ACTION_HALT
                else "above the cap"
            )
            return False, f"GPUs {', '.join(sorted(bad + list(missing))[:8])} {what}"
        return True, ""

    def _targets(
        self, t: _Tracking, p: _NodeProgress, report: telemetry_pb2.NodeReport
    ) -> set[str]:
        kind = t.directive.scope.kind
        if kind == control_pb2.SCOPE_KIND_GPU:
            wanted = set(t.directive.scope.gpu_uuids)
            return {g.uuid for g in report.gpus if g.uuid in wanted}
        if kind == control_pb2.SCOPE_KIND_JOB:
            now_running = {
                g.uuid
                for g in report.gpus
                if any(job_key(pr.job_id, report.node_id) in t.job_ids for pr in g.processes)
            }
            return set(p.gpus_at_issue) | now_running
        if kind == control_pb2.SCOPE_KIND_ACTOR:
            held = {
                g.uuid
                for g in report.gpus
                if any(actor_key(pr.actor) in t.actor_ids for pr in g.processes)
            }
            return set(p.gpus_at_issue) | held
        return {g.uuid for g in report.gpus}

    def _terminated(
        self, t: _Tracking, p: _NodeProgress, report: telemetry_pb2.NodeReport
    ) -> tuple[bool, str]:
        targets = self._targets(t, p, report)
        left = 0
        for g in report.gpus:
            if t.actor_ids:
                left += sum(actor_key(pr.actor) in t.actor_ids for pr in g.processes)
                continue
            if t.job_ids:
                left += sum(job_key(pr.job_id, report.node_id) in t.job_ids for pr in g.processes)
                continue
            if g.uuid in targets:
                if not g.processes_known:
                    return False, f"GPU {g.uuid}: processes unknown"
                left += len(g.processes)
        return (True, "") if left == 0 else (False, f"{left} processes remain")

    def _finish(self, directive_id: str, effective_ns: int) -> None:
        t = self._pending.pop(directive_id, None)
        if t is None:
            return
        self._wanted = None
        seconds = max(0.0, effective_ns / 1e9 - t.directive.issued_unix_nanos / 1e9)
        self.stats.effective += 1
        self.stats.seconds_to_effective_sum += seconds
        self._done[directive_id] = Progress(
            effective_ns, tuple(sorted(self._receipts.get(directive_id, ()))), False
        )
        log.info(
            "%s %s is effective on %d nodes after %.3f s%s",
            action_name(t.directive.action),
            directive_id,
            len(t.nodes),
            seconds,
            " (after the not-effective alert)" if t.alerted else "",
        )

    def _alert(self, t: _Tracking, now: float) -> None:
        t.alerted = True
        self.stats.alerts += 1
        lagging = {n: p.detail for n, p in t.nodes.items() if not p.satisfied}
        silent = [n for n in lagging if self._silent(n, now)]
        sample = "; ".join(f"{n}: {why}" for n, why in sorted(lagging.items())[:8])
        log.warning(
            "ALERT directive not effective: %s %s (%s) after %.0f s: %d of %d nodes not"
            " there (%d silent): %s",
            action_name(t.directive.action),
            t.directive.id,
            describe(t.directive.scope),
            self._timeout,
            len(lagging),
            len(t.nodes),
            len(silent),
            sample,
        )

    def _silent(self, node_id: str, now: float) -> bool:
        state = self._agg.nodes.get(node_id)
        return state is None or not state.reports or self._agg.is_silent(state, now)


def tracker_listener(
    tracker: EffectTracker, clock: Callable[[], float]
) -> Callable[[DirectiveRecord], None]:
    """A ``DirectiveBook`` commit listener that starts tracking each directive."""

    def listen(record: DirectiveRecord) -> None:
        tracker.track(record, clock())

    return listen
