"""tools/relayout.py: the rewrite of every reference, and a move run twice on a real git tree."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tools import relayout

MOVES = {
    "collector.ledger": "collector.store.ledger",
    "collector.stop_wiring": "collector.stop.wiring",
    "collector.store.ha_ingest": "collector.ha.ingest",
    "collector.chain": "collector.telemetry.chain",
}
LAYOUT = relayout.Layout(
    moves={
        "collector/ledger.py": "collector/store/ledger.py",
        "collector/stop_wiring.py": "collector/stop/wiring.py",
        "collector/store/ha_ingest.py": "collector/ha/ingest.py",
        "collector/chain.py": "collector/telemetry/chain.py",
    },
    keep=frozenset({"collector/__init__.py", "collector/store/__init__.py"}),
    top_modules=frozenset({"server"}),
    package_docs={"": "C.", "store": "S.", "stop": "P.", "ha": "H.", "telemetry": "T."},
    suggest={"collector/stop_*.py": "collector/stop/*.py"},
    optional=frozenset(),
)


def rewrite(source: str, path: str = "collector/server.py") -> str:
    every, _ = relayout.name_rewrites(LAYOUT, [])
    return relayout.rewrite_python(textwrap.dedent(source), path, MOVES, every)


def test_from_imports_split_per_new_package_and_keep_their_local_names() -> None:
    out = rewrite("""\
        from collector import ledger, server, stop_wiring as sw, chain
        from collector.store import ha_ingest, interface
        """)
    assert out == textwrap.dedent("""\
        from collector.store import ledger
        from collector import server
        from collector.stop import wiring as sw
        from collector.telemetry import chain
        from collector.ha import ingest as ha_ingest
        from collector.store import interface
        """)


def test_module_names_change_and_a_multi_line_import_keeps_its_comments() -> None:
    out = rewrite("""\
        import collector.ledger as L, os
        from collector.ledger import (
            Ledger,  # the one writer
            connect,
        )
        if TYPE_CHECKING:
            from collector.stop_wiring import StopHandle
        try: from collector import chain
        except ImportError: pass
        """)
    assert "import collector.store.ledger as L, os\n" in out
    assert "from collector.store.ledger import (\n    Ledger,  # the one writer\n" in out
    assert "    from collector.stop.wiring import StopHandle\n" in out
    assert "try: from collector.telemetry import chain\n" in out


def test_relative_imports_become_absolute_where_anything_moves() -> None:
    out = rewrite("from . import server\nfrom .ledger import Ledger\n", "collector/chain.py")
    assert out == "from collector import server\nfrom collector.store.ledger import Ledger\n"


def test_strings_and_comments_change_but_a_variable_named_collector_does_not() -> None:
    out = rewrite("""\
        '''Docs: ``collector.ledger.Ledger`` (collector/chain.py)'''
        log = logging.getLogger("collector.stop_wiring")  # see collector.ledger
        monkeypatch.setattr("collector.ledger.time", fake)
        collector.ledger.append(x)
        data = "collector/ledger.sqlite3"
        where = "collector/ledger_store.py"
        """)
    assert "``collector.store.ledger.Ledger`` (collector/telemetry/chain.py)" in out
    assert 'getLogger("collector.stop.wiring")  # see collector.store.ledger' in out
    assert '"collector.store.ledger.time"' in out
    assert "\ncollector.ledger.append(x)\n" in out  # the Collector object's attribute
    assert '"collector/ledger.sqlite3"' in out  # a data file, not the module
    assert '"collector/ledger_store.py"' in out  # another module


def test_markdown_names_renamed_modules_bare_in_backticks_and_pyproject_globs_expand() -> None:
    every, markdown = relayout.name_rewrites(LAYOUT, ["collector/stop_wiring.py"])
    text = "`stop_wiring.py` and `stop_wiring` and `collector/ledger.py` and `ledger.py`"
    for step in every + markdown:
        text = step(text)
    assert text == (
        "`collector/stop/wiring.py` and `collector.stop.wiring` and `collector/store/ledger.py`"
        " and `ledger.py`"
    )
    toml = '[x]\n"collector/*_wiring.py" = ["N802"]\n"agent/*.py" = []\n'
    assert relayout.expand_globs(toml, LAYOUT) == (
        '[x]\n"collector/stop/wiring.py" = ["N802"]\n"agent/*.py" = []\n'
    )


def test_an_old_name_that_stays_a_name_after_the_move_is_refused() -> None:
    clash = relayout.Layout(
        moves={"collector/ingest.py": "collector/ingest/core.py"},
        keep=frozenset(),
        top_modules=frozenset(),
        package_docs={"": "C.", "ingest": "I."},
        suggest={},
        optional=frozenset(),
    )
    with pytest.raises(relayout.LayoutError, match=r"collector\.ingest"):
        clash.check()


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    files = {
        "collector/__init__.py": "",
        "collector/store/__init__.py": '"""Old."""\n',
        "collector/ledger.py": '"""Ledger."""\n\nfrom collector import chain\n',
        "collector/chain.py": '"""Chain."""\n',
        "collector/stop_wiring.py": '"""Wiring."""\n\nfrom collector.ledger import x\n',
        "collector/store/ha_ingest.py": '"""HA."""\n\nimport collector.stop_wiring\n',
        "collector/server.py": '"""Server."""\n\nfrom collector import ledger, stop_wiring\n',
        "docs/a.md": "See `collector/ledger.py` and `stop_wiring`.\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    doc_lines = "\n".join(
        f'[package.{p}]\ndoc = "{d}"' for p, d in LAYOUT.package_docs.items() if p
    )
    moves = "\n".join(f'"{o}" = "{n}"' for o, n in LAYOUT.moves.items())
    (tmp_path / "layout.toml").write_text(
        f'[collector]\ndoc = "C."\n{doc_lines}\n[module.server]\nimports = []\n'
        f'[moves]\n{moves}\n[keep]\nmodules = ["collector/__init__.py", '
        f'"collector/store/__init__.py"]\n'
    )
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "flat")
    return tmp_path


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_run_moves_and_rewrites_and_a_second_run_changes_nothing(tree: Path) -> None:
    args = ["--root", str(tree), "--layout", str(tree / "layout.toml")]
    assert relayout.main([*args, "--check"]) == 1
    assert relayout.main(args) == 0
    assert not (tree / "collector/ledger.py").exists()
    server = (tree / "collector/server.py").read_text()
    assert "from collector.stop import wiring as stop_wiring" in server
    assert "from collector.store import ledger" in server
    assert "import collector.stop.wiring" in (tree / "collector/ha/ingest.py").read_text()
    assert (
        "from collector.telemetry import chain" in (tree / "collector/store/ledger.py").read_text()
    )
    assert (tree / "docs/a.md").read_text() == (
        "See `collector/store/ledger.py` and `collector.stop.wiring`.\n"
    )
    assert (tree / "collector/store/__init__.py").read_text() == '"""S."""\n'
    assert (tree / "collector/ha/__init__.py").read_text() == '"""H."""\n'
    renames = git(tree, "diff", "--cached", "-M", "--name-status")
    assert "collector/ledger.py\tcollector/store/ledger.py" in renames  # history follows
    snapshot = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert relayout.main([*args, "--check"]) == 0
    assert relayout.main(args) == 0
    after = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert after == snapshot


def test_a_module_the_layout_does_not_know_stops_the_run_before_any_change(tree: Path) -> None:
    (tree / "collector/stop_metrics.py").write_text('"""New on a branch."""\n')
    args = ["--root", str(tree), "--layout", str(tree / "layout.toml")]
    assert relayout.main(args) == 2
    assert (tree / "collector/ledger.py").exists()
    assert "stop_wiring" in (tree / "collector/server.py").read_text()
