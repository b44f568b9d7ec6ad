"""Per-actor figures on ``/metrics``, with bounded cardinality.

The ``TOP_N`` actors by 90-day cumulative upper bound get their own label
value (their published actor id: ``lei:...``, ``c:...``, ``org:...`` or
``unknown``, the same ids the signed log publishes); every other actor is
summed under ``actor="others"``. Full per-actor detail is in the Status API
and the signed log, not in label sets. Estimates that are unknown read NaN.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from collector.accounting.actors import WINDOW_DAYS, ActorBook, window_metric
from collector.accounting.snapshot import UPPER_SUFFIX, Scope, Snapshot

TOP_N = 10
OTHERS = "others"
_RANK = window_metric(max(WINDOW_DAYS)) + UPPER_SUFFIX
# (label value, metric) pairs of the cumulative families: lifetime and windows.
# (Spelled out: the dashboard's label values must appear in the code.)
_WINDOWS = (
    ("lifetime", "cumulative_flop"),
    ("7d", "cumulative_7d_flop"),
    ("30d", "cumulative_30d_flop"),
    ("90d", "cumulative_90d_flop"),
)
assert tuple(m for _, m in _WINDOWS[1:]) == tuple(window_metric(d) for d in WINDOW_DAYS)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _add(rows: list[Mapping[str, float | None]], metric: str) -> float | None:
    """Sum of ``metric`` over ``rows``; None (NaN) when any is unknown: an
    estimate for "others" is only as known as its least known actor."""
    values = [r.get(metric) for r in rows]
    if any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def actor_families(snap: Snapshot, book: ActorBook, top_n: int = TOP_N) -> Iterator[Metric]:
    rows = {k: snap.values[(Scope.ACTOR, k)] for k in snap.keys(Scope.ACTOR)}
    ranked = sorted(rows, key=lambda a: (-(rows[a].get(_RANK) or 0.0), a))
    shown = {a: [rows[a]] for a in ranked[:top_n]}
    rest = [rows[a] for a in ranked[top_n:]]
    if rest:
        shown[OTHERS] = rest
    cumulative = GaugeMetricFamily(
        "computewatch_actor_cumulative_flop",
        f"Cumulative FLOP per actor (estimate; top {top_n} actors, the rest as 'others'),"
        " lifetime and over rolling windows.",
        labels=["actor", "window"],
    )
    cumulative_upper = GaugeMetricFamily(
        "computewatch_actor_upper_bound_cumulative_flop",
        "Upper bound of cumulative FLOP per actor, unmeasured time at peak.",
        labels=["actor", "window"],
    )
    achieved = GaugeMetricFamily(
        "computewatch_actor_achieved_flops",
        "Achieved FLOP/s per actor, all its jobs together (estimate; NaN when unknown).",
        labels=["actor"],
    )
    achieved_upper = GaugeMetricFamily(
        "computewatch_actor_upper_bound_achieved_flops",
        "Upper bound of achieved FLOP/s per actor.",
        labels=["actor"],
    )
    gpus = GaugeMetricFamily(
        "computewatch_actor_gpus", "GPUs held by each actor's running jobs.", labels=["actor"]
    )
    for actor, group in shown.items():
        for window, metric in _WINDOWS:
            cumulative.add_metric([actor, window], _nan(_add(group, metric)))
            cumulative_upper.add_metric([actor, window], _nan(_add(group, metric + UPPER_SUFFIX)))
        achieved.add_metric([actor], _nan(_add(group, "achieved_flops")))
        achieved_upper.add_metric([actor], _nan(_add(group, "achieved_flops_upper_bound")))
        gpus.add_metric([actor], _nan(_add(group, "gpus")))
    yield from (cumulative, cumulative_upper, achieved, achieved_upper, gpus)
    yield GaugeMetricFamily(
        "computewatch_actors", "Actors the collector accounts.", value=len(rows)
    )
    yield CounterMetricFamily(
        "computewatch_collector_actor_ids_invalid",
        "Job declarations whose actor id was malformed (counted under 'unknown').",
        value=book.invalid,
    )
    yield CounterMetricFamily(
        "computewatch_collector_actor_conflicts",
        "Reports that named another actor for a job than the one it had (nodes disagree,"
        " or the job's actor changed); later charges follow the newest report.",
        value=book.conflicts,
    )
    yield CounterMetricFamily(
        "computewatch_collector_actors_overflow",
        "Charges of actors beyond the tracked maximum (counted under 'unknown').",
        value=book.overflow,
    )
