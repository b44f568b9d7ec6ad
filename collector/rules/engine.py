"""Evaluate rules against each tick's snapshot; remember state between ticks.

Per (rule, key) the engine tracks: since when the condition has held (for
``for`` durations), whether the rule is firing, and whether it has already
said the value is unknown. It emits a decision only on a transition:

- ``fire`` once when the condition has held continuously for ``for``;
- ``clear`` once when a firing rule stops holding (hysteresis applied);
- ``unknown`` once when the value becomes unknown (``None``, or the metric
  missing for a key the snapshot lists), and again only after it was known.
  An unknown for a key no report has reached yet (no evidence: a node
  enrolled but never heard from, the cluster while an enrolled node has not
  reported) is marked ``awaiting_data``: start-up, not a fault, and the
  collector says it in one line per tick. If the key is still waiting
  ``no_data_grace_seconds`` later, a second, unmarked ``unknown`` says so:
  a node that never reports is a real problem and is not hidden.

- ``possibly_crossed`` once when the interval of a compute metric
  (estimate .. upper bound) straddles the threshold while the rule's own
  ``bound`` does not cross it (or the estimate is unknown and the upper bound
  crosses), and again only after it stopped straddling. No action follows;
  ``possibly_crossed()`` lists the keys in that state now.

Unknown never satisfies a comparison: it resets a pending ``for`` and never
clears a firing rule (a silent node does not lift a halt). A key that
vanishes from the snapshot is forgotten unless its rule is firing.
A ``capability:*`` metric that a job has never had is "not evaluated", not
unknown, and says nothing.

Cheap per tick: one pass to index the snapshot by scope, then for each rule a
dict lookup and a comparison per key; state is kept only for keys that are
pending, firing, unknown or evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from collector.accounting.snapshot import CLUSTER_KEY, UPPER_SUFFIX, Scope, Snapshot
from collector.rules.lineage import LineageView
from collector.rules.metrics import (
    LINEAGE_CUMULATIVE_FLOP,
    format_number,
    format_quantity,
    is_capability,
    phrase,
)
from collector.rules.model import Bound, Decision, DecisionKind, Lineage, Rule, RulePack
from protos.errors import RuleError

# Seconds a key may wait for its first report before its unknown is a finding.
NO_DATA_GRACE_SECONDS = 30.0

_SUBJECT = {
    Scope.CLUSTER: "cluster",
    Scope.NODE: "node",
    Scope.JOB: "job",
    Scope.GPU: "GPU",
    Scope.ACTOR: "actor",
}


@dataclass
class _KeyState:
    pending_since: float | None = None
    firing: bool = False
    unknown: bool = False
    # A capability score was seen for this key (later absence is unknown).
    seen: bool = False
    # The interval straddles the threshold (said once).
    possible: bool = False
    # Unknown since then with no report behind the key yet (start-up).
    awaiting_since: float | None = None

    def idle(self) -> bool:
        return (
            self.pending_since is None
            and not self.firing
            and not self.unknown
            and not self.seen
            and not self.possible
        )


class RuleEngine:
    """Stateful evaluator: ``evaluate(snapshot)`` once per aggregation tick."""

    def __init__(
        self, packs: Iterable[RulePack], *, no_data_grace_seconds: float = NO_DATA_GRACE_SECONDS
    ) -> None:
        rules = [r for p in packs for r in p.rules]
        ids = [r.id for r in rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise RuleError(f"rule ids used by more than one rule: {', '.join(dupes)}")
        self._rules = tuple(rules)
        self._grace = no_data_grace_seconds
        self._state: dict[str, dict[str, _KeyState]] = {r.id: {} for r in rules}

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def scopes(self) -> frozenset[Scope]:
        """The snapshot scopes ``evaluate`` reads: the rules' own, the cluster
        always, and the nodes where a cluster rule is loaded (whether the
        cluster still awaits data is judged from them). The aggregator builds
        only these (``Aggregator.snapshot``)."""
        scopes = {Scope.CLUSTER, *(r.scope for r in self._rules)}
        if any(r.scope is Scope.CLUSTER for r in self._rules):
            scopes.add(Scope.NODE)
        return frozenset(scopes)

    def firing(self) -> list[tuple[Rule, str]]:
        """(rule, key) for every rule currently firing."""
        return [
            (rule, key)
            for rule in self._rules
            for key, st in list(self._state[rule.id].items())  # read from the metrics thread
            if st.firing
        ]

    def possibly_crossed(self) -> list[tuple[Rule, str]]:
        """(rule, key) for every rule whose interval straddles its threshold now."""
        return [
            (rule, key)
            for rule in self._rules
            for key, st in list(self._state[rule.id].items())
            if st.possible and not st.firing
        ]

    def evaluate(self, snapshot: Snapshot) -> list[Decision]:
        """Decisions for this tick, in rule order then key order of the snapshot."""
        by_scope: dict[Scope, list[tuple[str, Mapping[str, float | None]]]] = {s: [] for s in Scope}
        for (scope, key), metrics in snapshot.values.items():
            by_scope[scope].append((key, metrics))
        if not by_scope[Scope.CLUSTER]:
            # The cluster always exists; no figures for it means unknown.
            by_scope[Scope.CLUSTER].append((CLUSTER_KEY, {}))
        tick = _Tick(snapshot, LineageView(snapshot), [])
        for rule in self._rules:
            self._evaluate_rule(rule, by_scope[rule.scope], tick)
        return tick.out

    def _straddle(
        self,
        rule: Rule,
        key: str,
        st: _KeyState | None,
        interval: tuple[float | None, float | None],
        tick: _Tick,
    ) -> _KeyState | None:
        """Track (and say once) that the interval straddles the threshold."""
        estimate, upper = interval
        chosen = upper if rule.bound is Bound.UPPER_BOUND else estimate
        possible = _straddles(rule, estimate, upper) and not (
            chosen is not None and rule.holds(chosen)
        )
        if possible and (st is None or not st.possible) and not (st and st.firing):
            if st is None:
                st = self._state[rule.id][key] = _KeyState()
            st.possible = True
            tick.emit(rule, DecisionKind.POSSIBLE, key, chosen)
        elif not possible and st is not None and st.possible:
            st.possible = False
            if st.idle():
                del self._state[rule.id][key]
                return None
        return st

    def _still_unknown(self, rule: Rule, key: str, st: _KeyState, tick: _Tick) -> None:
        """A key that was waiting for its first report: once reports came and
        the value is still unknown, or the grace ran out, that is a finding."""
        assert st.awaiting_since is not None
        waited = tick.snapshot.time - st.awaiting_since
        if not tick.awaiting_data(rule.scope, key):
            st.awaiting_since = None
            tick.emit(rule, DecisionKind.UNKNOWN, key, None, note="; reports arrived")
        elif waited >= self._grace:
            st.awaiting_since = None
            note = f"; no report {format_number(waited)} s after it was first listed"
            tick.emit(rule, DecisionKind.UNKNOWN, key, None, note=note)

    def _evaluate_rule(
        self, rule: Rule, entries: list[tuple[str, Mapping[str, float | None]]], tick: _Tick
    ) -> None:
        states = self._state[rule.id]
        metric = rule.metric
        derived = metric == LINEAGE_CUMULATIVE_FLOP
        capability = is_capability(metric)
        upward = rule.comparison.upward
        now = tick.snapshot.time
        for key, metrics in entries:
            st = states.get(key)
            if derived:
                estimate = tick.view.lineage_flop(key, lower_bound_ok=upward)
                upper = tick.view.lineage_flop(key, lower_bound_ok=upward, upper=True)
            else:
                estimate = metrics.get(metric)
                upper = metrics.get(metric + UPPER_SUFFIX) if rule.bounded else None
            value = upper if rule.bound is Bound.UPPER_BOUND else estimate
            if rule.bounded:
                st = self._straddle(rule, key, st, (estimate, upper), tick)
            if value is None:
                if capability and metric not in metrics and (st is None or not st.seen):
                    continue  # never evaluated: nothing to report
                if st is None:
                    st = states[key] = _KeyState()
                st.pending_since = None
                if not st.unknown:
                    st.unknown = True
                    awaiting = tick.awaiting_data(rule.scope, key)
                    st.awaiting_since = now if awaiting else None
                    tick.emit(rule, DecisionKind.UNKNOWN, key, None, awaiting=awaiting)
                elif st.awaiting_since is not None:
                    self._still_unknown(rule, key, st, tick)
                continue
            if st is not None:
                st.unknown = False
                st.awaiting_since = None
                st.seen = st.seen or capability
                if st.firing:
                    if rule.cleared(value):
                        st.firing = False
                        tick.emit(rule, DecisionKind.CLEAR, key, value)
                        if st.idle():
                            del states[key]
                    continue
            if rule.holds(value):
                if st is None:
                    st = states[key] = _KeyState(seen=capability)
                if rule.for_seconds > 0:
                    if st.pending_since is None:
                        st.pending_since = now
                    if now - st.pending_since < rule.for_seconds:
                        continue
                st.pending_since = None
                st.firing = True
                tick.emit(rule, DecisionKind.FIRE, key, value)
            elif st is not None:
                st.pending_since = None
                if st.idle():
                    del states[key]
            elif capability:
                states[key] = _KeyState(seen=True)
        if states and rule.scope is not Scope.CLUSTER:
            # Keys the snapshot no longer lists are forgotten, unless firing.
            values, scope = tick.snapshot.values, rule.scope
            gone = [k for k, st in states.items() if not st.firing and (scope, k) not in values]
            for k in gone:
                del states[k]


def _straddles(rule: Rule, estimate: float | None, upper: float | None) -> bool:
    if upper is None:
        return False
    if estimate is None:
        # Unknown estimate: an upper bound past an upward line may have crossed it.
        return rule.comparison.upward and rule.holds(upper)
    return rule.holds(estimate) != rule.holds(upper)


@dataclass
class _Tick:
    """One evaluation: the snapshot, its lineage view, and the decisions so far."""

    snapshot: Snapshot
    view: LineageView
    out: list[Decision]

    def awaiting_data(self, scope: Scope, key: str) -> bool:
        """No report has reached ``key`` yet: it has no evidence (the cluster:
        no node is listed, or some node the snapshot lists has none)."""
        evidence = self.snapshot.evidence
        if scope is Scope.CLUSTER:
            nodes = list(self.snapshot.keys(Scope.NODE))
            return not nodes or any(not evidence.get((Scope.NODE, n)) for n in nodes)
        return not evidence.get((scope, key))

    def emit(
        self,
        rule: Rule,
        kind: DecisionKind,
        key: str,
        value: float | None,
        *,
        awaiting: bool = False,
        note: str = "",
    ) -> None:
        snap = self.snapshot
        estimate = upper = unmeasured = None
        if rule.metric == LINEAGE_CUMULATIVE_FLOP:
            evidence = self.view.lineage_evidence(key)
            upward = rule.comparison.upward
            estimate = self.view.lineage_flop(key, lower_bound_ok=upward)
            upper = self.view.lineage_flop(key, lower_bound_ok=upward, upper=True)
            unmeasured = self.view.lineage_unmeasured(key)
        else:
            evidence = tuple(snap.evidence.get((rule.scope, key), ()))
            if rule.bounded:
                estimate = snap.get(rule.scope, key, rule.metric)
                upper = snap.get(rule.scope, key, rule.metric + UPPER_SUFFIX)
                unmeasured = snap.get(rule.scope, key, "unmeasured_gpu_seconds")
        bounds = _Bounds(estimate, upper, unmeasured, snap.methods.get((rule.scope, key), ""))
        targets: tuple[str, ...] = (key,)
        if rule.lineage is Lineage.DESCENDANTS and kind is not DecisionKind.UNKNOWN:
            targets = (key, *self.view.descendants(key))
        self.out.append(
            Decision(
                rule=rule,
                kind=kind,
                scope=rule.scope,
                key=key,
                value=value,
                time=self.snapshot.time,
                reason=_reason(
                    rule, kind, key, value, targets=targets, view=self.view, bounds=bounds
                )
                + note,
                targets=targets,
                log_indices=evidence,
                estimate=bounds.estimate if rule.bounded else None,
                upper_bound=bounds.upper if rule.bounded else None,
                method=bounds.method if rule.bounded else "",
                unmeasured_gpu_seconds=bounds.unmeasured if rule.bounded else None,
                awaiting_data=awaiting,
            )
        )


@dataclass(frozen=True)
class _Bounds:
    estimate: float | None
    upper: float | None
    unmeasured: float | None
    method: str

    def describe(self, unit: str) -> str:
        def q(v: float | None) -> str:
            return "unknown" if v is None else format_quantity(v, unit)

        text = f"estimate {q(self.estimate)}, upper bound {q(self.upper)}"
        if self.unmeasured:
            text += f", {format_number(self.unmeasured)} GPU-s unmeasured"
        if self.method:
            text += f", method {self.method}"
        return text

    def other(self, rule: Rule) -> str:
        """ "by the <bound>; <the other bound>, unmeasured, method"."""

        def q(v: float | None) -> str:
            return "unknown" if v is None else format_quantity(v, rule.unit)

        if rule.bound is Bound.UPPER_BOUND:
            text = f"by the upper bound; estimate {q(self.estimate)}"
        else:
            text = f"by the estimate; upper bound {q(self.upper)}"
        if self.unmeasured:
            text += f", {format_number(self.unmeasured)} GPU-s unmeasured"
        if self.method:
            text += f", method {self.method}"
        return text


def _reason(
    rule: Rule,
    kind: DecisionKind,
    key: str,
    value: float | None,
    *,
    targets: tuple[str, ...],
    view: LineageView,
    bounds: _Bounds,
) -> str:
    subject = "cluster" if rule.scope is Scope.CLUSTER else f"{_SUBJECT[rule.scope]} {key}"
    what = f"{subject} {phrase(rule.metric)}"
    threshold = format_quantity(rule.threshold, rule.unit)
    if kind is DecisionKind.POSSIBLE:
        return (
            f"{what} possibly {rule.comparison} {threshold}: {bounds.describe(rule.unit)}"
            f" (rule {rule.id} compares the {rule.bound.value.replace('_', ' ')})"
        )
    if kind is DecisionKind.UNKNOWN or value is None:
        text = f"{what} unknown (no data): rule {rule.id} cannot be evaluated"
        if rule.bounded and bounds.upper is not None:
            text += f" ({bounds.describe(rule.unit)})"
        return text
    measured = format_quantity(value, rule.unit)
    if kind is DecisionKind.CLEAR:
        text = f"{what} {measured} no longer {rule.comparison} {threshold}"
        if rule.hysteresis:
            text += f" (hysteresis {format_quantity(rule.hysteresis, rule.unit)})"
        return text
    text = f"{what} {measured} {rule.comparison} {threshold}"
    if rule.for_seconds:
        text += f" for {format_number(rule.for_seconds)} s"
    if rule.metric == LINEAGE_CUMULATIVE_FLOP:
        missing = view.ancestors_without_data(key)
        if missing:
            text += f" (at least: {missing} ancestor jobs without data)"
    if rule.bounded:
        text += f" ({bounds.other(rule)})"
    if len(targets) > 1:
        text += f", with {len(targets) - 1} descendant jobs"
    if rule.source is not None:
        text += f" ({rule.source}{', historical' if rule.historical else ''})"
    return text
