"""Semantic checks on a pack that parsed, and building the pack from it.

The schema checks shape; these check meaning: is the metric published at the
scope, does the unit match the metric, does a throttle say its cap, does
hysteresis leave a reachable clear point, is lineage used on a job rule, does
a regulatory rule cite its source. Each check looks only at fields that have
the right type (the schema has already named the others).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from yaml.nodes import Node

from collector.accounting.snapshot import BOUNDED_METRICS, Scope
from collector.rules import yamlsrc
from collector.rules.metrics import (
    UNITS,
    format_number,
    is_capability,
    metric_unit,
    metrics_at,
    scopes_with,
)
from collector.rules.model import (
    MAX_FOR_SECONDS,
    Action,
    Bound,
    Comparison,
    Lineage,
    Rule,
    RulePack,
    Source,
)
from protos.errors import RuleError


@dataclass(frozen=True)
class Finding:
    """One mistake: where, about what, what was wrong, what was expected."""

    file: str
    line: int
    # "rule <id>", "pack <name>", "pack" or "yaml"
    subject: str
    what: str
    expected: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.subject}: {self.what}, expected {self.expected}"


_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class _Where:
    """A rule's place in a file: findings about its fields point at their lines."""

    file: str
    node: Node | None
    subject: str

    def at(self, field: str, what: str, expected: str) -> Finding:
        node = yamlsrc.child(self.node, field) or self.node
        return Finding(self.file, yamlsrc.line_of(node), self.subject, what, expected)


_At = Callable[[str, str, str], Finding]


