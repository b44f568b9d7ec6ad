"""Every shipped pack passes the check, and each does what its text says."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from jsonschema import Draft202012Validator

from collector.accounting.snapshot import CLUSTER_KEY, Scope, Snapshot
from collector.rules.engine import RuleEngine
from collector.rules.load import builtin_pack_names, builtin_pack_path, check_files, load_packs
from collector.rules.model import Action, DecisionKind
from collector.rules.yamlsrc import parse

SHIPPED = builtin_pack_names()
JOB = Scope.JOB


def test_all_six_packs_ship() -> None:
    assert set(SHIPPED) == {
        "demo",
        "eu-ai-act",
        "us-eo-14110",
        "ca-sb-53",
        "ny-raise",
        "operator-default",
    }


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_pack_passes_the_check(name: str) -> None:
    result = check_files([builtin_pack_path(name)])
    assert result.findings == ()
    (pack,) = result.packs
    assert pack.name == name
    if pack.regulatory:
        assert all(r.source is not None for r in pack.rules)


def test_all_shipped_packs_load_together_without_clashing_ids() -> None:
    packs = load_packs(SHIPPED)
    ids = [r.id for p in packs for r in p.rules]
    assert len(ids) == len(set(ids))
    RuleEngine(packs)


@pytest.mark.parametrize("name", SHIPPED)
def test_the_published_schema_accepts_each_shipped_pack(name: str) -> None:
    schema = json.loads(resources.files("rules").joinpath("schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    doc = parse(builtin_pack_path(name).read_text())
    assert list(Draft202012Validator(schema).iter_errors(doc.data)) == []


def _jobs(
    t: float,
    flop: dict[str, float],
    lineage: dict[str, tuple[str, ...]],
    upper: dict[str, float] | None = None,
) -> Snapshot:
    """Jobs' cumulative estimates; upper bounds equal to them unless given."""
    values = {
        (JOB, j): {
            "cumulative_flop": v,
            "cumulative_flop_upper_bound": (upper or {}).get(j, v),
        }
        for j, v in flop.items()
    }
    return Snapshot(time=t, values=values, lineage=lineage)


def test_eu_ai_act_alerts_above_1e25_with_the_article_in_the_reason() -> None:
    engine = RuleEngine(load_packs(["eu-ai-act"]))
    out = engine.evaluate(_jobs(0, {"4242": 1.2e25, "small": 1e22}, {}))
    fired = {d.rule.id: d for d in out if d.kind is DecisionKind.FIRE}
    assert set(fired) == {
        "eu-ai-act-systemic-risk-compute",
        "eu-ai-act-approaching-systemic-risk",
        "eu-ai-act-gpai-indicative-compute",
    }
    d = fired["eu-ai-act-systemic-risk-compute"]
    assert d.action is Action.ALERT
    assert d.key == "4242"
    assert "1.2e25 FLOP > 1e25 FLOP" in d.reason
    assert "Art. 51(2)" in d.reason


def test_eu_ai_act_alerts_on_the_upper_bound_of_an_fp8_run() -> None:
    # An FP8 run: the estimate (BF16 rates) reads half its operations.
    engine = RuleEngine(load_packs(["eu-ai-act"]))
    out = engine.evaluate(_jobs(0, {"fp8": 6e24}, {}, upper={"fp8": 1.2e25}))
    d = next(d for d in out if d.rule.id == "eu-ai-act-systemic-risk-compute")
    assert d.kind is DecisionKind.FIRE
    assert (d.estimate, d.upper_bound, d.value) == (6e24, 1.2e25, 1.2e25)
    assert "by the upper bound; estimate 6e24 FLOP" in d.reason


def test_a_demo_halt_compares_the_estimate_and_a_straddle_is_possibly_crossed() -> None:
    engine = RuleEngine(load_packs(["demo"]))
    out = engine.evaluate(_jobs(0, {"j": 2e17}, {}, upper={"j": 4e17}))
    kinds = {(d.rule.id, d.kind) for d in out}
    assert ("demo-job-cumulative", DecisionKind.POSSIBLE) in kinds
    assert ("demo-job-cumulative", DecisionKind.FIRE) not in kinds
    assert [(r.id, k) for r, k in engine.possibly_crossed()] == [("demo-job-cumulative", "j")]
    # The estimate crosses: the halt fires and the key is no longer "possibly".
    out = engine.evaluate(_jobs(1, {"j": 3e17}, {}, upper={"j": 5e17}))
    assert ("demo-job-cumulative", DecisionKind.FIRE) in {(d.rule.id, d.kind) for d in out}
    assert engine.possibly_crossed() == []


@pytest.mark.parametrize("name", ["ca-sb-53", "ny-raise"])
def test_state_laws_count_the_compute_of_the_model_a_job_fine_tunes(name: str) -> None:
    engine = RuleEngine(load_packs([name]))
    lineage = {"base": (), "ft": ("base",)}
    # Neither job alone passes 1e26; the fine-tune with its base does.
    out = engine.evaluate(_jobs(0, {"base": 8e25, "ft": 3e25}, lineage))
    assert [(d.kind, d.key, d.action) for d in out] == [(DecisionKind.FIRE, "ft", Action.ALERT)]
    assert out[0].value == pytest.approx(1.1e26)


def test_us_eo_14110_is_historical_and_only_records() -> None:
    (pack,) = load_packs(["us-eo-14110"])
    assert pack.historical
    assert "14148" in pack.note
    assert {r.action for r in pack.rules} == {Action.RECORD}
    engine = RuleEngine([pack])
    snap = Snapshot(
        time=0,
        values={
            # BF16 capacity under the line; at any precision (FP8) over it.
            (Scope.CLUSTER, CLUSTER_KEY): {
                "installed_flops": 0.6e20,
                "installed_flops_upper_bound": 1.2e20,
            },
            (JOB, "bio"): {"cumulative_flop": 2e23, "cumulative_flop_upper_bound": 2e23},
        },
    )
    out = {d.rule.id: d for d in engine.evaluate(snap) if d.kind is DecisionKind.FIRE}
    assert set(out) == {"us-eo-14110-cluster-capacity", "us-eo-14110-bio-sequence-compute"}
    assert "historical" in out["us-eo-14110-cluster-capacity"].reason


def test_operator_default_names_silence_breaks_lost_gpus_and_halts_lineages() -> None:
    engine = RuleEngine(load_packs(["operator-default"]))
    snap = Snapshot(
        time=100,
        values={
            (Scope.NODE, "n1"): {
                "silent_seconds": 40.0,
                "chain_breaks": 1.0,
                "gpus_lost": 1.0,
                "gpus_unreadable": 0.0,
            },
            (Scope.NODE, "n2"): {
                "silent_seconds": 0.0,
                "chain_breaks": 0.0,
                "gpus_lost": 0.0,
                "gpus_unreadable": 2.0,
            },
            (Scope.CLUSTER, CLUSTER_KEY): {"gpus_unknown_model": 0.0},
            (JOB, "base"): {"cumulative_flop": 1.0, "capability:cyber-offense": 0.9},
            (JOB, "ft"): {"cumulative_flop": 1.0},
        },
        lineage={"ft": ("base",)},
    )
    out = [(d.rule.id, d.key, d.targets) for d in engine.evaluate(snap)]
    assert out == [
        ("op-node-silent", "n1", ("n1",)),
        ("op-chain-break", "n1", ("n1",)),
        ("op-gpu-lost", "n1", ("n1",)),
        ("op-gpu-unreadable", "n2", ("n2",)),
        ("op-capability-cyber-offense", "base", ("base", "ft")),
    ]
