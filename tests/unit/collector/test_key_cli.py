"""The key commands, through click: one line out, one line per error, exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.nodes.registry import list_nodes
from computewatch.cli import cli
from protos.keys import load_private_key
from tests.pg_support import BACKENDS, backend_location


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.output


@pytest.fixture(params=BACKENDS)
def ledger_args(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """``--ledger FILE`` for SQLite, ``--ledger-url-file FILE`` for PostgreSQL."""
    location = backend_location(request, tmp_path)
    if isinstance(location, Path):
        return ["--ledger", str(location)]
    url_file = tmp_path / "ledger.url"
    url_file.write_text(f"\n{location}\n")
    return ["--ledger-url-file", str(url_file)]


def _location(ledger_args: list[str]) -> str:
    flag, value = ledger_args
    return value if flag == "--ledger" else Path(value).read_text().strip()


def test_handover_and_revocations_through_the_cli(tmp_path: Path, ledger_args: list[str]) -> None:
    ledger = ledger_args
    for name in ("a-old", "a-new", "b", "auth"):
        assert _run("keys", "generate", "--out", str(tmp_path / f"{name}.key"))[0] == 0
    for node, key in (("node-a", "a-old"), ("node-b", "b")):
        code, out = _run(
            "nodes", "enroll", *ledger, "--node-id", node,
            "--public-key", str(tmp_path / f"{key}.key.pub"),
        )  # fmt: skip
        assert code == 0, out
    env = tmp_path / "handover.env"
    code, out = _run(
        "keys", "handover", "--node-id", "node-a", "--old", str(tmp_path / "a-old.key"),
        "--new", str(tmp_path / "a-new.key"), "--out", str(env),
    )  # fmt: skip
    assert code == 0, out
    code, out = _run("nodes", "handover", *ledger, str(env))
    assert code == 0, out
    new = load_private_key(tmp_path / "a-new.key")
    assert out.strip() == f"node-a handed over to key {new.keyid}"
    # The same handover again: the old key is no longer node-a's.
    code, out = _run("nodes", "handover", *ledger, str(env))
    assert code == 1
    assert out.startswith("Error: key_event:")
    code, out = _run("nodes", "revoke", *ledger, "--node-id", "node-b")
    assert code == 0, out
    assert [n.node_id for n in list_nodes(_location(ledger))] == ["node-a"]
    code, out = _run("nodes", "list", *ledger)
    assert (code, out.split("\t")[0]) == (0, "node-a"), out
    code, out = _run("nodes", "revoke-authority", *ledger, "--key", str(tmp_path / "auth.key.pub"))
    assert code == 0, out
    code, out = _run(
        "nodes", "enroll", *ledger, "--node-id", "node-c",
        "--public-key", str(tmp_path / "b.key.pub"),
    )  # fmt: skip
    assert code == 1
    assert "can never be enrolled again" in out


def test_revoke_and_handover_refuse_a_ledger_that_does_not_exist(tmp_path: Path) -> None:
    """A mistyped --ledger is one line and exit 2, not a new empty ledger."""
    typo = tmp_path / "typo.db"
    assert _run("keys", "generate", "--out", str(tmp_path / "k.key"))[0] == 0
    env = tmp_path / "k.key.pub"
    for args in (
        ("nodes", "revoke", "--ledger", str(typo), "--node-id", "node-a"),
        ("nodes", "revoke-authority", "--ledger", str(typo), "--key", str(env)),
        ("nodes", "handover", "--ledger", str(typo), str(env)),
    ):
        code, out = _run(*args)
        assert code == 2, (args, out)
        assert "Error: Invalid value for '--ledger'" in out, out
        assert "does not exist" in out, out
    assert not typo.exists()


def test_ledger_options_refuse_both_none_and_unreadable_and_warn_of_a_password(
    tmp_path: Path,
) -> None:
    key = tmp_path / "k.key"
    assert _run("keys", "generate", "--out", str(key))[0] == 0
    enroll = ("nodes", "enroll", "--node-id", "n", "--public-key", f"{key}.pub")
    code, out = _run(*enroll)
    assert code == 2
    assert "exactly one of --ledger and --ledger-url-file" in out
    empty = tmp_path / "empty.url"
    empty.write_text("\n")
    code, out = _run(*enroll, "--ledger", str(tmp_path / "l.db"), "--ledger-url-file", str(empty))
    assert code == 2
    assert "exactly one" in out
    code, out = _run(*enroll, "--ledger-url-file", str(empty))
    assert code == 2
    assert "Invalid value for '--ledger-url-file'" in out
    assert "no ledger URL" in out
    code, out = _run(*enroll, "--ledger", "mysql://u@h/db")
    assert code == 2
    assert "names no backend" in out
    # A URL with a password on the command line works, with a warning; the
    # password never appears in what is printed.
    code, out = _run(*enroll, "--ledger", "postgresql://cw:hunter2@127.0.0.1:1/x?connect_timeout=2")
    assert code == 1
    assert "--ledger-url-file" in out
    assert "cannot connect" in out
    assert "hunter2" not in out