def parse_duration(value: object) -> float:
    """``30s``/``5m``/``1h``/``500ms`` or a number of seconds; ValueError otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_SECONDS[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration")
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"{value!r} is not a duration >= 0")
    if seconds > MAX_FOR_SECONDS:
        raise ValueError(f"{value!r} is longer than {MAX_FOR_SECONDS:g} s (30 days)")
    return seconds


def subject_for(data: object, path: Sequence[object]) -> str:
    """Whom a finding at ``path`` is about: the rule it sits in, or the pack."""
    if isinstance(data, dict) and len(path) >= 2 and path[0] == "rules":
        rules = data.get("rules")
        i = path[1]
        if isinstance(rules, list) and isinstance(i, int) and 0 <= i < len(rules):
            rule = rules[i]
            rid = rule.get("id") if isinstance(rule, dict) else None
            return f"rule {rid}" if isinstance(rid, str) and rid else f"rule #{i + 1}"
    name = data.get("pack") if isinstance(data, dict) else None
    return f"pack {name}" if isinstance(name, str) and name else "pack"


def _num(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def check_rules(file: str, doc: yamlsrc.Document) -> Iterator[Finding]:
    """Semantic findings for one parsed pack (a mapping)."""
    data = doc.data
    if not isinstance(data, dict):
        return
    if data.get("historical") is True and not data.get("note"):
        node = yamlsrc.child(doc.root, "historical")
        what = "historical pack without a note"
        yield Finding(
            file,
            yamlsrc.line_of(node),
            subject_for(data, ()),
            what,
            "note: why and since when it is historical",
        )
    pack_has_source = isinstance(data.get("source"), dict)
    regulatory = data.get("regulatory") is True
    rules = data.get("rules")
    if not isinstance(rules, list):
        return
    first_at: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            continue
        rnode = yamlsrc.child(yamlsrc.child(doc.root, "rules"), i)
        subject = subject_for(data, ("rules", i))

        at = _Where(file, rnode, subject).at

        rid = _str(rule.get("id"))
        if rid is not None:
            if rid in first_at:
                yield at(
                    "id",
                    f"id already used at line {first_at[rid]} of this pack",
                    "a rule id unique across every loaded pack",
                )
            else:
                first_at[rid] = yamlsrc.line_of(yamlsrc.child(rnode, "id"))
        yield from _check_metric(rule, at)
        yield from _check_numbers(rule, at)
        if regulatory and not pack_has_source and not isinstance(rule.get("source"), dict):
            yield at(
                "id",
                "no source in a regulatory pack",
                "source: {instrument, article} on the rule or the pack",
            )


def _check_metric(rule: Mapping[str, object], at: _At) -> Iterator[Finding]:
    scope_text, metric, unit = (
        _str(rule.get("scope")),
        _str(rule.get("metric")),
        _str(rule.get("unit")),
    )
    scope = Scope(scope_text) if scope_text in {s.value for s in Scope} else None
    if scope is None or metric is None:
        return
    expected_unit = metric_unit(scope, metric)
    if expected_unit is None:
        elsewhere = [str(s) for s in scopes_with(metric)]
        if is_capability(metric):
            expected = "a capability metric at scope job, named capability:<evaluation>"
        elif elsewhere:
            known = ", ".join(metrics_at(scope))
            where = " or ".join(elsewhere)
            expected = f"scope {where} for {metric}, or a metric of scope {scope}: {known}"
        else:
            expected = f"a metric of scope {scope}: {', '.join(metrics_at(scope))}"
        yield at("metric", f"metric {metric!r} is not published at scope {scope}", expected)
    elif unit in UNITS and unit != expected_unit:
        yield at("unit", f"unit {unit} does not match metric {metric}", f"unit {expected_unit}")
    bound = rule.get("bound")
    if metric in BOUNDED_METRICS and bound is None:
        yield at(
            "metric",
            f"no bound on a rule over {metric}, an interval",
            "bound: estimate or bound: upper_bound (which end the rule compares)",
        )
    elif bound is not None and metric not in BOUNDED_METRICS:
        yield at(
            "bound",
            f"bound on {metric}, which is not an interval",
            f"bound only on {', '.join(sorted(BOUNDED_METRICS))} (remove it)",
        )
    lineage = rule.get("lineage")
    if lineage is not None and scope is not Scope.JOB:
        yield at(
            "lineage",
            f"lineage on a rule of scope {scope}",
            "lineage only on job rules (remove it)",
        )


def _check_numbers(rule: Mapping[str, object], at: _At) -> Iterator[Finding]:
    threshold = _num(rule.get("threshold"))
    unit = _str(rule.get("unit"))
    if threshold is not None:
        if not math.isfinite(threshold):
            yield at("threshold", f"threshold is {threshold}", "a finite number")
        elif threshold < 0:
            yield at(
                "threshold",
                f"threshold is {format_number(threshold)}",
                "a number >= 0 (every metric is >= 0)",
            )
        elif unit == "percent" and threshold > 100:
            yield at(
                "threshold",
                f"threshold is {format_number(threshold)} percent",
                "a percentage from 0 to 100",
            )
    duration = rule.get("for")
    if isinstance(duration, str) and _DURATION.match(duration):
        # The schema checks a number's range and a string's shape; a string's
        # length only shows once parsed.
        try:
            parse_duration(duration)
        except ValueError:
            yield at("for", f"for is {duration}", "a duration of at most 30 days (720h)")
    hysteresis = _num(rule.get("hysteresis"))
    if hysteresis is not None:
        comparison = _str(rule.get("comparison"))
        if not math.isfinite(hysteresis) or hysteresis < 0:
            yield at(
                "hysteresis",
                f"hysteresis is {format_number(hysteresis)}",
                "a number >= 0 in the rule's unit",
            )
        elif (
            threshold is not None
            and comparison in (">", ">=")
            and math.isfinite(threshold)
            and threshold >= 0
            and hysteresis > threshold
        ):
            what = f"hysteresis {format_number(hysteresis)} puts the clear point below 0"
            yield at("hysteresis", what, f"hysteresis <= threshold ({format_number(threshold)})")
    action = _str(rule.get("action"))
    cap_value = rule.get("power_cap_watts")
    cap = _num(cap_value)
    if action == "throttle" and cap_value is None:
        yield at(
            "action", "throttle without power_cap_watts", "power_cap_watts: a cap in watts > 0"
        )
    elif cap is not None and (not math.isfinite(cap) or cap <= 0):
        yield at(
            "power_cap_watts", f"power_cap_watts is {format_number(cap)}", "a cap in watts > 0"
        )
    if cap_value is not None and action is not None and action != "throttle":
        yield at(
            "power_cap_watts",
            f"power_cap_watts on a {action} rule",
            "power_cap_watts only on throttle rules",
        )


def _source(value: object) -> Source | None:
    if not isinstance(value, dict):
        return None
    return Source(
        instrument=str(value["instrument"]),
        article=str(value.get("article", "")),
        url=str(value.get("url", "")),
    )


def build_pack(file: str, doc: yamlsrc.Document) -> RulePack:
    """Build a pack from a document that passed every check."""
    data = doc.data
    if not isinstance(data, dict):
        raise RuleError(f"{file}: not a rule pack mapping")  # the check rules this out
    name = str(data["pack"])
    pack_source = _source(data.get("source"))
    historical = bool(data.get("historical", False))
    rules_node = yamlsrc.child(doc.root, "rules")
    rules: list[Rule] = []
    for i, r in enumerate(data["rules"]):
        cap = r.get("power_cap_watts")
        rules.append(
            Rule(
                id=r["id"],
                description=r["description"],
                metric=r["metric"],
                scope=Scope(r["scope"]),
                comparison=Comparison(r["comparison"]),
                threshold=float(r["threshold"]),
                unit=r["unit"],
                action=Action(r["action"]),
                for_seconds=parse_duration(r.get("for", 0)),
                hysteresis=float(r.get("hysteresis", 0.0)),
                power_cap_watts=float(cap) if cap is not None else None,
                lineage=Lineage(r.get("lineage", "self")),
                bound=Bound(r.get("bound", "estimate")),
                source=_source(r.get("source")) or pack_source,
                pack=name,
                historical=historical,
                origin=f"{file}:{yamlsrc.line_of(yamlsrc.child(rules_node, i))}",
            )
        )
    return RulePack(
        name=name,
        version=str(data["version"]),
        description=str(data["description"]),
        rules=tuple(rules),
        source=pack_source,
        historical=historical,
        note=str(data.get("note", "")),
        regulatory=bool(data.get("regulatory", False)),
        path=file,
    )
