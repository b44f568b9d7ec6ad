"""The collector's layering, checked on the tree as it is (issue 12, part 5).

The layout is declared once, in ``tools/collector_layout.toml``: sub-packages and top-level
modules ("units"), the units each may import (a DAG), the flat layout's moves, and named
exceptions. ``tools/relayout.py`` applies the moves. These tests read the same file and work
in both states of the tree:

- before the move (flat modules still there), each module is translated through ``[moves]``
  to the place it will have, so the package DAG and the module cycles are checked now, and a
  module the layout does not know (added meanwhile on another branch) fails;
- after it, the same checks run on the real packages, plus: no flat module is left, and
  every package exists with a docstring. Nothing here is skipped in either state.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = tomllib.loads((ROOT / "tools/collector_layout.toml").read_text(encoding="utf-8"))
PACKAGES: dict[str, dict[str, object]] = LAYOUT["package"]
TOP_MODULES: dict[str, dict[str, object]] = LAYOUT["module"]
LANDING = LAYOUT.get("landing", {})
# [landing] entries (modules that branches in flight add or delete) count where they exist.
OPTIONAL = {*LANDING.get("moves", {}), *LANDING.get("keep", [])}
MOVES: dict[str, str] = {
    old: new
    for old, new in (LAYOUT["moves"] | LANDING.get("moves", {})).items()
    if old not in OPTIONAL or (ROOT / old).exists() or (ROOT / new).exists()
}
KEEP = {
    p
    for p in [*LAYOUT["keep"]["modules"], *LANDING.get("keep", [])]
    if p not in OPTIONAL or (ROOT / p).exists()
}
LANDING_EDGES = {(str(a), str(b)) for a, b in LANDING.get("edges", [])}
EXCEPTIONS = {(e["importer"], e["imported"]) for e in LAYOUT.get("exception", [])}
MOVED = not any((ROOT / old).exists() for old in MOVES)
STATE = "after the move" if MOVED else "before the move"


def dotted(path: str) -> str:
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


NEW_NAME = {dotted(old): dotted(new) for old, new in MOVES.items()}


def allowed(unit: str) -> set[str]:
    spec = PACKAGES.get(unit) or TOP_MODULES[unit]
    imports = spec["imports"]
    assert isinstance(imports, list)
    return {str(u) for u in imports}


def unit_of(module: str) -> str | None:
    """The unit of a module by its name after the move; None where the layout has none."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in PACKAGES:
        return parts[1]
    if len(parts) == 2 and parts[1] in TOP_MODULES:
        return parts[1]
    return None


@dataclass(frozen=True)
class Import:
    importer: str  # module names after the move
    imported: str
    when: str  # "import" (module level), "type_checking", or "late" (in a function)


def sources(top: str) -> dict[str, Path]:
    return {
        dotted(p.relative_to(ROOT).as_posix()): p
        for p in sorted((ROOT / top).rglob("*.py"))
        if "_pb2" not in p.name
    }


def raw_imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, str]]:
    """(imported module, when) for every import in ``path``, resolved against ``known``."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]

    def visit(body: list[ast.stmt], when: str) -> Iterator[tuple[str, str]]:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield from visit(node.body, "late")
            elif isinstance(node, ast.Import):
                yield from ((a.name, when) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    yield (full if full in known else base), when
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                yield from visit(node.body, "type_checking")
                yield from visit(node.orelse, when)
            else:  # class bodies, if/for/while/with/try/match blocks: still import time
                for field in ("body", "orelse", "finalbody"):
                    yield from visit(getattr(node, field, []), when)
                for clause in [*getattr(node, "handlers", []), *getattr(node, "cases", [])]:
                    yield from visit(clause.body, when)

    yield from visit(ast.parse(path.read_text(encoding="utf-8")).body, "import")


def collector_imports() -> list[Import]:
    """Every import between collector modules, by the modules' names after the move."""
    found = sources("collector")
    known = set(found)
    out = []
    for name, path in found.items():
        for imported, when in raw_imports(name, path, known):
            if imported.startswith("collector.") and imported in known:
                importer, target = NEW_NAME.get(name, name), NEW_NAME.get(imported, imported)
                if not importer.startswith(target + "."):  # a module's own package
                    out.append(Import(importer, target, when))
    return out


IMPORTS = collector_imports()


