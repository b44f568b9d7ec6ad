"""The pack checker and loader: every mistake, with file, line and rule id."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.accounting.snapshot import Scope
from collector.rules.checks import Finding, parse_duration
from collector.rules.load import (
    RuleCheckError,
    builtin_pack_names,
    builtin_pack_path,
    check_files,
    load_packs,
    resolve_pack,
)
from collector.rules.model import Action, Bound, Comparison, Lineage
from protos.errors import RuleError

DATA = Path(__file__).resolve().parents[2] / "data" / "rules"

GOOD = """\
pack: good
version: "3"
description: A valid pack.
source: {instrument: Test Act, article: Art. 1, url: "https://example.org/act"}
rules:
  - id: good-cumulative
    description: Cumulative compute.
    metric: cumulative_flop
    bound: upper_bound
    scope: job
    comparison: ">="
    threshold: 1e25
    unit: FLOP
    for: 1m
    hysteresis: 1E+24
    action: alert
  - id: good-throttle
    description: Hot GPU.
    metric: power_watts
    scope: gpu
    comparison: ">"
    threshold: 650
    unit: watts
    power_cap_watts: 400
    action: throttle
  - id: good-capability
    description: Capability.
    metric: capability:cyber-offense
    scope: job
    comparison: ">="
    threshold: 0.5
    unit: score
    lineage: descendants
    action: halt
    source: {instrument: Other Policy}
