"""Which metric a rule may name at which scope, its unit, and how to say it.

The aggregator publishes the metrics in ``collector.accounting.snapshot.METRICS``; the
unit follows from the name's suffix. Two families are added here:

- ``capability:<evaluation>`` (job scope, unit ``score``): the latest signed
  evaluation score for the job's model;
- ``lineage_cumulative_flop`` (job scope, unit ``FLOP``): computed by the
  engine as the job's own cumulative compute plus that of every ancestor in
  ``Snapshot.lineage`` (a fine-tune counts its parents' compute).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from collector.accounting.snapshot import METRICS, Scope

CAPABILITY_PREFIX = "capability:"
LINEAGE_CUMULATIVE_FLOP = "lineage_cumulative_flop"

UNITS: tuple[str, ...] = ("FLOP", "FLOP/s", "seconds", "count", "watts", "percent", "score")

# The name of a capability evaluation: what follows ``capability:``.
CAPABILITY_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

_SUFFIX_UNITS: tuple[tuple[str, str], ...] = (
    ("_flops", "FLOP/s"),
    ("_flop", "FLOP"),
    ("_seconds", "seconds"),
    ("_watts", "watts"),
    ("_percent", "percent"),
)

# Plain-language names used in decision reasons.
_PHRASES: Mapping[str, str] = {
    "installed_flops": "installed capacity",
    "allocated_flops": "allocated capacity",
    "achieved_flops": "achieved compute rate",
    "cumulative_flop": "cumulative compute",
    "cumulative_7d_flop": "cumulative compute over 7 days",
    "cumulative_30d_flop": "cumulative compute over 30 days",
    "cumulative_90d_flop": "cumulative compute over 90 days",
    "jobs": "running jobs",
    LINEAGE_CUMULATIVE_FLOP: "cumulative compute including its lineage",
    "nodes_silent": "silent nodes",
    "gpus_lost": "lost GPUs",
    "gpus_unreadable": "unreadable GPUs",
    "gpus_unknown_model": "GPUs of unknown model",
    "chain_breaks": "chain breaks",
    "silent_seconds": "silence",
    "gpus": "GPUs",
    "utilization_percent": "utilization",
    "power_watts": "power draw",
}


def unit_of_name(metric: str) -> str:
    """The unit a metric's name implies (``count`` when it has no unit suffix)."""
    if metric.startswith(CAPABILITY_PREFIX):
        return "score"
    for suffix, unit in _SUFFIX_UNITS:
        if metric.endswith(suffix):
            return unit
    return "count"


def is_capability(metric: str) -> bool:
    return metric.startswith(CAPABILITY_PREFIX)


def metric_unit(scope: Scope, metric: str) -> str | None:
    """The unit of ``metric`` at ``scope``, or None when it is not published there."""
    if metric in METRICS[scope]:
        return unit_of_name(metric)
    if scope is Scope.JOB:
        if metric == LINEAGE_CUMULATIVE_FLOP:
            return "FLOP"
        if is_capability(metric) and CAPABILITY_NAME.match(metric[len(CAPABILITY_PREFIX) :]):
            return "score"
    return None


def metrics_at(scope: Scope) -> tuple[str, ...]:
    """Every metric a rule may name at ``scope`` (capability as a pattern)."""
    extra: tuple[str, ...] = ()
    if scope is Scope.JOB:
        extra = (LINEAGE_CUMULATIVE_FLOP, f"{CAPABILITY_PREFIX}<evaluation>")
    return (*METRICS[scope], *extra)


def scopes_with(metric: str) -> tuple[Scope, ...]:
    """The scopes at which ``metric`` is published (for error messages)."""
    return tuple(s for s in Scope if metric_unit(s, metric) is not None)


def phrase(metric: str) -> str:
    if is_capability(metric):
        return f"{metric[len(CAPABILITY_PREFIX) :]} capability score"
    return _PHRASES.get(metric, metric.replace("_", " "))


def format_number(value: float) -> str:
    """Three significant figures, exponents as ``1.2e25`` (no ``+``, no padding)."""
    text = f"{value:.3g}"
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    sign = "-" if exponent.startswith("-") else ""
    return f"{mantissa}e{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"


def format_quantity(value: float, unit: str) -> str:
    if unit == "count":
        return format_number(value)
    if unit == "percent":
        return f"{format_number(value)}%"
    if unit == "seconds":
        return f"{format_number(value)} s"
    if unit == "score":
        return format_number(value)
    if unit == "watts":
        return f"{format_number(value)} W"
    return f"{format_number(value)} {unit}"
