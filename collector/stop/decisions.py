"""Each tick: snapshot -> rule engine -> directives, alerts and records.

A ``fire`` whose action is halt, throttle or terminate issues a directive at
once, scoped to the decision's targets (a job rule with ``lineage:
descendants`` names the job and every descendant). Record and alert
decisions, clears and unknowns are logged and counted
(``computewatch_rule_decisions_total{rule,kind,action}``); no directive is
ever lifted by a rule clearing: that takes a quorum.

Unknowns of keys no report has reached yet (``Decision.awaiting_data``:
start-up, an enrolled node not heard from) are counted the same way but
logged as one line per tick ("no data yet: N rule checks wait for a first
report (...)", ``awaiting_summary``), each at debug; the engine turns them
into ordinary warnings when reports come and the value stays unknown, or
after its grace.

A firing for which a directive of the same rule, action and targets is
already in force issues nothing new; neither does one a quorum already
acknowledged by lifting (see ``collector.stop.directives``).

The cyclic garbage collector is paused while the snapshot is built and
evaluated. A snapshot is tens of thousands of short-lived, acyclic dicts and
tuples (1,000 nodes x 8 GPUs: ~40k); with the collector on, those alive
during the build are promoted and set off full collections of the whole
heap, which on a collector holding 1,000 streams took more CPU than the
evaluation itself (``bench/README.md``, halt latency). Paused, they are
freed by reference counting as soon as the evaluation drops them.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from collector.accounting.aggregate import Aggregator
from collector.rules import Action, Decision, DecisionKind, RuleEngine
from collector.stop.directives import DirectiveBook, consume_outcome
from collector.stop.scoping import ScopeResolver, describe
from protos.computewatch.v1 import control_pb2

log = logging.getLogger(__name__)

DEFAULT_TERMINATE_GRACE_SECONDS = 30.0

_DIRECTIVE_ACTIONS: dict[Action, control_pb2.Action] = {
    Action.HALT: control_pb2.ACTION_HALT,
    Action.THROTTLE: control_pb2.ACTION_THROTTLE,
    Action.TERMINATE: control_pb2.ACTION_TERMINATE,
}


@dataclass
class DecisionStats:
    # (rule, kind, action) -> count
    decisions: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    directives: int = 0
    suppressed: int = 0
    acknowledged: int = 0


def evidence_for(decision: Decision) -> control_pb2.Evidence:
    evidence = control_pb2.Evidence(
        metric=decision.metric,
        threshold=decision.threshold,
        unit=decision.unit,
        comparison=str(decision.comparison),
        log_indices=[i for i in decision.log_indices if i >= 0],
    )
    if decision.value is not None and math.isfinite(decision.value):
        evidence.measured_value = decision.value
    if decision.rule.bounded:
        evidence.bound = str(decision.rule.bound)
        evidence.method = decision.method
        if decision.estimate is not None and math.isfinite(decision.estimate):
            evidence.estimate = decision.estimate
        if decision.upper_bound is not None and math.isfinite(decision.upper_bound):
            evidence.upper_bound = decision.upper_bound
        unmeasured = decision.unmeasured_gpu_seconds
        if unmeasured is not None and math.isfinite(unmeasured):
            evidence.unmeasured_gpu_seconds = unmeasured
    return evidence


def awaiting_summary(decisions: list[Decision]) -> str | None:
    """One line for the unknowns of keys no report has reached yet, e.g. at
    start-up: "no data yet: 33 rule checks wait for a first report
    (op-gpu-lost: 16 nodes; op-node-silent: 16 nodes; ...)"; None if none."""
    per_rule: Counter[tuple[str, str]] = Counter(
        (d.rule.id, str(d.scope))
        for d in decisions
        if d.kind is DecisionKind.UNKNOWN and d.awaiting_data
    )
    if not per_rule:
        return None
    total = sum(per_rule.values())
    parts = "; ".join(
        f"{rule_id}: {n} {scope}{'s' if n > 1 else ''}"
        for (rule_id, scope), n in sorted(per_rule.items())
    )
    checks = "rule check waits" if total == 1 else "rule checks wait"
    return f"no data yet: {total} {checks} for a first report ({parts})"


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a short, allocation-heavy block
    (it stays off if it was off; reference counting still frees everything)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class DecisionHook:
    """The collector tick hook that runs the rule engine and acts on it."""

    def __init__(
        self,
        engine: RuleEngine,
        aggregator: Aggregator,
        book: DirectiveBook,
        resolver: ScopeResolver,
        *,
        terminate_grace_seconds: float = DEFAULT_TERMINATE_GRACE_SECONDS,
    ) -> None:
        self.engine = engine
        self._agg = aggregator
        self._book = book
        self._resolver = resolver
        self._grace = terminate_grace_seconds
        self.stats = DecisionStats()

    def __call__(self, now: float) -> None:
        if not self.engine.rules:
            return
        with gc_paused():
            decisions = self.engine.evaluate(self._agg.snapshot(now, self.engine.scopes))
        for decision in decisions:
            self.handle(decision)
        waiting = awaiting_summary(decisions)
        if waiting:
            log.info("%s", waiting)

    def handle(self, decision: Decision) -> None:
        rule = decision.rule
        self.stats.decisions[(rule.id, str(decision.kind), str(rule.action))] += 1
        if decision.kind is DecisionKind.UNKNOWN and decision.awaiting_data:
            # Start-up: said once per tick for all keys (awaiting_summary).
            log.debug("rule %s: %s", rule.id, decision.reason)
            return
        if decision.kind is DecisionKind.UNKNOWN:
            log.warning("rule %s: %s", rule.id, decision.reason)
            return
        if decision.kind is DecisionKind.POSSIBLE:
            # The interval straddles the line: shown (status, metrics, alert),
            # never acted on; the rule acts when its own bound crosses.
            log.warning("rule %s possibly crossed: %s", rule.id, decision.reason)
            return
        if decision.kind is DecisionKind.CLEAR:
            log.info("rule %s cleared: %s", rule.id, decision.reason)
            return
        action = _DIRECTIVE_ACTIONS.get(rule.action)
        if action is None:
            level = logging.WARNING if rule.action is Action.ALERT else logging.INFO
            log.log(level, "rule %s fired (%s): %s", rule.id, rule.action, decision.reason)
            return
        scope = self._resolver.for_targets(decision.scope, decision.targets)
        existing = self._book.pending_for_rule(rule.id, action, scope)
        if existing is not None:
            self.stats.suppressed += 1
            log.info(
                "rule %s fired again; %s already in force for %s",
                rule.id,
                existing,
                describe(scope),
            )
            return
        if self._book.acknowledged(rule.id, scope):
            self.stats.acknowledged += 1
            log.warning(
                "rule %s fired for %s, which a quorum already let resume; not halting again: %s",
                rule.id,
                describe(scope),
                decision.reason,
            )
            return
        fut = self._book.issue(
            action,
            scope,
            rule_id=rule.id,
            evidence=evidence_for(decision),
            reason=decision.reason,
            power_cap_watts=rule.power_cap_watts or 0.0,
            grace_seconds=self._grace if action == control_pb2.ACTION_TERMINATE else 0.0,
        )
        fut.add_done_callback(consume_outcome)
        self.stats.directives += 1
