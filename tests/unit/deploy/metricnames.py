"""What the code exports to Prometheus, read from its source, and PromQL checks.

The exported names are read from every ``*MetricFamily``/``Counter``/
``Gauge``/... call in the packages (names built from literals, f-strings over
prefix variables and loop variables over literal tuples are resolved), so the
checks follow the code as it changes; tests check the reader itself against
live registries.
"""

from __future__ import annotations

import ast
import functools
import itertools
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
PACKAGES = ("agent", "collector", "protos", "computewatch", "rules")
# Labels the scrape adds (deploy/prometheus/scrape.yml and the chart's
# ServiceMonitor put the node name on agent series as `node`).
TARGET_LABELS = frozenset({"instance", "job", "namespace", "pod", "service", "endpoint"})
AGENT_TARGET_LABELS = frozenset({"node"})
AGENT_PREFIXES = ("computewatch_agent_", "computewatch_gpu_")


# --- what the code exports, read from its source ----------------------------------

_UNRESOLVED = "\x00"


@dataclass
class Family:
    name: str
    kind: str  # counter, gauge, histogram, summary, info, unknown
    labels: frozenset[str] | None  # None: could not be read from the source
    where: str


_FAMILY_KINDS = {
    "CounterMetricFamily": "counter",
    "GaugeMetricFamily": "gauge",
    "HistogramMetricFamily": "histogram",
    "SummaryMetricFamily": "summary",
    "InfoMetricFamily": "info",
}
# prometheus_client's metric classes: Counter(name, documentation, labelnames, ...).
_CLASS_KINDS = {
    "Counter": "counter",
    "Gauge": "gauge",
    "Histogram": "histogram",
    "Summary": "summary",
    "Info": "info",
}


def _callee_kind(name: str) -> str | None:
    """The metric type a call creates: the classes above, or a small helper
    named after its type (``_counter(name, doc, value)``)."""
    if name in _FAMILY_KINDS:
        return _FAMILY_KINDS[name]
    if name in _CLASS_KINDS:
        return _CLASS_KINDS[name]
    low = name.lower()
    for key in ("histogram", "summary", "counter", "gauge"):
        if key in low:
            return key
    return None


class _Bindings:
    """Values each name is bound to in one scope (assignments and for loops)."""

    def __init__(self, nodes: Iterator[ast.AST]) -> None:
        self.values: dict[str, list[ast.expr]] = defaultdict(list)
        for node in nodes:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    self._bind(target, node.value)
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                self._bind(node.target, node.value)
            elif isinstance(node, ast.For | ast.comprehension):
                for item in self._elements(node.iter):
                    self._bind(node.target, item)

    def _elements(self, it: ast.expr) -> list[ast.expr]:
        if isinstance(it, ast.Tuple | ast.List | ast.Set):
            return list(it.elts)
        if isinstance(it, ast.Name):
            return [e for v in self.values.get(it.id, []) for e in self._elements(v)]
        return []

    def _bind(self, target: ast.expr, value: ast.expr) -> None:
        if isinstance(target, ast.Name):
            self.values[target.id].append(value)
        elif (
            isinstance(target, ast.Tuple)
            and isinstance(value, ast.Tuple)
            and len(target.elts) == len(value.elts)
        ):
            for t, v in zip(target.elts, value.elts, strict=True):
                self._bind(t, v)


def _strings(expr: ast.expr, scopes: list[_Bindings], depth: int = 0) -> set[str]:
    """Every string ``expr`` can take; unresolvable parts become _UNRESOLVED."""
    if depth > 8:
        return {_UNRESOLVED}
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return {expr.value}
    if isinstance(expr, ast.JoinedStr):
        parts = []
        for value in expr.values:
            if isinstance(value, ast.FormattedValue):
                parts.append(_strings(value.value, scopes, depth + 1))
            else:
                parts.append(_strings(value, scopes, depth + 1))
        return {"".join(p) for p in itertools.product(*parts)}
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        left = _strings(expr.left, scopes, depth + 1)
        right = _strings(expr.right, scopes, depth + 1)
        return {a + b for a in left for b in right}
    if isinstance(expr, ast.Name):
        for scope in scopes:
            if expr.id in scope.values:
                out: set[str] = set()
                for value in scope.values[expr.id]:
                    out |= _strings(value, scopes, depth + 1)
                return out
    return {_UNRESOLVED}


def _labels(call: ast.Call, kind: str, scopes: list[_Bindings]) -> frozenset[str] | None:
    arg: ast.expr | None = None
    for kw in call.keywords:
        if kw.arg in ("labels", "labelnames"):
            arg = kw.value
    if arg is None and len(call.args) >= 3 and _callee_name(call) in _CLASS_KINDS:
        arg = call.args[2]
    if arg is None:
        return frozenset()
    candidates = [arg]
    if isinstance(arg, ast.Name):
        candidates = [v for s in scopes for v in s.values.get(arg.id, [])]
    out: set[str] = set()
    for value in candidates:
        if not isinstance(value, ast.List | ast.Tuple):
            return None
        for elt in value.elts:
            if not (isinstance(elt, ast.Constant) and isinstance(elt.value, str)):
                return None
            out.add(elt.value)
    return frozenset(out) if candidates else None