"""


def findings(*names: str) -> list[Finding]:
    return list(check_files([DATA / n for n in names]).findings)


def lines(found: list[Finding]) -> list[tuple[int, str]]:
    return [(f.line, f.subject) for f in found]


def test_a_valid_pack_loads_into_typed_rules(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    (pack,) = load_packs([path])
    assert (pack.name, pack.version, pack.path) == ("good", "3", str(path))
    cum, throttle, cap = pack.rules
    assert cum.threshold == 1e25
    assert isinstance(cum.threshold, float)
    assert cum.hysteresis == 1e24
    assert cum.for_seconds == 60.0
    assert cum.bound is Bound.UPPER_BOUND
    assert cum.comparison is Comparison.GE
    assert cum.scope is Scope.JOB
    assert cum.source is not None
    assert str(cum.source) == "Test Act Art. 1"
    assert cum.origin == f"{path}:6"
    assert cum.pack == "good"
    assert throttle.action is Action.THROTTLE
    assert throttle.power_cap_watts == 400.0
    assert cap.lineage is Lineage.DESCENDANTS
    assert cap.source is not None
    assert cap.source.instrument == "Other Policy"


def test_every_mistake_is_named_with_its_line_and_rule() -> None:
    found = findings("many-mistakes.yaml")
    assert lines(found) == [
        (12, "rule unit-mismatch"),
        (17, "rule unknown-metric"),
        (31, "rule throttle-without-cap"),
        (40, "rule negative-hysteresis"),
        (50, "rule lineage-on-node"),
        (57, "rule bad-comparison"),
        (62, "rule misspelt-field"),
        (67, "rule misspelt-field"),
        (73, "rule metric-at-wrong-scope"),
        (80, "rule unit-mismatch"),
        (87, "rule unit-mismatch"),
    ]
    text = [str(f) for f in found]
    file = str(DATA / "many-mistakes.yaml")
    assert text[0] == (
        f"{file}:12: rule unit-mismatch: unit FLOP/s does not match metric cumulative_flop,"
        " expected unit FLOP"
    )
    assert "metric 'flux_capacitance' is not published at scope node" in text[1]
    assert "throttle without power_cap_watts" in text[2]
    assert "hysteresis is -1e15, expected a number >= 0" in text[3]
    assert "lineage on a rule of scope node" in text[4]
    assert "comparison is '=>', expected one of >, >=, <, <=" in text[5]
    assert "missing field 'threshold'" in text[6]
    assert "unknown field 'thresold'" in text[7]
    assert "expected scope node for silent_seconds" in text[8]
    assert "id already used at line 6" in text[9]
    assert "for is '30 seconds'" in text[10]


def test_semantic_mistakes_beyond_the_schema() -> None:
    found = findings("more-mistakes.yaml")
    by_line = {f.line: str(f) for f in found}
    assert sorted(by_line) == [6, 15, 25, 33, 42, 48, 61, 70, 82]
    assert "pack more-mistakes: url is 'http://insecure.example'" in by_line[6]
    assert "power_cap_watts on a halt rule" in by_line[15]
    assert "puts the clear point below 0" in by_line[25]
    assert "threshold is 150 percent" in by_line[33]
    assert "threshold is -5" in by_line[42]
    assert "capability metric at scope job" in by_line[48]
    assert "field 'threshold' appears twice" in by_line[61]
    assert "threshold is '1e25' (a string), expected a number" in by_line[70]
    assert "power_cap_watts is 0, expected a cap in watts > 0" in by_line[82]


def test_pack_level_mistakes() -> None:
    text = [str(f) for f in findings("pack-level.yaml")]
    assert any("missing field 'description'" in t for t in text)
    assert any("pack is 'Pack-Level'" in t for t in text)
    assert any(":4: " in t and "historical pack without a note" in t for t in text)
    assert any(":5: " in t and "unknown field 'owner'" in t for t in text)
    assert any(":7: rule no-source: no source in a regulatory pack" in t for t in text)


def test_yaml_and_document_shape_errors() -> None:
    (syntax,) = findings("syntax-error.yaml")
    assert syntax.subject == "yaml"
    assert syntax.line == 6
    assert syntax.expected == "well-formed YAML"
    (shape,) = findings("not-a-mapping.yaml")
    assert (shape.line, shape.what) == (1, "the document is a list")


def test_unreadable_empty_and_binary_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    missing = tmp_path / "missing.yaml"
    found = check_files([empty, binary, missing]).findings
    text = {f.file: str(f) for f in found}
    assert "the document is a null" in text[str(empty)]
    assert "not UTF-8" in text[str(binary)]
    assert "cannot read the file" in text[str(missing)]


def test_duplicates_across_files_are_found_even_beside_other_mistakes() -> None:
    found = findings("dup-a.yaml", "dup-b.yaml", "many-mistakes.yaml")
    dup = [str(f) for f in found if f.file.endswith("dup-b.yaml")]
    a = DATA / "dup-a.yaml"
    assert dup == [
        f"{DATA / 'dup-b.yaml'}:1: pack dup: pack name already used at {a}:1,"
        " expected a pack name unique among packs",
        f"{DATA / 'dup-b.yaml'}:13: rule shared-id: id already used at {a}:5,"
        " expected a rule id unique across every pack",
    ]


def test_load_packs_raises_with_every_finding() -> None:
    with pytest.raises(RuleCheckError) as info:
        load_packs([DATA / "many-mistakes.yaml", DATA / "more-mistakes.yaml"])
    err = info.value
    assert isinstance(err, RuleError)
    assert err.reason == "rule"
    assert len(err.findings) == 20
    assert str(err).startswith("20 problems in rule packs:\n")
    assert all(str(f) in str(err) for f in err.findings)


def test_shipped_packs_resolve_by_name_and_unknown_names_are_refused(tmp_path: Path) -> None:
    names = builtin_pack_names()
    assert set(names) >= {
        "demo",
        "eu-ai-act",
        "us-eo-14110",
        "ca-sb-53",
        "ny-raise",
        "operator-default",
    }
    assert builtin_pack_path("demo").name == "demo.yaml"
    assert resolve_pack("demo") == builtin_pack_path("demo")
    with pytest.raises(RuleError, match="no shipped rule pack named 'nope'; shipped packs: "):
        builtin_pack_path("nope")
    with pytest.raises(RuleError, match="no shipped rule pack"):
        builtin_pack_path("../schema")
    with pytest.raises(RuleError, match="does not exist"):
        resolve_pack(tmp_path / "absent.yaml")
    local = tmp_path / "demo"
    local.write_text(GOOD)
    assert resolve_pack(local) == local
    assert load_packs([]) == ()


def test_an_unreadable_path_is_a_finding_not_a_crash(tmp_path: Path) -> None:
    (f,) = check_files([tmp_path]).findings
    assert f.what.startswith("cannot read the file (")
    assert f.expected == "a readable file"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("500ms", 0.5), ("1.5s", 1.5), (12, 12.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["30", "5 m", "-1s", "1d", True, -3, float("inf")])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@given(st.text(max_size=400))
def test_the_checker_never_raises_on_arbitrary_text(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "p.yaml"
    path.write_text(text, encoding="utf-8")
    result = check_files([path])
    assert result.ok == bool(result.packs)
    assert all(f.line >= 1 for f in result.findings)


_rule_fields = st.fixed_dictionaries(
    {},
    optional={
        "id": st.sampled_from(["a", "b", "Bad Id", 3]),
        "description": st.sampled_from(["d", "", None]),
        "metric": st.sampled_from(
            ["cumulative_flop", "achieved_flops", "capability:x", "nope", "silent_seconds"]
        ),
        "scope": st.sampled_from(["job", "node", "cluster", "gpu", "rack"]),
        "comparison": st.sampled_from([">", ">=", "<", "==", 1]),
        "threshold": st.one_of(st.floats(allow_nan=True), st.integers(), st.text(max_size=3)),
        "unit": st.sampled_from(["FLOP", "FLOP/s", "seconds", "score", "parsecs"]),
        "for": st.sampled_from(["30s", "x", -1, 5]),
        "hysteresis": st.one_of(st.floats(allow_nan=True), st.just("h")),
        "action": st.sampled_from(["record", "halt", "throttle", "explode"]),
        "power_cap_watts": st.one_of(st.floats(allow_nan=True), st.none()),
        "lineage": st.sampled_from(["self", "descendants", "cousins"]),
    },
)


@given(st.lists(_rule_fields, max_size=4))
def test_structured_garbage_never_crashes_and_good_results_build(
    tmp_path_factory: pytest.TempPathFactory, rules: list[dict[str, object]]
) -> None:
    import yaml

    doc = {"pack": "fuzz", "version": "1", "description": "d", "rules": rules}
    path = tmp_path_factory.mktemp("fuzz") / "p.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    result = check_files([path])
    if result.ok:
        (pack,) = result.packs
        assert len(pack.rules) == len(rules)
    else:
        assert result.packs == ()


def test_alias_bombs_and_control_characters_are_refused_quickly(tmp_path: Path) -> None:
    (bomb,) = findings("alias-bomb.yaml")
    assert bomb.subject == "yaml"
    assert "expands to more than 100000 nodes" in bomb.what
    ctl = tmp_path / "ctl.yaml"
    ctl.write_text("pack: a\nversion: '1'\n\x07\n", encoding="utf-8")
    (f,) = check_files([ctl]).findings
    assert (f.line, f.what) == (3, "character U+0007 is not allowed")


def test_a_compute_rule_must_say_which_bound_it_compares(tmp_path: Path) -> None:
    no_bound = GOOD.replace("    bound: upper_bound\n", "")
    path = tmp_path / "no-bound.yaml"
    path.write_text(no_bound)
    (finding,) = check_files([path]).findings
    assert finding.line == 8
    assert finding.what == "no bound on a rule over cumulative_flop, an interval"
    assert "bound: estimate or bound: upper_bound" in finding.expected
    misplaced = GOOD.replace(
        "    power_cap_watts: 400\n", "    power_cap_watts: 400\n    bound: estimate\n"
    )
    path.write_text(misplaced)
    (finding,) = check_files([path]).findings
    assert finding.what == "bound on power_watts, which is not an interval"
