"""Move the collector's flat modules into sub-packages and rewrite every reference.

Run at the repository root of the merged tree (idempotent: a second run changes nothing):

    python tools/relayout.py            # check, rewrite, git mv, ruff
    python tools/relayout.py --check    # only say what would move; exit 1 if anything would

The mapping, the packages and their docstrings are in ``tools/collector_layout.toml``
(``tests/unit/test_layering.py`` reads the same file). Steps:

1. Inventory: every ``collector/**/*.py`` must be a move's source or target, a ``[keep]``
   module or a declared top-level module; anything else stops the run before a file is
   touched, with a suggested ``[moves]`` line (modules added by other branches meanwhile).
   A ``[moves]`` entry whose module is gone (deleted on a branch) is only a warning; a
   ``[landing]`` entry applies where its module exists and is silently skipped otherwise.
2. Rewrite references in every tracked text file (``tests/data/`` excepted, only warned about):
   ``from collector import x`` / ``from collector.store import ha_x`` statements whose names
   are moved modules (split per new package, aliased to keep the local name), relative
   imports, dotted names anywhere (``import collector.x as z``, ``from collector.x import
   y``, ``"collector.x"`` for logging and monkeypatch, ``python -m collector.x``), paths
   (``collector/x.py``), renamed modules named bare in Markdown backticks, and
   ``collector/*...`` globs in pyproject.toml (expanded to the new paths).
3. ``git mv`` each pending module; write each package's ``__init__.py`` docstring.
4. ``ruff check --fix --select I`` and ``ruff format`` on the Python files it changed.

A branch merged after the move (git follows the renames for its edits) may still bring old
names or flat modules: run the script again, it rewrites those and reports these.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import io
import re
import shutil
import subprocess
import sys
import tokenize
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

LAYOUT = Path(__file__).with_name("collector_layout.toml")
# Not rewritten: the layout names the old paths on purpose, and so do the script's tests.
SELF = {"tools/relayout.py", "tools/collector_layout.toml", "tests/unit/tools/test_relayout.py"}
NOT_REWRITTEN = ("tests/data/",)
# "collector/ledger.sqlite3" is a data file, not the module ``collector.ledger``.
DATA_SUFFIXES = {"sqlite", "sqlite3", "db", "toml", "key", "pub", "pem", "log", "json", "yaml"}
DATA_SUFFIXES |= {"yml", "txt", "md", "prof", "csv", "py"}
Rewrite = Callable[[str], str]


class LayoutError(Exception):
    """The tree and the declared layout disagree; nothing was changed."""


def dotted(path: str) -> str:
    """``collector/store/ledger.py`` -> ``collector.store.ledger`` (a package -> its name)."""
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@dataclass(frozen=True)
class Layout:
    moves: dict[str, str]  # old path -> new path
    keep: frozenset[str]
    top_modules: frozenset[str]  # "server" for collector/server.py
    package_docs: dict[str, str]  # "" is the collector package itself
    suggest: dict[str, str]
    optional: frozenset[str]  # [landing] entries: ignored where the module does not exist

    @classmethod
    def load(cls, path: Path = LAYOUT) -> Layout:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        docs = {name: str(spec["doc"]) for name, spec in data["package"].items()}
        docs[""] = str(data["collector"]["doc"])
        landing = data.get("landing", {})
        landing_moves: dict[str, str] = dict(landing.get("moves", {}))
        landing_keep: list[str] = list(landing.get("keep", []))
        layout = cls(
            moves=dict(data["moves"]) | landing_moves,
            keep=frozenset([*data["keep"]["modules"], *landing_keep]),
            top_modules=frozenset(data["module"]),
            package_docs=docs,
            suggest=dict(data.get("suggest", {})),
            optional=frozenset([*landing_moves, *landing_keep]),
        )
        layout.check()
        return layout

    @property
    def module_moves(self) -> dict[str, str]:
        return {dotted(old): dotted(new) for old, new in self.moves.items()}

    def check(self) -> None:
        """The mapping is one-to-one, lands in declared units, and no old name is a prefix
        of a name that exists afterwards (so the rewrite can never apply twice)."""
        targets = list(self.moves.values())
        if len(set(targets)) != len(targets):
            raise LayoutError("two modules move to the same path")
        after = {dotted(p) for p in [*targets, *self.keep]}
        after |= {f"collector.{m}" for m in self.top_modules}
        after |= {f"collector.{p}".rstrip(".") for p in self.package_docs}
        for old in self.module_moves:
            clash = sorted(a for a in after if a == old or a.startswith(old + "."))
            if clash:
                raise LayoutError(f"old name {old} is still a name after the move: {clash}")
        for new in targets:
            parts = new.split("/")
            if len(parts) != 3 or parts[1] not in self.package_docs:
                raise LayoutError(f"{new}: not in a declared package")

    def suggestion(self, path: str) -> str:
        for pattern, target in self.suggest.items():
            if fnmatch.fnmatchcase(path, pattern) and path.count("/") == pattern.count("/"):
                stem = Path(path).stem
                head, tail = pattern.split("*", 1)
                star = path[len(head) : len(path) - len(tail)]
                return f'"{path}" = "{target.replace("*", star or stem)}"'
        return f'"{path}" = "collector/<package>/{Path(path).name}"   # or add it to [keep]'


def inventory(root: Path, layout: Layout) -> tuple[list[str], list[str]]:
    """(moves still to do, stale entries: modules deleted meanwhile); raises LayoutError
    for a module the layout does not know, or one at both its old and new place."""
    present = {p.relative_to(root).as_posix() for p in (root / "collector").rglob("*.py")}
    tops = {f"collector/{m}.py" for m in layout.top_modules}
    inits = {f"collector/{p}/__init__.py" for p in layout.package_docs if p}
    known = set(layout.moves) | set(layout.moves.values()) | layout.keep | tops | inits
    problems = [
        f"not in tools/collector_layout.toml: {p}\n    suggested: {layout.suggestion(p)}"
        for p in sorted(present - known)
    ]
    pending, stale = [], []
    for old, new in sorted(layout.moves.items()):
        if old in present and new in present:
            problems.append(f"both {old} and {new} exist: merge them by hand first")
        elif old in present:
            pending.append(old)
        elif new not in present:
            stale.append(old)
    if problems:
        raise LayoutError("\n".join(problems))
    stale += sorted(layout.keep - present)
    return pending, stale


# ------------------------------------------------------------------ Python sources
# In Python, code is rewritten from the syntax tree (``collector.ledger`` in code is as often
# an attribute of a variable named ``collector`` as the module), strings and comments by
# the text rewrites (logger names, monkeypatch targets, docstrings).

Edit = tuple[tuple[int, int], tuple[int, int], str]  # (line, column) start and end, text


def _map_module(name: str, moves: dict[str, str]) -> str:
    for old, new in moves.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return name


def _as(name: str, alias: str | None) -> str:
    return name if alias is None or alias == name else f"{name} as {alias}"


def _from_import(node: ast.ImportFrom, package: str, moved: bool, moves: dict[str, str]) -> str:
    """The statement(s) replacing ``node``, separated by NUL; "" where nothing changes."""
    base = node.module or ""
    if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    changed = bool(node.level) and (moved or base in moves)
    names_moved = False
    groups: dict[str, list[str]] = {}
    for alias in node.names:
        full = f"{base}.{alias.name}"
        if full in moves:
            parent, _, name = moves[full].rpartition(".")
            groups.setdefault(parent, []).append(_as(name, alias.asname or alias.name))
            changed = names_moved = True
        else:
            module = _map_module(base, moves)
            changed |= module != base
            groups.setdefault(module, []).append(_as(alias.name, alias.asname))
    if not changed:
        return ""
    if not node.level and not names_moved:
        return f"from {next(iter(groups))} "  # the module only: the names stay as written
    return "\0".join(f"from {m} import {', '.join(ns)}" for m, ns in groups.items())


def _code_edits(tree: ast.Module, path: str, moves: dict[str, str]) -> list[Edit]:
    own = dotted(path)
    package = own if path.endswith("__init__.py") else own.rpartition(".")[0]
    binds_package = False
    edits: list[Edit] = []
    for node in ast.walk(tree):
        text = ""
        if isinstance(node, ast.ImportFrom) and (node.level or "collector" in (node.module or "")):
            text = _from_import(node, package, own in moves, moves)
        elif isinstance(node, ast.Import):
            binds_package |= any(
                a.name.startswith("collector.") and not a.asname for a in node.names
            )
            if any(_map_module(a.name, moves) != a.name for a in node.names):
                names = [_as(_map_module(a.name, moves), a.asname) for a in node.names]
                text = f"import {', '.join(names)}"
        if text.endswith(" "):  # ``from NEW `` replaces ``from OLD `` (comments kept)
            assert isinstance(node, ast.ImportFrom)
            start = (node.lineno, node.col_offset)
            edits.append(
                (start, (node.lineno, node.col_offset + len(f"from {node.module} ")), text)
            )
        elif text:
            edits.append(_edit(node, text))
    if binds_package:  # ``import collector.x``: then ``collector.x.y`` in code is the module
        inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        for node in ast.walk(tree):
            chain = "" if id(node) in inner else _dotted_attribute(node)
            if chain and _map_module(chain, moves) != chain:
                edits.append(_edit(node, _map_module(chain, moves)))
    return edits


def _dotted_attribute(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return (
        ".".join(["collector", *reversed(parts)])
        if isinstance(node, ast.Name) and (node.id == "collector" and parts)
        else ""
    )


def _edit(node: ast.stmt | ast.expr | ast.AST, text: str) -> Edit:
    assert isinstance(node, ast.stmt | ast.expr)
    assert node.end_lineno is not None
    assert node.end_col_offset is not None
    return ((node.lineno, node.col_offset), (node.end_lineno, node.end_col_offset), text)


def rewrite_python(text: str, path: str, moves: dict[str, str], rewrites: list[Rewrite]) -> str:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text
    lines = text.splitlines(keepends=True)

    def chars(line: int, byte_col: int) -> tuple[int, int]:  # ast columns count UTF-8 bytes
        return line, len(lines[line - 1].encode()[:byte_col].decode())

    edits = [(chars(*a), chars(*b), t) for a, b, t in _code_edits(tree, path, moves)]
    taken = [(a, b) for a, b, _ in edits]
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    for tok in tokens:
        if tok.type not in (tokenize.STRING, tokenize.COMMENT):
            continue
        if any(a <= tok.start and tok.end <= b for a, b in taken):
            continue
        new = tok.string
        for rewrite in rewrites:
            new = rewrite(new)
        if new != tok.string:
            edits.append((tok.start, tok.end, new))
    first_applied = (len(lines) + 1, 0)
    for (line, col), (end_line, end_col), new in sorted(edits, reverse=True):
        if (end_line, end_col) > first_applied:
            continue  # inside an edit already made (code in an f-string)
        first_applied = (line, col)
        head, tail = lines[line - 1][:col], lines[end_line - 1][end_col:]
        # NUL separates statements: each on its own line, or after ``;`` where the first
        # follows ``try:`` or another statement on its line.
        joined = new.replace("\0", "; " if head.strip() else "\n" + head)
        lines[line - 1 : end_line] = [head + joined + tail]
    return "".join(lines)


# ------------------------------------------------------------------ text rewrites


def name_rewrites(layout: Layout, tracked: Iterable[str]) -> tuple[list[Rewrite], list[Rewrite]]:
    """(rewrites for every file, extra rewrites for Markdown)."""
    every: list[Rewrite] = []
    markdown: list[Rewrite] = []
    basenames = [Path(p).stem for p in tracked if p.endswith(".py")]
    for old, new in sorted(layout.moves.items()):
        old_mod, new_mod = dotted(old), dotted(new)
        old_stem, new_rel = old.removesuffix(".py"), new.removesuffix(".py")
        every.append(_sub(rf"(?<![\w.]){re.escape(old_mod)}(?!\w)", new_mod))
        every.append(_sub(rf"(?<![\w./-]){re.escape(old)}(?!\w)", new))
        every.append(_attr_path(old_stem, new_rel))
        stem = Path(old).stem
        if stem != Path(new).stem and basenames.count(stem) == 1:
            markdown.append(_sub(rf"(?<=`){re.escape(stem)}\.py(?=`)", new))
            markdown.append(_sub(rf"(?<=`){re.escape(stem)}(?=[`.(])", new_mod))
    return every, markdown


def _sub(pattern: str, replacement: str) -> Rewrite:
    compiled = re.compile(pattern)
    return lambda text: compiled.sub(lambda _: replacement, text)


def _attr_path(old_stem: str, new_rel: str) -> Rewrite:
    """``collector/ingest._follow`` (a path naming an attribute), not ``.../ledger.sqlite3``."""
    compiled = re.compile(rf"(?<![\w./-]){re.escape(old_stem)}\.([A-Za-z_]\w*)")

    def replace(match: re.Match[str]) -> str:
        if match.group(1).lower() in DATA_SUFFIXES:
            return match.group(0)
        return f"{new_rel}.{match.group(1)}"

    return lambda text: compiled.sub(replace, text)


def expand_globs(text: str, layout: Layout) -> str:
    """``"collector/*_service.py" = [...]`` in pyproject.toml -> one line per new path."""
    before = [*layout.moves, *layout.keep]
    line_re = re.compile(r'^(\s*)"(collector/[^"]*\*[^"]*)"(\s*=.*)$', re.MULTILINE)

    def replace(match: re.Match[str]) -> str:
        indent, pattern, rest = match.groups()
        hits = [p for p in before if fnmatch.fnmatchcase(p, pattern)]
        hits = [p for p in hits if p.count("/") == pattern.count("/")]
        if not any(p in layout.moves for p in hits):
            return match.group(0)
        paths = sorted(layout.moves.get(p, p) for p in hits)
        return "\n".join(f'{indent}"{p}"{rest}' for p in paths)

    return line_re.sub(replace, text)


def git(root: Path, *args: str) -> str:
    exe = shutil.which("git")
    if exe is None:
        raise LayoutError("git not found")
    return subprocess.run([exe, *args], cwd=root, check=True, capture_output=True, text=True).stdout


def tracked_files(root: Path) -> list[str]:
    out = git(root, "ls-files", "-co", "--exclude-standard")
    return sorted(set(out.splitlines()))


def rewrite_tree(root: Path, layout: Layout, skip: set[str]) -> list[str]:
    """Rewrite references in every tracked text file but ``skip``; returns those changed."""
    files = tracked_files(root)
    every, markdown = name_rewrites(layout, files)
    moves = layout.module_moves
    changed = []
    for rel in files:
        path = root / rel
        if rel in skip or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if rel.endswith(".py"):
            new = rewrite_python(text, rel, moves, every)
        else:
            new = text
            for rewrite in every + (markdown if rel.endswith(".md") else []):
                new = rewrite(new)
        if rel == "pyproject.toml":
            new = expand_globs(new, layout)
        if new == text:
            continue
        if rel.startswith(NOT_REWRITTEN):
            print(f"warning: {rel} names moved modules; test data left as is", file=sys.stderr)
            continue
        path.write_text(new, encoding="utf-8")
        changed.append(rel)
    return changed


# ------------------------------------------------------------------ moves and packages


def set_docstring(path: Path, doc: str) -> bool:
    """Make ``doc`` the module docstring of ``path`` (created if missing); True if changed."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f'"""{doc}\n"""\n' if "\n" in doc else f'"""{doc}"""\n'
    body = ast.parse(text).body
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        if first.value.value == doc or first.value.value == doc + "\n":
            return False
        assert first.end_lineno is not None
        rest = "".join(text.splitlines(keepends=True)[first.end_lineno :])
        new = block + rest
    else:
        new = block + ("\n" + text if text.strip() else "")
    path.write_text(new, encoding="utf-8")
    return True


def move(root: Path, layout: Layout, pending: list[str]) -> list[str]:
    """``git mv`` the pending modules and write every package docstring; returns the
    Python files created or changed here."""
    touched = []
    for old in pending:
        new = layout.moves[old]
        (root / new).parent.mkdir(parents=True, exist_ok=True)
        git(root, "mv", old, new)
        touched.append(new)
    for name, doc in sorted(layout.package_docs.items()):
        init = root / "collector" / name / "__init__.py" if name else root / "collector/__init__.py"
        if set_docstring(init, doc):
            rel = init.relative_to(root).as_posix()
            git(root, "add", rel)
            touched.append(rel)
    return touched


def ruff(root: Path, files: list[str]) -> None:
    py = sorted({f for f in files if f.endswith(".py") and (root / f).is_file()})
    if not py:
        return
    local = root / ".venv/bin/ruff"
    found = shutil.which("ruff")
    exe = [str(local)] if local.exists() else [found] if found else [sys.executable, "-m", "ruff"]
    subprocess.run([*exe, "check", "--fix", "--select", "I", "--quiet", *py], cwd=root, check=True)
    subprocess.run([*exe, "format", "--quiet", *py], cwd=root, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    parser.add_argument("--check", action="store_true", help="report only; change nothing")
    parser.add_argument("--layout", type=Path, default=LAYOUT, help="the layout file")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    try:
        layout = Layout.load(args.layout)
        pending, stale = inventory(root, layout)
    except LayoutError as err:
        print(f"relayout: stopped, nothing changed:\n{err}", file=sys.stderr)
        return 2
    for gone in stale:  # deleted on some branch: its old name is left alone
        if gone not in layout.optional:
            print(f"warning: {gone} is gone: delete it from tools/collector_layout.toml")
    layout = replace(
        layout,
        moves={o: n for o, n in layout.moves.items() if o not in stale},
        keep=layout.keep - set(stale),
    )
    for old in pending:
        print(f"move {old} -> {layout.moves[old]}")
    if args.check:
        return 1 if pending else 0
    skip = set(SELF)  # the layout file names the old paths on purpose
    layout_file = args.layout.resolve()
    if layout_file.is_relative_to(root):
        skip.add(layout_file.relative_to(root).as_posix())
    changed = rewrite_tree(root, layout, skip)
    touched = move(root, layout, pending)
    renamed = {old: new for old, new in layout.moves.items() if old in pending}
    files = sorted({renamed.get(f, f) for f in changed} | set(touched))
    ruff(root, files)
    print(f"relayout: {len(pending)} modules moved, {len(files)} files rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