def _callee_name(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def _source_files() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "_pb2" not in path.name:
                yield path


def families_from_source() -> list[Family]:
    found: list[Family] = []
    for path in _source_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        module_scope = _Bindings(
            n for stmt in tree.body if not isinstance(stmt, ast.FunctionDef) for n in ast.walk(stmt)
        )
        funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        seen: set[int] = set()
        jobs: list[tuple[list[_Bindings], ast.Call]] = []
        for func in funcs:
            scopes = [_Bindings(ast.walk(func)), module_scope]
            for node in ast.walk(func):
                if isinstance(node, ast.Call) and id(node) not in seen:
                    seen.add(id(node))
                    jobs.append((scopes, node))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and id(node) not in seen:
                jobs.append(([module_scope], node))
        for scopes, call in jobs:
            kind = _callee_kind(_callee_name(call))
            if kind is None:
                continue
            name_arg = call.args[0] if call.args else None
            for kw in call.keywords:
                if kw.arg == "name":
                    name_arg = kw.value
            if name_arg is None:
                continue
            for name in _strings(name_arg, scopes):
                if name.startswith("computewatch_"):
                    where = f"{path.relative_to(ROOT)}:{call.lineno}"
                    found.append(Family(name, kind, _labels(call, kind, scopes), where))
    return found


def series_of(name: str, kind: str) -> dict[str, frozenset[str]]:
    """Exposed series names of a family and the labels each adds."""
    none: frozenset[str] = frozenset()
    if kind == "counter":
        base = name.removesuffix("_total")
        return {f"{base}_total": none}
    if kind == "histogram":
        return {f"{name}_bucket": frozenset({"le"}), f"{name}_sum": none, f"{name}_count": none}
    if kind == "summary":
        return {name: frozenset({"quantile"}), f"{name}_sum": none, f"{name}_count": none}
    if kind == "info":
        return {f"{name}_info": none}
    return {name: none}


@dataclass
class Exported:
    exact: dict[str, frozenset[str] | None]  # series -> labels (None: unknown)
    patterns: list[re.Pattern[str]]  # names built from parts the reader could not resolve

    def has(self, series: str) -> bool:
        return series in self.exact or any(p.fullmatch(series) for p in self.patterns)

    def labels(self, series: str) -> frozenset[str] | None:
        return self.exact.get(series)


def exported_from(families: list[Family]) -> Exported:
    exact: dict[str, frozenset[str] | None] = {}
    patterns: list[re.Pattern[str]] = []
    for fam in families:
        for series, extra in series_of(fam.name, fam.kind).items():
            if _UNRESOLVED in series:
                parts = (re.escape(p) for p in series.split(_UNRESOLVED))
                patterns.append(re.compile("[a-z0-9_]*".join(parts)))
                continue
            labels = None if fam.labels is None else fam.labels | extra
            if series in exact:
                old = exact[series]
                exact[series] = None if old is None or labels is None else old | labels
            else:
                exact[series] = labels
    return Exported(exact, patterns)


# --- PromQL names and label matchers (syntax: promtool and Prometheus) ----------------

_METRIC = re.compile(r"\b(computewatch_[a-z0-9_]+)\b")
_SELECTOR = re.compile(r"\b(computewatch_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def _reasons() -> set[str]:
    import protos.errors as errors

    return {
        cls.reason
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.Error)
    }


@functools.cache
def _source_text() -> str:
    return "\n".join(p.read_text() for p in _source_files())


def check_expr(expr: str, exported: Exported, where: str) -> list[str]:
    """Problems with one PromQL expression's names and label matchers.

    Syntax is the real tools' job: ``promtool check rules`` parses every alert
    (test_promtool.py) and a real Prometheus evaluates every dashboard and
    alert expression (tests/integration/test_prometheus_live.py).
    """
    problems: list[str] = []
    names = set(_METRIC.findall(expr))
    for name in sorted(names):
        if not exported.has(name):
            problems.append(f"{where}: {name} is not exported by the code")
    source = _source_text()
    for name, body in _SELECTOR.findall(expr):
        labels = exported.labels(name)
        allowed = TARGET_LABELS | (
            AGENT_TARGET_LABELS if name.startswith(AGENT_PREFIXES) else set()
        )
        for label, op, value in _MATCHER.findall(body):
            if labels is not None and label not in labels | allowed:
                problems.append(f"{where}: {name} has no label {label!r} (has {sorted(labels)})")
            if label == "reason" and op in ("=", "=~"):
                unknown = set(value.split("|")) - _reasons()
                if unknown:
                    problems.append(f"{where}: reason(s) {sorted(unknown)} not in protos.errors")
            elif op == "=" and label not in allowed and f'"{value}"' not in source:
                problems.append(f"{where}: {name}{{{label}={value!r}}}: value not in the code")
    return problems


def available_labels(expr: str, exported: Exported) -> set[str] | None:
    """Labels an alert's result can carry (None: unknown)."""
    groupings = _GROUPING.findall(expr)
    if groupings:
        return {g.strip() for grouping in groupings for g in grouping.split(",") if g.strip()}
    out: set[str] = set(TARGET_LABELS)
    for name in _METRIC.findall(expr):
        labels = exported.labels(name)
        if labels is None:
            return None
        out |= labels
        if name.startswith(AGENT_PREFIXES):
            out |= AGENT_TARGET_LABELS
    return out
