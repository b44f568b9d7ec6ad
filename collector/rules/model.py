"""Rules, packs and decisions: frozen values that validate themselves.

The loader (``collector.rules.load``) reports every mistake in a pack with its
file and line before it builds these; the constructors check again so that
code past the boundary never holds a rule that cannot be evaluated.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from collector.accounting.snapshot import BOUNDED_METRICS, Scope
from collector.rules.metrics import metric_unit
from protos.errors import RuleError

# The longest ``for`` a rule may have (30 days; rules/schema.json says the same).
MAX_FOR_SECONDS = 30 * 86_400.0


class Comparison(StrEnum):
    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="

    @property
    def upward(self) -> bool:
        """True when the rule fires on high values (``>`` and ``>=``)."""
        return self in (Comparison.GT, Comparison.GE)

    def test(self, value: float, threshold: float) -> bool:
        return _OPS[self](value, threshold)


_OPS: dict[Comparison, Callable[[float, float], bool]] = {
    Comparison.GT: operator.gt,
    Comparison.GE: operator.ge,
    Comparison.LT: operator.lt,
    Comparison.LE: operator.le,
}


class Action(StrEnum):
    RECORD = "record"
    ALERT = "alert"
    THROTTLE = "throttle"
    HALT = "halt"
    TERMINATE = "terminate"


class Lineage(StrEnum):
    SELF = "self"
    # The job and every job descended from it (``Snapshot.lineage``).
    DESCENDANTS = "descendants"


class Bound(StrEnum):
    """Which end of a compute interval a rule compares (``bound:`` in a pack)."""

    ESTIMATE = "estimate"
    UPPER_BOUND = "upper_bound"


class DecisionKind(StrEnum):
    FIRE = "fire"
    CLEAR = "clear"
    UNKNOWN = "unknown"
    # The interval [estimate, upper bound] straddles the threshold while the
    # rule's own bound does not cross it: said once, no action taken.
    POSSIBLE = "possibly_crossed"


@dataclass(frozen=True)
class Source:
    """The legal or policy text a rule encodes."""

    instrument: str
    article: str = ""
    url: str = ""

    def __str__(self) -> str:
        return f"{self.instrument} {self.article}".strip()


@dataclass(frozen=True)
class Rule:
    """One threshold: ``metric`` at ``scope`` compared with ``threshold``."""

    id: str
    description: str
    metric: str
    scope: Scope
    comparison: Comparison
    threshold: float
    unit: str
    action: Action
    for_seconds: float = 0.0
    hysteresis: float = 0.0
    power_cap_watts: float | None = None
    lineage: Lineage = Lineage.SELF
    # The rule's own source, or its pack's.
    source: Source | None = None
    pack: str = ""
    historical: bool = False
    # "FILE:LINE" where the rule was defined ("" when built in code).
    origin: str = ""
    # For a compute metric (``BOUNDED_METRICS``): the bound compared. Packs must
    # say it (``rules check``); code may rely on the estimate default.
    bound: Bound = Bound.ESTIMATE

    @property
    def bounded(self) -> bool:
        return self.metric in BOUNDED_METRICS

    def __post_init__(self) -> None:
        def bad(what: str) -> RuleError:
            return RuleError(f"rule {self.id or '?'}: {what}")

        if not self.id:
            raise bad("id is empty")
        expected = metric_unit(self.scope, self.metric)
        if expected is None:
            raise bad(f"metric {self.metric!r} is not published at scope {self.scope}")
        if self.unit != expected:
            raise bad(f"unit {self.unit!r} does not match metric {self.metric} ({expected})")
        if not math.isfinite(self.threshold):
            raise bad(f"threshold {self.threshold!r} is not a finite number")
        if not (math.isfinite(self.for_seconds) and 0 <= self.for_seconds <= MAX_FOR_SECONDS):
            raise bad(f"for {self.for_seconds!r} is not a duration from 0 to {MAX_FOR_SECONDS:g} s")
        if not (math.isfinite(self.hysteresis) and self.hysteresis >= 0):
            raise bad(f"hysteresis {self.hysteresis!r} is not a number >= 0")
        if self.action is Action.THROTTLE:
            cap = self.power_cap_watts
            if cap is None or not (math.isfinite(cap) and cap > 0):
                raise bad("a throttle rule needs power_cap_watts > 0")
        elif self.power_cap_watts is not None:
            raise bad("power_cap_watts is only meaningful on a throttle rule")
        if self.lineage is Lineage.DESCENDANTS and self.scope is not Scope.JOB:
            raise bad("lineage: descendants needs scope job")
        if self.bound is Bound.UPPER_BOUND and not self.bounded:
            raise bad(f"bound: upper_bound on {self.metric}, which is not an interval")

    def holds(self, value: float) -> bool:
        """Whether ``value`` satisfies the comparison (the rule would fire)."""
        return self.comparison.test(value, self.threshold)

    def cleared(self, value: float) -> bool:
        """Whether a firing rule stops holding at ``value``, hysteresis applied.

        Without hysteresis: as soon as the comparison fails. With it: an
        upward rule (``>``, ``>=``) clears below ``threshold - hysteresis``, a
        downward one above ``threshold + hysteresis``.
        """
        if not self.hysteresis:
            return not self.holds(value)
        if self.comparison.upward:
            return value < self.threshold - self.hysteresis
        return value > self.threshold + self.hysteresis


@dataclass(frozen=True)
class RulePack:
    name: str
    version: str
    description: str
    rules: tuple[Rule, ...]
    source: Source | None = None
    historical: bool = False
    note: str = ""
    regulatory: bool = False
    # The file the pack was loaded from ("" when built in code).
    path: str = ""

    def __post_init__(self) -> None:
        ids = [r.id for r in self.rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise RuleError(f"pack {self.name}: duplicate rule ids {', '.join(dupes)}")
        if self.historical and not self.note:
            raise RuleError(f"pack {self.name}: a historical pack needs a note saying why")


@dataclass(frozen=True)
class Decision:
    """What the engine concluded about one rule at one key at one tick."""

    rule: Rule
    kind: DecisionKind
    scope: Scope
    key: str
    # None when unknown.
    value: float | None
    time: float
    reason: str
    # Keys the action applies to: ``(key,)``, or for a job rule with
    # ``lineage: descendants`` the job and every descendant job.
    targets: tuple[str, ...]
    # Ledger positions of the reports the value rests on.
    log_indices: tuple[int, ...] = field(default=())
    # Both ends of the interval for a compute metric (None: unknown), the
    # estimate's method and the GPU-seconds no report measured.
    estimate: float | None = None
    upper_bound: float | None = None
    method: str = ""
    unmeasured_gpu_seconds: float | None = None
    # An unknown for a key no report has reached yet (start-up, not a fault).
    awaiting_data: bool = False

    @property
    def threshold(self) -> float:
        return self.rule.threshold

    @property
    def unit(self) -> str:
        return self.rule.unit

    @property
    def comparison(self) -> Comparison:
        return self.rule.comparison

    @property
    def action(self) -> Action:
        return self.rule.action

    @property
    def metric(self) -> str:
        return self.rule.metric

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready summary (for ``rules test --json`` and logs)."""
        return {
            "time": self.time,
            "kind": str(self.kind),
            "rule": self.rule.id,
            "pack": self.rule.pack,
            "scope": str(self.scope),
            "key": self.key,
            "metric": self.rule.metric,
            "value": self.value,
            "comparison": str(self.rule.comparison),
            "threshold": self.rule.threshold,
            "unit": self.rule.unit,
            "action": str(self.rule.action),
            "targets": list(self.targets),
            "log_indices": list(self.log_indices),
            "reason": self.reason,
            "bound": str(self.rule.bound) if self.rule.bounded else None,
            "estimate": self.estimate,
            "upper_bound": self.upper_bound,
            "method": self.method or None,
            "unmeasured_gpu_seconds": self.unmeasured_gpu_seconds,
        }
