"""The key commands, through click: one line out, one line per error, exit 1."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from collector.registry import list_nodes
from computewatch.cli import cli
from protos.keys import load_private_key


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.output


def test_handover_and_revocations_through_the_cli(tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger.db")
    for name in ("a-old", "a-new", "b", "auth"):
        assert _run("keys", "generate", "--out", str(tmp_path / f"{name}.key"))[0] == 0
    for node, key in (("node-a", "a-old"), ("node-b", "b")):
        code, out = _run(
            "nodes", "enroll", "--ledger", ledger, "--node-id", node,
            "--public-key", str(tmp_path / f"{key}.key.pub"),
        )  # fmt: skip
        assert code == 0, out
    env = tmp_path / "handover.env"
    code, out = _run(
        "keys", "handover", "--node-id", "node-a", "--old", str(tmp_path / "a-old.key"),
        "--new", str(tmp_path / "a-new.key"), "--out", str(env),
    )  # fmt: skip
    assert code == 0, out
    code, out = _run("nodes", "handover", "--ledger", ledger, str(env))
    assert code == 0, out
    new = load_private_key(tmp_path / "a-new.key")
    assert out.strip() == f"node-a handed over to key {new.keyid}"
    # The same handover again: the old key is no longer node-a's.
    code, out = _run("nodes", "handover", "--ledger", ledger, str(env))
    assert code == 1
    assert out.startswith("Error: key_event:")
    code, out = _run("nodes", "revoke", "--ledger", ledger, "--node-id", "node-b")
    assert code == 0, out
    assert [n.node_id for n in list_nodes(Path(ledger))] == ["node-a"]
    code, out = _run(
        "nodes", "revoke-authority", "--ledger", ledger, "--key", str(tmp_path / "auth.key.pub")
    )
    assert code == 0, out
    code, out = _run(
        "nodes", "enroll", "--ledger", ledger, "--node-id", "node-c",
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
