"""Issue directives: build, seal with the collector key, log, then push.

Every directive is sealed (``dsse.seal``), appended to the ledger, and only
once committed added to the in-force set and pushed down the stream of every
connected node in scope. Nodes that connect later receive, through
``on_bind``, everything still in force, in counter order.

Counters are strictly increasing within a class: one for LEASE, one for
every other action, both continued from the ledger after a restart
(``restore``). An in-force halt resent to a reconnecting agent therefore
never looks stale next to a newer lease.

A RESUME lifts one directive (HALT, THROTTLE or TERMINATE); once a quorum
lifted a rule's directive, the same rule firing again for the same targets
is *acknowledged*: it is logged and counted, but issues nothing (the
authorities looked at that crossing and let the work go on). Manual halts
are never acknowledged away.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from collector.nodes.sessions import Session, Sessions, directive_frame
from collector.stop.quorum import ApprovalSet
from collector.stop.scoping import describe, names_node, target_key
from collector.store.ledger import Entry, Ledger, LedgerEntry
from protos import dsse
from protos.computewatch.v1 import control_pb2
from protos.errors import LogError, VerificationError
from protos.keys import PrivateKey

log = logging.getLogger(__name__)

LEASE_CLASS = "lease"
ACTION_CLASS = "action"
MANUAL_RULE = "manual"
# A halt stays until resumed; the not-after bound only retires forgotten ones.
DEFAULT_VALIDITY_SECONDS = 30 * 86400.0
# Directives a RESUME may lift.
RESUMABLE = frozenset(
    {control_pb2.ACTION_HALT, control_pb2.ACTION_THROTTLE, control_pb2.ACTION_TERMINATE}
)
_RESEND_RESUME_SECONDS = 5.0


def action_name(action: int) -> str:
    return control_pb2.Action.Name(action).removeprefix("ACTION_").lower()


def consume_outcome(fut: asyncio.Future[control_pb2.Directive]) -> None:
    """Done callback for an issue nobody awaits: the book already logged a failure."""
    if not fut.cancelled():
        fut.exception()


def counter_class(action: int) -> str:
    return LEASE_CLASS if action == control_pb2.ACTION_LEASE else ACTION_CLASS


class Counters:
    """The last counter issued in each class; ``next`` is strictly increasing."""

    def __init__(self) -> None:
        self._last = {LEASE_CLASS: 0, ACTION_CLASS: 0}

    def observe(self, action: int, counter: int) -> None:
        cls = counter_class(action)
        self._last[cls] = max(self._last[cls], counter)

    def next(self, action: int) -> int:
        cls = counter_class(action)
        self._last[cls] += 1
        return self._last[cls]

    def last(self, action: int) -> int:
        return self._last[counter_class(action)]


@dataclass
class DirectiveRecord:
    """A committed non-lease directive and what happened to it since."""

    directive: control_pb2.Directive
    envelope: bytes
    log_index: int
    resumed_by: str = ""
    # Approvals toward lifting it (resumable actions only).
    approvals: ApprovalSet | None = None
    resuming: bool = False
    # node id -> unix seconds we last re-sent its RESUME to that node.
    resent: dict[str, float] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.directive.id

    @property
    def action(self) -> int:
        return self.directive.action

    def in_force(self, now_ns: int) -> bool:
        return (
            self.directive.action in RESUMABLE
            and not self.resumed_by
            and self.directive.not_after_unix_nanos > now_ns
        )

    def rule_key(self) -> tuple[str, int, tuple[int, tuple[str, ...]]]:
        d = self.directive
        return d.rule_id, d.action, target_key(d.scope)


@dataclass
class BookStats:
    issued: Counter[str] = field(default_factory=Counter)
    write_errors: int = 0
    pushed: int = 0
    resent: int = 0
    acknowledged: int = 0
    duplicates: int = 0


class DirectiveBook:
    """Issues directives and holds every non-lease directive since the ledger began."""

    def __init__(
        self,
        key: PrivateKey,
        ledger: Ledger,
        sessions: Sessions,
        *,
        lease_seconds: float,
        validity_seconds: float = DEFAULT_VALIDITY_SECONDS,
        clock_ns: Callable[[], int] = time.time_ns,
        cluster: str = "default",
    ) -> None:
        self._key = key
        # Stamped on every directive's scope: agents refuse another cluster's.
        self.cluster = cluster
        self._ledger = ledger
        self._sessions = sessions
        self._lease_seconds = lease_seconds
        self._validity = validity_seconds
        self._clock_ns = clock_ns
        self.counters = Counters()
        self.stats = BookStats()
        self._records: dict[str, DirectiveRecord] = {}
        # (rule, action, targets) -> id of the directive issued for it (in flight or in force)
        self._by_rule: dict[tuple[str, int, tuple[int, tuple[str, ...]]], str] = {}
        # (rule, targets) lifted by a quorum: later firings are acknowledged, not re-issued.
        self._acknowledged: set[tuple[str, tuple[int, tuple[str, ...]]]] = set()
        self._listeners: list[Callable[[DirectiveRecord], None]] = []

    # -- reading ---------------------------------------------------------------
    def get(self, directive_id: str) -> DirectiveRecord | None:
        return self._records.get(directive_id)

    def records(self) -> list[DirectiveRecord]:
        """Every non-lease directive, in log order."""
        return sorted(self._records.values(), key=lambda r: r.log_index)

    def in_force(self) -> list[DirectiveRecord]:
        now = self._clock_ns()
        return [r for r in self.records() if r.in_force(now)]

    def add_commit_listener(self, callback: Callable[[DirectiveRecord], None]) -> None:
        """``callback(record)`` once a non-lease directive is committed (before the push)."""
        self._listeners.append(callback)

    def pending_for_rule(self, rule_id: str, action: int, scope: control_pb2.Scope) -> str | None:
        """Id of a directive already issued (not lifted) for this rule and these targets."""
        directive_id = self._by_rule.get((rule_id, action, target_key(scope)))
        if directive_id is None:
            return None
        record = self._records.get(directive_id)
        if record is not None and not record.in_force(self._clock_ns()):
            return None  # expired
        return directive_id

    def acknowledged(self, rule_id: str, scope: control_pb2.Scope) -> bool:
        """Whether a quorum already lifted this rule's directive for these targets."""
        return (rule_id, target_key(scope)) in self._acknowledged

    # -- issuing ---------------------------------------------------------------
    def issue(
        self,
        action: control_pb2.Action,
        scope: control_pb2.Scope,
        *,
        rule_id: str = "",
        evidence: control_pb2.Evidence | None = None,
        reason: str = "",
        power_cap_watts: float = 0.0,
        grace_seconds: float = 0.0,
        resumes: str = "",
        approvals: Iterable[bytes] = (),
    ) -> asyncio.Future[control_pb2.Directive]:
        """Seal and log a directive; the future resolves once committed and pushed.

        Counters are taken in call order and pushes happen in commit order,
        which is log order, so each node sees counters increase.
        """
        now = self._clock_ns()
        # A copy of every target (actor_ids included), stamped with this cluster.
        stamped = control_pb2.Scope()
        stamped.CopyFrom(scope)
        stamped.cluster = self.cluster
        scope = stamped
        validity = self._lease_seconds if action == control_pb2.ACTION_LEASE else self._validity
        directive = control_pb2.Directive(
            id=uuid.uuid4().hex,
            counter=self.counters.next(action),
            issued_unix_nanos=now,
            not_after_unix_nanos=now + int(validity * 1e9),
            scope=scope,
            action=action,
            rule_id=rule_id,
            evidence=evidence,
            reason=reason,
            power_cap_watts=power_cap_watts,
            grace_seconds=grace_seconds,
            resumes_directive_id=resumes,
            approvals=list(approvals),
        )
        if rule_id and rule_id != MANUAL_RULE and action in RESUMABLE:
            self._by_rule[(rule_id, action, target_key(scope))] = directive.id
        data = dsse.seal(directive, self._key)
        out: asyncio.Future[control_pb2.Directive] = asyncio.get_running_loop().create_future()
        committed = self._ledger.append(Entry(data, dsse.DIRECTIVE_TYPE))
        committed.add_done_callback(functools.partial(self._committed, directive, data, out))
        return out

    def _committed(
        self,
        directive: control_pb2.Directive,
        data: bytes,
        out: asyncio.Future[control_pb2.Directive],
        fut: asyncio.Future[int],
    ) -> None:
        exc = fut.exception() if not fut.cancelled() else LogError("ledger append cancelled")
        if exc is not None:
            self.stats.write_errors += 1
            key = (directive.rule_id, directive.action, target_key(directive.scope))
            if self._by_rule.get(key) == directive.id:
                del self._by_rule[key]
            log.error(
                "%s %s not issued: the ledger append failed: %s",
                action_name(directive.action),
                directive.id,
                exc,
            )
            if not out.done():
                out.set_exception(exc if isinstance(exc, LogError) else LogError(str(exc)))
            return
        self._apply(directive, data, fut.result())
        self.stats.issued[action_name(directive.action)] += 1
        if directive.action != control_pb2.ACTION_LEASE:
            log.info(
                "issued %s %s #%d to %s (rule %s): %s",
                action_name(directive.action),
                directive.id,
                directive.counter,
                describe(directive.scope),
                directive.rule_id or "-",
                directive.reason,
            )
        self._push(directive.scope, data)
        if not out.done():
            out.set_result(directive)

    def _apply(self, directive: control_pb2.Directive, data: bytes, index: int) -> None:
        """Record a committed directive (at issue time and when restoring)."""
        self.counters.observe(directive.action, directive.counter)
        if directive.action == control_pb2.ACTION_LEASE:
            return
        record = DirectiveRecord(directive, data, index)
        if directive.action in RESUMABLE:
            record.approvals = ApprovalSet(directive.id)
        self._records[directive.id] = record
        if directive.action == control_pb2.ACTION_RESUME:
            lifted = self._records.get(directive.resumes_directive_id)
            if lifted is not None:
                lifted.resumed_by = directive.id
                lifted.resuming = False
                key = lifted.rule_key()
                if self._by_rule.get(key) == lifted.id:
                    del self._by_rule[key]
                if lifted.directive.rule_id and lifted.directive.rule_id != MANUAL_RULE:
                    self._acknowledged.add((key[0], key[2]))
        for callback in self._listeners:
            callback(record)

    def _push(self, scope: control_pb2.Scope, data: bytes) -> None:
        """Queue the directive on every stream in scope: serialised once, the
        same frame on each."""
        if scope.kind == control_pb2.SCOPE_KIND_CLUSTER:
            nodes: Iterable[str] = self._sessions.connected_nodes()
        else:
            nodes = scope.node_ids
        frame = directive_frame(data)
        for node_id in nodes:
            for session in self._sessions.for_node(node_id):
                if session.send(frame):
                    self.stats.pushed += 1

    # -- sessions --------------------------------------------------------------
    def on_bind(self, session: Session) -> None:
        """A node connected: send it everything still in force, in counter order."""
        node_id = session.node_id
        if node_id is None:
            return
        records = sorted(self.in_force(), key=lambda r: r.directive.counter)
        for record in records:
            if names_node(record.directive.scope, node_id):
                session.send_directive(record.envelope)
                self.stats.resent += 1

    def reconcile(self, node_id: str, active_ids: Iterable[str], now: float) -> None:
        """Re-send the RESUME of any lifted directive the node still reports active.

        A node that was away when the RESUME went out would otherwise stay
        halted; at most once per ``_RESEND_RESUME_SECONDS`` per node.
        """
        for directive_id in active_ids:
            record = self._records.get(directive_id)
            if record is None or not record.resumed_by:
                continue
            resume = self._records.get(record.resumed_by)
            if resume is None or now - record.resent.get(node_id, 0.0) < _RESEND_RESUME_SECONDS:
                continue
            record.resent[node_id] = now
            for session in self._sessions.for_node(node_id):
                if session.send_directive(resume.envelope):
                    self.stats.resent += 1

    # -- restart -----------------------------------------------------------------
    def restore(self, entry: LedgerEntry) -> None:
        """Replay one committed directive entry from the ledger (at start-up)."""
        try:
            env = dsse.open_envelope(entry.data)
            directive = dsse.parse_message(control_pb2.Directive, env.payload)
        except VerificationError as exc:
            log.warning("ledger entry %d is not a readable directive: %s", entry.index, exc)
            return
        if directive.action in RESUMABLE and directive.rule_id != MANUAL_RULE:
            self._by_rule[(directive.rule_id, directive.action, target_key(directive.scope))] = (
                directive.id
            )
        self._apply(directive, entry.data, entry.index)
