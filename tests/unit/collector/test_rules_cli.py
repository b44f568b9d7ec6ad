"""``computewatch rules check`` and ``rules list``."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from computewatch.cli import cli

DATA = Path(__file__).resolve().parents[2] / "data" / "rules"


def test_check_with_no_argument_checks_every_shipped_pack() -> None:
    res = CliRunner().invoke(cli, ["rules", "check"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == "ok: 6 packs, 19 rules"


def test_check_prints_every_finding_and_exits_non_zero() -> None:
    files = [str(DATA / "many-mistakes.yaml"), str(DATA / "syntax-error.yaml"), "demo"]
    res = CliRunner().invoke(cli, ["rules", "check", *files])
    assert res.exit_code == 1
    out = res.stdout.strip().splitlines()
    assert len(out) == 12
    assert all(ln.startswith(str(DATA)) for ln in out)
    assert out[0].startswith(f"{DATA / 'many-mistakes.yaml'}:12: rule unit-mismatch: ")
    assert out[-1].startswith(f"{DATA / 'syntax-error.yaml'}:6: yaml: ")
    assert "Error: 12 problems in 2 of 3 files" in res.stderr


def test_check_names_an_unknown_pack() -> None:
    res = CliRunner().invoke(cli, ["rules", "check", "no-such-pack"])
    assert res.exit_code == 1
    assert "no shipped rule pack named 'no-such-pack'" in res.stderr


def test_list_shows_packs_rules_and_sources() -> None:
    res = CliRunner().invoke(cli, ["rules", "list", "--pack", "us-eo-14110", "--pack", "demo"])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "us-eo-14110 2023.1: " in out
    assert "[historical: Executive Order 14110 was revoked" in out
    assert "source: US Executive Order 14110 s.4.2(b) <https://" in out
    assert (
        "  us-eo-14110-cluster-capacity: cluster installed_flops (upper bound) >= 1e20 FLOP/s"
        " -> record"
    ) in out
    assert (
        "  demo-cluster-density: cluster achieved_flops (estimate) > 4.5e16 FLOP/s for 15 s -> halt"
    ) in out


def test_list_defaults_to_every_shipped_pack() -> None:
    res = CliRunner().invoke(cli, ["rules", "list"])
    assert res.exit_code == 0, res.output
    assert "op-capability-cyber-offense: job capability:cyber-offense >= 0.5 -> halt" in res.stdout
    assert "(job and descendants)" in res.stdout


GOOD = """pack: {name}
version: "1"
description: A pack for the directory test.
rules:
  - id: {name}-rule
    description: Cluster density.
    metric: achieved_flops
    bound: upper_bound
    scope: cluster
    comparison: ">"
    threshold: 1e18
    unit: FLOP/s
    action: alert
    for: {duration}
"""


def test_check_accepts_a_directory_and_checks_every_pack_in_it(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.format(name="a", duration="30s"))
    (tmp_path / "b.yml").write_text(GOOD.format(name="b", duration="5m"))
    (tmp_path / "notes.txt").write_text("not a pack")
    res = CliRunner().invoke(cli, ["rules", "check", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == "ok: 2 packs, 2 rules"


def test_check_names_an_empty_directory(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["rules", "check", str(tmp_path)])
    assert res.exit_code == 1
    assert f"rule pack directory {tmp_path} holds no .yaml or .yml files" in res.stderr


def test_a_for_duration_is_bounded_as_a_number_and_as_a_string(tmp_path: Path) -> None:
    (tmp_path / "num.yaml").write_text(GOOD.format(name="num", duration="1e308"))
    (tmp_path / "str.yaml").write_text(GOOD.format(name="str", duration="100000h"))
    (tmp_path / "ok.yaml").write_text(GOOD.format(name="ok", duration="720h"))
    res = CliRunner().invoke(cli, ["rules", "check", str(tmp_path)])
    assert res.exit_code == 1
    out = res.stdout.strip().splitlines()
    assert len(out) == 2, out
    assert out[0].startswith(f"{tmp_path / 'num.yaml'}:14: rule num-rule: ")
    assert "2592000 (30 days)" in out[0]
    assert out[1].startswith(f"{tmp_path / 'str.yaml'}:14: rule str-rule: for is 100000h")
    assert "at most 30 days" in out[1]
