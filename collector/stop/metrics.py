"""Metrics of the stop protocol, computed at scrape time.

Labels stay low-cardinality: rule ids (bounded by the loaded packs), actions,
decision kinds, Control methods and refusal reasons.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from collector.rules.model import DecisionKind
from collector.stop.control import ControlServicer
from collector.stop.decisions import DecisionHook
from collector.stop.directives import DirectiveBook
from collector.stop.effectiveness import EffectTracker
from collector.stop.leases import LeaseIssuer
from protos.reasons import DIRECTIVE_ACTIONS

# Control methods (collector/stop/control.py) whose "accepted" series start at 0.
CONTROL_METHODS = ("manual_halt", "approval", "evaluation")


class StopMetrics(Collector):
    def __init__(
        self,
        decisions: DecisionHook,
        book: DirectiveBook,
        tracker: EffectTracker,
        leases: LeaseIssuer,
        control: ControlServicer,
    ) -> None:
        self._decisions = decisions
        self._book = book
        self._tracker = tracker
        self._leases = leases
        self._control = control

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._rules()
        yield from self._directives()
        control = CounterMetricFamily(
            "computewatch_control_submissions_total",
            "Control submissions by method and result (accepted or the refusal reason).",
            labels=["method", "result"],
        )
        submissions = {(m, "accepted"): 0 for m in CONTROL_METHODS} | dict(self._control.stats)
        for (method, result), n in sorted(submissions.items()):
            control.add_metric([method, result], n)
        yield control

    def _rules(self) -> Iterator[Metric]:
        engine = self._decisions.engine
        decisions = CounterMetricFamily(
            "computewatch_rule_decisions_total",
            f"Rule decisions ({', '.join(DecisionKind)}) by rule and action.",
            labels=["rule", "kind", "action"],
        )
        # Every loaded rule's decisions from 0, so increase() sees the first one.
        counted = {(r.id, str(k), str(r.action)): 0 for r in engine.rules for k in DecisionKind}
        for (rule, kind, action), n in sorted((counted | self._decisions.stats.decisions).items()):
            decisions.add_metric([rule, kind, action], n)
        yield decisions
        firing = GaugeMetricFamily(
            "computewatch_rule_firing",
            "Keys (cluster, nodes, jobs or GPUs) for which a rule is firing now,"
            " with the rule's action (record, alert, throttle, halt, terminate).",
            labels=["rule", "action"],
        )
        actions = {r.id: str(r.action) for r in engine.rules}
        counts = dict.fromkeys(actions, 0)
        for firing_rule, _ in engine.firing():
            counts[firing_rule.id] += 1
        for rule_id, n in sorted(counts.items()):
            firing.add_metric([rule_id, actions[rule_id]], n)
        yield firing
        possible = GaugeMetricFamily(
            "computewatch_rule_possibly_crossed",
            "Keys whose compute interval (estimate .. upper bound) straddles the rule's"
            " threshold while the rule's own bound does not cross it.",
            labels=["rule"],
        )
        straddling = {r.id: 0 for r in engine.rules if r.bounded}
        for straddling_rule, _ in engine.possibly_crossed():
            straddling[straddling_rule.id] = straddling.get(straddling_rule.id, 0) + 1
        for rule_id, n in sorted(straddling.items()):
            possible.add_metric([rule_id], n)
        yield possible

    def _directives(self) -> Iterator[Metric]:
        stats = self._book.stats
        issued = CounterMetricFamily(
            "computewatch_directives_issued_total",
            "Directives sealed, logged and pushed, by action.",
            labels=["action"],
        )
        for action, n in sorted((dict.fromkeys(DIRECTIVE_ACTIONS, 0) | dict(stats.issued)).items()):
            issued.add_metric([action], n)
        yield issued
        yield GaugeMetricFamily(
            "computewatch_directives_in_force",
            "Halts, throttles and terminates issued and not yet lifted.",
            value=len(self._book.in_force()),
        )
        yield GaugeMetricFamily(
            "computewatch_directives_not_effective",
            "Directives past the effectiveness timeout that telemetry does not yet show enforced.",
            value=self._tracker.not_effective(),
        )
        yield GaugeMetricFamily(
            "computewatch_directives_pending_effect",
            "Directives issued whose effect telemetry does not show yet.",
            value=self._tracker.pending(),
        )
        t = self._tracker.stats
        yield SummaryMetricFamily(
            "computewatch_directive_time_to_effective_seconds",
            "From a directive's issue to the report that showed it enforced on every node.",
            count_value=t.effective,
            sum_value=t.seconds_to_effective_sum,
        )
        yield CounterMetricFamily(
            "computewatch_directive_write_errors_total",
            "Directives not issued because the ledger append failed.",
            value=stats.write_errors,
        )
        yield CounterMetricFamily(
            "computewatch_directives_suppressed_total",
            "Rule firings that issued nothing: already in force, or lifted by a quorum before.",
            value=self._decisions.stats.suppressed + self._decisions.stats.acknowledged,
        )
        yield GaugeMetricFamily(
            "computewatch_lease_nodes",
            "Healthy nodes covered by the last round of leases.",
            value=self._leases.stats.nodes_last_round,
        )
