"""The rule engine: transitions, for-durations, hysteresis, unknowns, lineage."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from collector.accounting.snapshot import CLUSTER_KEY, Scope, Snapshot
from collector.rules.engine import RuleEngine
from collector.rules.model import (
    Action,
    Bound,
    Comparison,
    Decision,
    DecisionKind,
    Lineage,
    Rule,
    RulePack,
    Source,
)
from protos.errors import RuleError

JOB = Scope.JOB


def rule(**kw: object) -> Rule:
    base: dict[str, object] = {
        "id": "r",
        "description": "test rule",
        "metric": "cumulative_flop",
        "scope": JOB,
        "comparison": Comparison.GT,
        "threshold": 100.0,
        "unit": "FLOP",
        "action": Action.HALT,
    }
    base.update(kw)
    return Rule(**base)  # type: ignore[arg-type]


def engine(*rules: Rule) -> RuleEngine:
    return RuleEngine([RulePack(name="p", version="1", description="d", rules=rules)])


def snap(
    t: float,
    values: Mapping[tuple[Scope, str], Mapping[str, float | None]],
    *,
    lineage: Mapping[str, tuple[str, ...]] | None = None,
    evidence: Mapping[tuple[Scope, str], tuple[int, ...]] | None = None,
) -> Snapshot:
    return Snapshot(time=t, values=values, evidence=evidence or {}, lineage=lineage or {})


def job(t: float, **jobs: float | None) -> Snapshot:
    return snap(t, {(JOB, k): {"cumulative_flop": v} for k, v in jobs.items()})


def kinds(decisions: list[Decision]) -> list[tuple[str, str]]:
    return [(str(d.kind), d.key) for d in decisions]


def test_fires_once_per_transition_and_clears_once() -> None:
    e = engine(rule())
    assert kinds(e.evaluate(job(0, a=50.0))) == []
    assert kinds(e.evaluate(job(1, a=150.0))) == [("fire", "a")]
    assert kinds(e.evaluate(job(2, a=200.0))) == []
    assert [(r.id, k) for r, k in e.firing()] == [("r", "a")]
    assert kinds(e.evaluate(job(3, a=100.0))) == [("clear", "a")]
    assert kinds(e.evaluate(job(4, a=90.0))) == []
    assert kinds(e.evaluate(job(5, a=101.0))) == [("fire", "a")]


def test_comparisons_at_the_boundary() -> None:
    assert rule(comparison=Comparison.GT).holds(100.0) is False
    assert rule(comparison=Comparison.GE).holds(100.0) is True
    assert rule(comparison=Comparison.LT).holds(100.0) is False
    assert rule(comparison=Comparison.LE).holds(100.0) is True
    e = engine(rule(comparison=Comparison.LT, threshold=10.0))
    assert kinds(e.evaluate(job(0, a=5.0, b=50.0))) == [("fire", "a")]


def test_for_duration_needs_the_condition_to_hold_continuously() -> None:
    e = engine(rule(for_seconds=5.0))
    assert kinds(e.evaluate(job(0, a=150.0))) == []
    assert kinds(e.evaluate(job(3, a=150.0))) == []
    # Drops below: the clock restarts.
    assert kinds(e.evaluate(job(4, a=50.0))) == []
    assert kinds(e.evaluate(job(5, a=150.0))) == []
    assert kinds(e.evaluate(job(9, a=150.0))) == []
    fired = e.evaluate(job(10, a=150.0))
    assert kinds(fired) == [("fire", "a")]
    assert fired[0].time == 10
    assert "for 5 s" in fired[0].reason


def test_unknown_resets_a_pending_for_and_is_reported_once() -> None:
    e = engine(rule(for_seconds=5.0))
    assert kinds(e.evaluate(job(0, a=150.0))) == []
    assert kinds(e.evaluate(job(2, a=None))) == [("unknown", "a")]
    assert kinds(e.evaluate(job(3, a=None))) == []
    assert kinds(e.evaluate(job(4, a=150.0))) == []
    # 0 -> 6 would have been enough without the unknown gap; it restarted at 4.
    assert kinds(e.evaluate(job(6, a=150.0))) == []
    assert kinds(e.evaluate(job(9, a=150.0))) == [("fire", "a")]
    # Known again then unknown again: a second unknown finding.
    assert kinds(e.evaluate(job(10, a=None))) == [("unknown", "a")]


def test_unknown_never_satisfies_and_never_clears_a_firing_rule() -> None:
    e = engine(rule(comparison=Comparison.LT, threshold=10.0))
    unknown = e.evaluate(job(0, a=None))
    assert kinds(unknown) == [("unknown", "a")]
    assert unknown[0].value is None
    assert "unknown" in unknown[0].reason
    e = engine(rule())
    assert kinds(e.evaluate(job(0, a=500.0))) == [("fire", "a")]
    assert kinds(e.evaluate(job(1, a=None))) == [("unknown", "a")]
    # Still firing; data comes back above the line: nothing new.
    assert kinds(e.evaluate(job(2, a=500.0))) == []
    assert kinds(e.evaluate(job(3, a=None))) == [("unknown", "a")]
    assert kinds(e.evaluate(job(4, a=1.0))) == [("clear", "a")]


def test_missing_metric_for_a_listed_key_is_unknown() -> None:
    e = engine(rule())
    s = snap(0, {(JOB, "a"): {"achieved_flops": 1.0}})
    assert kinds(e.evaluate(s)) == [("unknown", "a")]


def test_missing_cluster_figures_are_unknown() -> None:
    r = rule(metric="achieved_flops", scope=Scope.CLUSTER, unit="FLOP/s")
    e = engine(r)
    assert kinds(e.evaluate(snap(0, {}))) == [("unknown", CLUSTER_KEY)]
    assert kinds(e.evaluate(snap(1, {}))) == []
    c = {(Scope.CLUSTER, CLUSTER_KEY): {"achieved_flops": 1e3}}
    fired = e.evaluate(snap(2, c))
    assert kinds(fired) == [("fire", CLUSTER_KEY)]
    assert fired[0].reason.startswith("cluster achieved compute rate 1e3 FLOP/s > 100 FLOP/s")


def test_hysteresis_delays_the_clear() -> None:
    e = engine(rule(hysteresis=20.0))
    assert kinds(e.evaluate(job(0, a=150.0))) == [("fire", "a")]
    assert kinds(e.evaluate(job(1, a=95.0))) == []
    assert kinds(e.evaluate(job(2, a=80.0))) == []
    assert kinds(e.evaluate(job(3, a=79.0))) == [("clear", "a")]
    down = engine(rule(comparison=Comparison.LE, threshold=10.0, hysteresis=5.0))
    assert kinds(down.evaluate(job(0, a=10.0))) == [("fire", "a")]
    assert kinds(down.evaluate(job(1, a=15.0))) == []
    cleared = down.evaluate(job(2, a=15.5))
    assert kinds(cleared) == [("clear", "a")]
    assert "no longer <= 10 FLOP" in cleared[0].reason


def test_decision_carries_value_threshold_evidence_and_a_plain_reason() -> None:
    r = rule(
        id="eu",
        threshold=1e25,
        action=Action.ALERT,
        source=Source("EU AI Act", "Art. 51(2)"),
    )
    e = engine(r)
    s = snap(
        7.0,
        {(JOB, "4242"): {"cumulative_flop": 1.2e25}},
        evidence={(JOB, "4242"): (3, 9, 12)},
    )
    (d,) = e.evaluate(s)
    assert d.kind is DecisionKind.FIRE
    assert d.rule is r
    assert (d.scope, d.key, d.value, d.threshold, d.unit) == (JOB, "4242", 1.2e25, 1e25, "FLOP")
    assert d.comparison is Comparison.GT
    assert d.action is Action.ALERT
    assert d.targets == ("4242",)
    assert d.log_indices == (3, 9, 12)
    assert d.time == 7.0
    assert d.reason == (
        "job 4242 cumulative compute 1.2e25 FLOP > 1e25 FLOP"
        " (by the estimate; upper bound unknown) (EU AI Act Art. 51(2))"
    )
    doc = d.to_dict()
    assert doc["rule"] == "eu"
    assert doc["log_indices"] == [3, 9, 12]


def test_capability_rule_halts_the_job_and_every_descendant() -> None:
    r = rule(
        id="cyber",
        metric="capability:cyber-offense",
        comparison=Comparison.GE,
        threshold=0.5,
        unit="score",
        lineage=Lineage.DESCENDANTS,
    )
    e = engine(r)
    lineage = {"ft-1": ("base",), "ft-2": ("ft-1",), "other": (), "ft-3": ("base", "ft-1")}
    values: dict[tuple[Scope, str], dict[str, float | None]] = {
        (JOB, j): {"cumulative_flop": 1.0} for j in ("base", "ft-1", "ft-2", "ft-3", "other")
    }
    # No job evaluated yet: "not evaluated" says nothing.
    assert e.evaluate(snap(0, values, lineage=lineage)) == []
    values[(JOB, "ft-1")]["capability:cyber-offense"] = 0.2
    assert e.evaluate(snap(1, values, lineage=lineage)) == []
    values[(JOB, "ft-1")]["capability:cyber-offense"] = 0.7
    (d,) = e.evaluate(snap(2, values, lineage=lineage))
    assert d.kind is DecisionKind.FIRE
    assert d.targets == ("ft-1", "ft-2", "ft-3")
    assert "2 descendant jobs" in d.reason
    assert d.reason.startswith("job ft-1 cyber-offense capability score 0.7 >= 0.5")
    # An evaluated job whose score disappears is unknown.
    del values[(JOB, "ft-1")]["capability:cyber-offense"]
    assert kinds(e.evaluate(snap(3, values, lineage=lineage))) == [("unknown", "ft-1")]


def test_lineage_cumulative_flop_counts_each_ancestor_once() -> None:
    r = rule(metric="lineage_cumulative_flop", threshold=1000.0)
    e = engine(r)
    # diamond: d <- b, c <- a ; plus a cycle x <-> y
    lineage = {"b": ("a",), "c": ("a",), "d": ("b", "c"), "x": ("y",), "y": ("x",)}
    flop = {"a": 600.0, "b": 200.0, "c": 150.0, "d": 100.0, "x": 10.0, "y": 20.0}
    values = {(JOB, k): {"cumulative_flop": v} for k, v in flop.items()}
    evidence = {(JOB, k): (i,) for i, k in enumerate(flop)}
    out = e.evaluate(snap(0, values, lineage=lineage, evidence=evidence))
    # d: 100 + 200 + 150 + 600 = 1050 > 1000; b: 800; c: 750; x, y: 30
    assert kinds(out) == [("fire", "d")]
    assert out[0].value == pytest.approx(1050.0)
    assert out[0].log_indices == (0, 1, 2, 3)
    assert "including its lineage" in out[0].reason


def test_lineage_sum_with_missing_ancestors_is_a_lower_bound_only_upwards() -> None:
    lineage = {"ft": ("gone",)}
    values = {(JOB, "ft"): {"cumulative_flop": 2000.0}}
    up = engine(rule(metric="lineage_cumulative_flop", threshold=1000.0))
    (d,) = up.evaluate(snap(0, values, lineage=lineage))
    assert d.kind is DecisionKind.FIRE
    assert "at least: 1 ancestor jobs without data" in d.reason
    down = engine(rule(metric="lineage_cumulative_flop", comparison=Comparison.LT, threshold=1e9))
    assert kinds(down.evaluate(snap(0, values, lineage=lineage))) == [("unknown", "ft")]


def test_vanished_keys_are_forgotten_unless_firing() -> None:
    e = engine(rule(for_seconds=10.0), rule(id="fast"))
    out = e.evaluate(job(0, a=500.0, b=500.0))
    assert sorted(kinds(out)) == [("fire", "a"), ("fire", "b")]
    # a and b vanish: the pending for-clock of "r" is dropped, "fast" stays firing.
    assert e.evaluate(job(1)) == []
    assert sorted(k for r, k in e.firing()) == ["a", "b"]
    assert kinds(e.evaluate(job(5, a=500.0))) == []
    # "r" restarted its clock at 5.
    assert kinds(e.evaluate(job(12, a=500.0))) == []
    assert kinds(e.evaluate(job(15, a=500.0))) == [("fire", "a")]


def test_duplicate_rule_ids_across_packs_are_refused() -> None:
    p1 = RulePack(name="p1", version="1", description="d", rules=(rule(),))
    p2 = RulePack(name="p2", version="1", description="d", rules=(rule(),))
    with pytest.raises(RuleError, match="more than one rule: r"):
        RuleEngine([p1, p2])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"metric": "nope"}, "not published at scope job"),
        ({"unit": "FLOP/s"}, "does not match metric"),
        ({"threshold": float("nan")}, "not a finite number"),
        ({"hysteresis": -1.0}, "hysteresis"),
        ({"for_seconds": -1.0}, "duration"),
        ({"action": Action.THROTTLE}, "power_cap_watts > 0"),
        ({"power_cap_watts": 300.0}, "only meaningful on a throttle"),
        (
            {
                "scope": Scope.NODE,
                "metric": "gpus_lost",
                "unit": "count",
                "lineage": Lineage.DESCENDANTS,
            },
            "needs scope job",
        ),
        ({"metric": "capability:x", "scope": Scope.NODE, "unit": "score"}, "not published"),
    ],
)
def test_rules_built_in_code_validate_themselves(kw: dict[str, object], message: str) -> None:
    with pytest.raises(RuleError, match=message):
        rule(**kw)


def test_many_keys_each_tick_only_transitions_are_reported() -> None:
    e = engine(
        rule(id="cum", threshold=5000.0),
        rule(id="gpu-power", metric="power_watts", scope=Scope.GPU, unit="watts", threshold=650.0),
    )
    jobs = 2000
    gpus = 8000
    for t in range(5):
        values: dict[tuple[Scope, str], dict[str, float | None]] = {
            (JOB, f"j{i}"): {"cumulative_flop": float(i * (t + 1))} for i in range(jobs)
        }
        values.update(
            {(Scope.GPU, f"g{i}"): {"power_watts": 600.0 + (i % 100)} for i in range(gpus)}
        )
        out = e.evaluate(snap(float(t), values))
        cum = [d for d in out if d.rule.id == "cum"]
        power = [d for d in out if d.rule.id == "gpu-power"]
        # Newly above 5000 this tick: i*(t+1) > 5000 >= i*t
        expected = sum(1 for i in range(jobs) if i * (t + 1) > 5000 >= i * t)
        assert len(cum) == expected
        assert len(power) == (gpus // 100 * 49 if t == 0 else 0)


def _bounded(t: float, estimate: float | None, upper: float | None) -> Snapshot:
    return snap(
        t, {(JOB, "j"): {"cumulative_flop": estimate, "cumulative_flop_upper_bound": upper}}
    )


def test_a_straddling_interval_is_possibly_crossed_once_and_then_clears() -> None:
    e = engine(rule(bound=Bound.ESTIMATE))
    assert kinds(e.evaluate(_bounded(0, 50.0, 80.0))) == []
    out = e.evaluate(_bounded(1, 60.0, 150.0))
    assert kinds(out) == [("possibly_crossed", "j")]
    assert "possibly > 100 FLOP: estimate 60 FLOP, upper bound 150 FLOP" in out[0].reason
    assert kinds(e.evaluate(_bounded(2, 70.0, 160.0))) == []  # said once
    assert [(r.id, k) for r, k in e.possibly_crossed()] == [("r", "j")]
    assert kinds(e.evaluate(_bounded(3, 120.0, 200.0))) == [("fire", "j")]
    assert e.possibly_crossed() == []


def test_an_unknown_estimate_under_a_crossing_upper_bound_is_possibly_crossed() -> None:
    e = engine(rule(bound=Bound.ESTIMATE))
    out = e.evaluate(_bounded(0, None, 150.0))
    assert sorted(kinds(out)) == [("possibly_crossed", "j"), ("unknown", "j")]
    # A rule on the upper bound fires on it, with the estimate in the reason.
    up = engine(rule(id="u", bound=Bound.UPPER_BOUND))
    (d,) = up.evaluate(_bounded(0, None, 150.0))
    assert (d.kind, d.value, d.estimate, d.upper_bound) == (DecisionKind.FIRE, 150.0, None, 150.0)
    assert "by the upper bound; estimate unknown" in d.reason


def test_lineage_on_the_upper_bound_sums_the_ancestors_upper_bounds() -> None:
    r = rule(metric="lineage_cumulative_flop", threshold=1000.0, bound=Bound.UPPER_BOUND)
    values = {
        (JOB, "base"): {"cumulative_flop": 300.0, "cumulative_flop_upper_bound": 600.0},
        (JOB, "ft"): {"cumulative_flop": 300.0, "cumulative_flop_upper_bound": 500.0},
    }
    (d,) = engine(r).evaluate(snap(0, values, lineage={"ft": ("base",)}))
    assert (d.kind, d.key, d.value, d.estimate) == (DecisionKind.FIRE, "ft", 1100.0, 600.0)


def test_bound_upper_on_a_metric_without_an_interval_is_refused() -> None:
    with pytest.raises(RuleError, match="not an interval"):
        rule(metric="gpus", unit="count", bound=Bound.UPPER_BOUND)
