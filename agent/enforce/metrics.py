"""Enforcement metrics on the agent's registry, read from the enforcer at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.enforce.enforcer import Enforcer
from protos.reasons import DIRECTIVE_ACTIONS, DIRECTIVE_REFUSAL_REASONS

_P = "computewatch_agent_"


class EnforcementMetrics(Collector):
    """Reads whichever enforcer ``current()`` returns (none: no series)."""

    def __init__(self, current: Callable[[], Enforcer | None]) -> None:
        self._current = current

    def collect(self) -> Iterator[Metric]:
        e = self._current()
        if e is None:
            return
        refused = CounterMetricFamily(
            f"{_P}directives_refused",
            "Directives refused by verification, by reason.",
            labels=["reason"],
        )
        # Every reason and action from 0, so increase() sees the first one.
        refusals = dict.fromkeys(DIRECTIVE_REFUSAL_REASONS, 0) | dict(e.verifier.stats.refused)
        for reason, n in sorted(refusals.items()):
            refused.add_metric([reason], n)
        yield refused
        applied = CounterMetricFamily(
            f"{_P}directives_applied",
            "Directives accepted and acted on, by action.",
            labels=["action"],
        )
        # Leases are not counted as applied (they renew, see enforcer.py).
        acted = dict.fromkeys((a for a in DIRECTIVE_ACTIONS if a != "lease"), 0)
        for action, n in sorted((acted | dict(e.stats.applied)).items()):
            applied.add_metric([action], n)
        yield applied
        yield CounterMetricFamily(
            f"{_P}directives_duplicate",
            "Directives received again after being applied (acknowledged, not re-applied).",
            value=e.stats.duplicates,
        )
        yield CounterMetricFamily(
            f"{_P}enforcement_steps_failed",
            "Enforcement steps that failed (see the receipt and the log).",
            value=e.stats.steps_failed,
        )
        yield CounterMetricFamily(
            f"{_P}local_halts",
            "Times the agent halted its GPUs itself for lack of a valid lease.",
            value=e.stats.local_halts,
        )
        state = e.state()
        yield GaugeMetricFamily(
            f"{_P}lease_valid", "1 while a valid lease is held.", value=float(state.lease_valid)
        )
        yield GaugeMetricFamily(
            f"{_P}locally_halted",
            "1 while the agent's own fail-closed halt is in force.",
            value=float(state.locally_halted),
        )
        yield GaugeMetricFamily(
            f"{_P}halted_gpus",
            "GPUs held at compute mode PROHIBITED by a directive in force.",
            value=float(len(state.halted_gpu_uuids)),
        )
        yield GaugeMetricFamily(
            f"{_P}directives_in_force",
            "Directives in force on this node (halts, throttles, the local halt).",
            value=float(len(state.active_directive_ids)),
        )


def register_enforcement_metrics(
    registry: CollectorRegistry, current: Callable[[], Enforcer | None]
) -> None:
    registry.register(EnforcementMetrics(current))