def unit_edges() -> dict[tuple[str, str], list[Import]]:
    edges: dict[tuple[str, str], list[Import]] = {}
    for imp in IMPORTS:
        if (imp.importer, imp.imported) in EXCEPTIONS:
            continue
        a, b = unit_of(imp.importer), unit_of(imp.imported)
        if a is not None and b is not None and a != b:
            edges.setdefault((a, b), []).append(imp)
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_every_collector_module_has_a_place_in_the_layout() -> None:
    present = {p.relative_to(ROOT).as_posix() for p in (ROOT / "collector").rglob("*.py")}
    homeless = sorted(p for p in present if unit_of(NEW_NAME.get(dotted(p), dotted(p))) is None)
    homeless = [p for p in homeless if p != "collector/__init__.py"]
    assert not homeless, (
        f"{STATE}: modules in no declared unit (add them to tools/collector_layout.toml): "
        f"{homeless}"
    )
    stale = [old for old, new in MOVES.items() if old not in present and new not in present]
    stale += sorted(KEEP - present)
    assert not stale, f"gone from the tree, delete from tools/collector_layout.toml: {stale}"
    done = [new for new in MOVES.values() if new in present]
    if MOVED:
        # After the move: no flat module came back.
        flat = sorted(p for p in present if p.count("/") == 1 and p != "collector/__init__.py")
        assert flat == sorted(f"collector/{m}.py" for m in TOP_MODULES), flat
    else:
        # Before: the tree is wholly flat (never half moved), and every module is listed, so
        # one added meanwhile is noticed before tools/relayout.py runs.
        assert not done, f"half moved: {done}; run tools/relayout.py"
        inits = {f"collector/{p}/__init__.py" for p in PACKAGES}
        tops = {f"collector/{m}.py" for m in TOP_MODULES}
        unknown = sorted(present - set(MOVES) - KEEP - tops - inits)
        assert not unknown, f"not in tools/collector_layout.toml ([moves] or [keep]): {unknown}"


def test_the_declared_units_form_a_dag() -> None:
    graph = {u: allowed(u) for u in [*PACKAGES, *TOP_MODULES]}
    unknown = {u: sorted(d - set(graph)) for u, d in graph.items() if d - set(graph)}
    assert not unknown
    assert not any(u in d for u, d in graph.items()), "a unit lists itself"
    assert cycles(graph) == []


def test_units_import_only_what_the_layout_allows() -> None:
    """All imports count here, late ones and those under TYPE_CHECKING included."""
    edges = unit_edges()
    wrong = [
        f"{a} -> {b}: " + ", ".join(sorted({f"{i.importer} imports {i.imported}" for i in imps}))
        for (a, b), imps in sorted(edges.items())
        if b not in allowed(a)
    ]
    assert not wrong, f"{STATE}: imports the DAG does not allow:\n" + "\n".join(wrong)


def test_every_declared_edge_is_used() -> None:
    """The declared DAG is the real one (docs/architecture.md draws it): no stale edge. Before
    the move, edges that only branches in flight use ([landing] edges) may be unused."""
    declared = {(u, d) for u in [*PACKAGES, *TOP_MODULES] for d in allowed(u)}
    assert declared >= LANDING_EDGES
    unused = declared - set(unit_edges())
    stale = sorted(unused if MOVED else unused - LANDING_EDGES)
    assert not stale, (
        f"{STATE}: declared but unused, delete from tools/collector_layout.toml: {stale}"
        + (" ([landing] edges: the branch that needed them has not landed)" if MOVED else "")
    )


def test_no_import_cycle_between_collector_modules() -> None:
    """Module-level imports (TYPE_CHECKING included) never form a cycle; imports inside a
    function (the sanctioned way to reach up, e.g. store.migrations -> ledger_store) do not
    count here but do count for the package DAG above."""
    graph: dict[str, set[str]] = {}
    for imp in IMPORTS:
        if imp.when != "late" and (imp.importer, imp.imported) not in EXCEPTIONS:
            graph.setdefault(imp.importer, set()).add(imp.imported)
    found = cycles(graph)
    assert not found, f"{STATE}: modules that import each other: {found}"


def test_each_listed_exception_still_happens() -> None:
    """An exception that no longer happens must go from the layout file, so none lingers."""
    happening = {(i.importer, i.imported) for i in IMPORTS}
    gone = sorted(EXCEPTIONS - happening)
    assert not gone, f"no longer imported, delete these [[exception]] entries: {gone}"


@pytest.mark.parametrize(
    ("top", "forbidden"),
    [("agent", {"collector"}), ("collector", {"agent"}), ("protos", {"agent", "collector"})],
)
def test_agent_collector_and_protos_stay_apart(top: str, forbidden: set[str]) -> None:
    found = sources(top)
    bad = sorted(
        f"{name} imports {imported}"
        for name, path in found.items()
        for imported, _ in raw_imports(name, path, set(found))
        if imported.split(".")[0] in forbidden
    )
    assert not bad


def test_every_package_says_what_it_does() -> None:
    """Each declared package that exists (after the move: all of them) has a docstring, and
    docs/architecture.md names each one."""
    doc = (ROOT / "docs/architecture.md").read_text(encoding="utf-8")
    for name in PACKAGES:
        assert f"`collector/{name}/`" in doc, f"docs/architecture.md does not name {name}"
        init = ROOT / "collector" / name / "__init__.py"
        if MOVED:
            assert init.exists(), f"{STATE}: collector/{name}/ is missing"
        if init.exists():
            assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), init
