"""deploy/: every file parses and has the structure its consumer expects.

YAML, JSON and TOML files parse; the alert rules, scrape config and dashboard
are well formed and cover what operators need; the example configs load with
the real config loaders; the systemd units parse, are hardened, and run
commands the CLI has. Metric names are checked in test_deploy_metrics.py.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from tests.prom_support import tool

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


# --- parsing every file ---------------------------------------------------------------


def _deploy_files(*suffixes: str) -> list[Path]:
    templates = DEPLOY / "helm" / "computewatch" / "templates"
    return sorted(
        p
        for p in DEPLOY.rglob("*")
        if p.is_file() and p.suffix in suffixes and templates not in p.parents
    )


def test_every_yaml_json_and_toml_file_parses() -> None:
    yamls = _deploy_files(".yml", ".yaml")
    jsons = _deploy_files(".json")
    tomls = _deploy_files(".toml")
    for path in yamls:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path}: empty"
    for path in jsons:
        json.loads(path.read_text())
    for path in tomls:
        tomllib.loads(path.read_text())
    names = {p.relative_to(DEPLOY).as_posix() for p in (*yamls, *jsons, *tomls)}
    assert {
        "prometheus/alerts.yml",
        "prometheus/scrape.yml",
        "grafana/computewatch.json",
        "collector.example.toml",
        "helm/computewatch/Chart.yaml",
        "helm/computewatch/values.yaml",
    } <= names


# --- Prometheus -----------------------------------------------------------------------


def _alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert set(doc) == {"groups"}
    rules: list[dict[str, Any]] = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "rules", "interval"}, group.get("name")
        assert group["name"].startswith("computewatch-")
        assert group["rules"], group["name"]
        rules.extend(group["rules"])
    return rules


def test_alert_rules_are_well_formed() -> None:
    rules = _alerts()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        name = rule["alert"]
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert re.fullmatch(r"Computewatch[A-Z][A-Za-z]+", name), name
        assert isinstance(rule["expr"], str), name
        assert rule["expr"].strip(), name
        assert re.fullmatch(r"\d+[smhd]", rule.get("for", "0m")), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name
        for text in rule["annotations"].values():
            assert text.count("{{") == text.count("}}"), name


def test_alert_rules_cover_what_operators_need() -> None:
    exprs = " ".join(r["expr"] for r in _alerts())
    for needed in (
        'computewatch_nodes{state="silent"}',  # silent nodes
        "computewatch_collector_rejected_total",  # rejections by reason
        "computewatch_node_chain_breaks_total",  # broken chains
        'computewatch_gpus{state="lost"}',  # GPUs lost
        "computewatch_directives_not_effective",  # halts not holding
        "computewatch_agent_stream_connected",  # agent disconnected
        "computewatch_agent_unacked_reports",  # backlog growing
        "computewatch_log_checkpoint_timestamp_seconds",  # checkpoint stale
    ):
        assert needed in exprs, needed


def test_scrape_config_targets_the_metrics_ports() -> None:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "scrape.yml").read_text())
    jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
    assert set(jobs) == {"computewatch-collector", "computewatch-agent"}
    for job in jobs.values():
        assert job["metrics_path"] == "/metrics"
        assert re.fullmatch(r"\d+s", job["scrape_interval"])
    (target,) = jobs["computewatch-collector"]["static_configs"][0]["targets"]
    assert target.endswith(":9741")
    # Agents get `node` from the target host; the collector must not (its
    # series carry their own `node` label).
    assert any(
        r.get("target_label") == "node" for r in jobs["computewatch-agent"]["relabel_configs"]
    )
    assert "relabel_configs" not in jobs["computewatch-collector"]
    relabel = jobs["computewatch-agent"]["relabel_configs"][0]
    assert relabel["source_labels"] == ["node", "__address__"]  # joined with ";"
    match = re.fullmatch(relabel["regex"], ";gpu-node-7:9401")
    assert match is not None
    assert match.group(1) == "gpu-node-7"
    # A `node` label from the targets file wins over the address (one host, many agents).
    assert re.fullmatch(relabel["regex"], "gpu-node-1;127.0.0.1:9401") is None
    assert "computewatch-alerts.yml" in doc["rule_files"]


# --- Grafana --------------------------------------------------------------------------

GRAFANA_UNITS = frozenset(
    {"flops", "sci", "short", "ops", "s", "percentunit", "watt", "bytes", "none"}
)


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "computewatch.json").read_text())
    assert dashboard["uid"] == "computewatch"
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "node"} <= variables
    panels = list(_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    boxes: list[tuple[str, int, int, int, int]] = []
    for panel in panels:
        pos = panel["gridPos"]
        x, y, w, h = pos["x"], pos["y"], pos["w"], pos["h"]
        assert x >= 0, panel["title"]
        assert x + w <= 24, panel["title"]
        assert min(w, h) > 0, panel["title"]
        for title, ox, oy, ow, oh in boxes:
            overlap = x < ox + ow and ox < x + w and y < oy + oh and oy < y + h
            assert not overlap, f"{panel['title']!r} overlaps {title!r}"
        boxes.append((panel["title"], x, y, w, h))
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"] in GRAFANA_UNITS, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]


def test_dashboard_shows_what_operators_need() -> None:
    text = (DEPLOY / "grafana" / "computewatch.json").read_text()
    for needed in (
        "computewatch_cluster_installed_flops",
        "computewatch_cluster_allocated_flops",
        "computewatch_cluster_achieved_flops",
        "computewatch_cluster_cumulative_flop",
        "computewatch_nodes",
        "computewatch_collector_rejected_total",
        "computewatch_node_achieved_flops",
        "computewatch_gpu_utilization_ratio",
        "computewatch_gpu_power_watts",
    ):
        assert needed in text, needed


# --- example configs ------------------------------------------------------------------


def _table_keys(path: Path, table: str) -> set[str]:
    return set(tomllib.loads(path.read_text())[table])


def test_collector_example_config_loads_and_documents_every_setting() -> None:
    from collector.config import CollectorConfig, load_collector_config

    path = DEPLOY / "collector.example.toml"
    config = load_collector_config(path)
    assert config.metrics_port == 9741
    assert config.quorum <= len(config.authority_keys)
    # Shown as a setting, or as a commented example (the HA form's keys).
    documented = _table_keys(path, "collector") | set(_commented_settings(path.read_text()))
    # A commented table (``# [ha]``) documents the setting of that name.
    documented |= set(re.findall(r"^# \[(\w+)\]$", path.read_text(), re.M))
    missing = sorted({f.name for f in fields(CollectorConfig)} - documented)
    assert missing == [], f"document these CollectorConfig fields in {path.name}: {missing}"
    text = path.read_text()
    from collector.config import HaConfig

    for name in ("# ledger_url_file =", "# [ha]", *(f"# {f.name} =" for f in fields(HaConfig))):
        assert name in text, f"document {name!r} (commented out) in {path.name}"


def _comments_by_key(text: str) -> dict[str, str]:
    """The comment block right above each ``key =`` line of a TOML table."""
    out: dict[str, str] = {}
    block: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped)
            continue
        match = re.match(r"([a-z_]+)\s*=", stripped)
        if match:
            out[match.group(1)] = " ".join(block)
        block = []
    return out


def test_collector_example_shows_the_defaults_unless_marked() -> None:
    from collector.config import CollectorConfig

    text = (DEPLOY / "collector.example.toml").read_text()
    table = tomllib.loads(text)["collector"]
    comments = _comments_by_key(text)
    commented = _commented_settings(text)
    comments.update({key: comment for key, (_, comment) in commented.items()})
    for f in fields(CollectorConfig):
        if f.name in ("ledger", "key", "ledger_url_file", "ha"):
            continue
        if "(example" in comments.get(f.name, ""):
            continue
        value = table[f.name] if f.name in table else commented[f.name][0]
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        assert value == default, f"{f.name}: example says {value!r}, the default is {default!r}"


def test_agent_example_config_loads() -> None:
    path = DEPLOY / "agent.example.toml"
    assert path.exists(), "deploy/agent.example.toml is shipped and must load"
    from agent.config import load_agent_config

    config = load_agent_config(path)
    assert config.node_id


def test_agent_example_shows_several_collectors() -> None:
    from agent.config import load_agent_config
    from agent.targets import TargetRing

    path = DEPLOY / "agent.example.toml"
    lines = [line.strip() for line in path.read_text().splitlines()]
    (example,) = [line for line in lines if line.startswith("# collector = ")]
    several = tomllib.loads(example.removeprefix("# "))["collector"]
    config = load_agent_config(path, {"collector": several})
    assert len(TargetRing([config.collector]).configured) == 2


def test_ports_agree_across_deploy_files() -> None:
    values = yaml.safe_load((DEPLOY / "helm" / "computewatch" / "values.yaml").read_text())
    collector = tomllib.loads((DEPLOY / "collector.example.toml").read_text())["collector"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "scrape.yml").read_text())
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "computewatch-collector"]
    (target,) = job["static_configs"][0]["targets"]
    port = values["collector"]["metricsPort"]
    assert collector["metrics_port"] == port
    assert target.endswith(f":{port}")
    assert collector["listen"].endswith(f":{values['collector']['grpcPort']}")
    agent_example = DEPLOY / "agent.example.toml"
    if agent_example.exists():
        agent = tomllib.loads(agent_example.read_text())["agent"]
        assert agent["metrics_port"] == values["agent"]["metricsPort"]
        assert agent["collector"].endswith(f":{values['collector']['grpcPort']}")


# --- systemd --------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd unit syntax: sections, repeatable keys, comments, continuations."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    lines = iter(text.splitlines())
    for raw in lines:
        line = raw.strip()
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            assert line.endswith("]"), line
            name = line[1:-1]
            assert name not in sections, f"section [{name}] twice"
            current = sections[name] = defaultdict(list)
            continue
        assert current is not None, f"{line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current[key.strip()].append(value.strip())
    return sections


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    return parse_unit((DEPLOY / "systemd" / name).read_text())


def _command_params(argv: list[str]) -> tuple[click.Command, list[str]]:
    """The click command an ExecStart runs, and the options it passes."""
    from computewatch.cli import cli

    assert Path(argv[0]).name == "computewatch", argv
    command: click.Command = cli
    rest = argv[1:]
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            pytest.fail(f"a unit runs `computewatch {rest[0]}`, which is not registered")
        command, rest = sub, rest[1:]
    return command, [a for a in rest if a.startswith("--")]


@pytest.mark.parametrize(
    ("unit", "command"),
    [
        ("computewatch-collector.service", ["collector", "serve"]),
        ("computewatch-agent.service", ["agent", "run"]),
    ],
)
def test_systemd_unit_structure_and_command(unit: str, command: list[str]) -> None:
    sections = _unit(unit)
    assert set(sections) == {"Unit", "Service", "Install"}
    service = sections["Service"]
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[1:3] == command
    assert argv[argv.index("--config") + 1].startswith("/etc/computewatch/")
    click_command, options = _command_params(argv)
    known = {opt for p in click_command.params for opt in p.opts}
    assert set(options) <= known, f"{unit}: unknown options {set(options) - known}"
    # The key arrives through LoadCredential and is passed from %d.
    (credential,) = service["LoadCredential"]
    cred_name = credential.partition(":")[0]
    assert argv[argv.index("--key") + 1] == f"%d/{cred_name}"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectKernelModules": "yes",
        "RestrictSUIDSGID": "yes",
        "LimitCORE": "0",
        "UMask": "0077",
    }.items():
        assert service[key] == [value], f"{unit}: {key}"
    (state,) = service["StateDirectory"]
    assert state.startswith("computewatch/")
    assert service["WorkingDirectory"] == [f"/var/lib/{state}"]
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]


def test_collector_unit_runs_unprivileged() -> None:
    service = _unit("computewatch-collector.service")["Service"]
    assert service["User"] == ["computewatch"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["PrivateDevices"] == ["yes"]
    sysusers = (DEPLOY / "systemd" / "computewatch.sysusers").read_text()
    assert re.search(r"^u computewatch ", sysusers, re.M)


def test_agent_unit_keeps_only_the_privileges_enforcement_needs() -> None:
    service = _unit("computewatch-agent.service")["Service"]
    assert service["User"] == ["root"]
    (caps,) = service["CapabilityBoundingSet"]
    assert set(caps.split()) == {"CAP_KILL", "CAP_SYS_ADMIN"}
    assert service["DevicePolicy"] == ["closed"]
    assert all("nvidia" in d for d in service["DeviceAllow"])
    # /proc of every process (job attribution) and /proc/sys (boot id).
    assert service["ProtectProc"] == ["default"]
    assert "ProcSubset" not in service
    # The trade-off is written down where an operator will read it.
    text = (DEPLOY / "systemd" / "computewatch-agent.service").read_text()
    assert "CAP_KILL" in text
    assert "Monitor-only" in text


def test_parse_unit_rejects_malformed_text() -> None:
    with pytest.raises(AssertionError):
        parse_unit("ExecStart=/bin/true\n")
    with pytest.raises(AssertionError):
        parse_unit("[Service]\nnot a setting\n")
    parsed = parse_unit("[Service]\nA=1\nA=2\nB=x \\\n  y\n")
    assert parsed["Service"]["A"] == ["1", "2"]
    assert parsed["Service"]["B"] == ["x  y"]


def _systemd_analyze() -> str:
    """systemd-analyze, or a loud skip (a failure in CI, which installs it)."""
    return tool("systemd-analyze", "apt-get install systemd (Debian; .ci/run installs it)")


@pytest.mark.parametrize("unit", ["computewatch-collector.service", "computewatch-agent.service"])
def test_systemd_analyze_knows_every_directive(unit: str) -> None:
    result = subprocess.run(
        [_systemd_analyze(), "verify", str(DEPLOY / "systemd" / unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    bad = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if re.search(r"Unknown (key|section|lvalue)|Failed to parse|Invalid", line)
    ]
    assert bad == []


# --- high availability ----------------------------------------------------------------

UNIT_CREDENTIALS = Path("/run/credentials/computewatch-collector.service")


def _commented_settings(text: str) -> dict[str, tuple[object, str]]:
    """``# key = value`` lines of the [collector] table (before any commented
    ``# [table]``): the value, and the comment block above the line."""
    out: dict[str, tuple[object, str]] = {}
    block: list[str] = []
    section = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and not stripped.startswith("#"):
            section = stripped
        if stripped.startswith("# ["):
            section = stripped
        match = re.fullmatch(r"#\s*([a-z_]+\s*=\s*.+)", stripped)
        if section == "[collector]" and match:
            try:
                parsed = tomllib.loads(match.group(1))
            except tomllib.TOMLDecodeError:
                parsed = {}
            if len(parsed) == 1:
                ((key, value),) = parsed.items()
                out[key] = (value, " ".join(block))
                block = []
                continue
        block = [*block, stripped] if stripped.startswith("#") else []
    return out


def test_commented_settings_reader() -> None:
    text = '[collector]\n# Note.\n# (example)\n# a = "x"\nb = 1\n# [ha]\n# c = 2\n'
    assert _commented_settings(text) == {"a": ("x", "# Note. # (example)")}


def test_collector_example_shows_the_ha_form() -> None:
    text = (DEPLOY / "collector.example.toml").read_text()
    commented = _commented_settings(text)
    url_file, comment = commented["ledger_url_file"]
    assert "(example" in comment
    # The path the drop-in's credential lands at.
    dropin = parse_unit((DEPLOY / "systemd" / "computewatch-collector-ha.conf").read_text())
    (credential,) = dropin["Service"]["LoadCredential"]
    name = credential.partition(":")[0]
    assert Path(str(url_file)) == UNIT_CREDENTIALS / name
    # The [ha] table, commented, with the defaults.
    ha_block = text[text.index("# [ha]") :]
    ha = tomllib.loads("\n".join(line.removeprefix("# ") for line in ha_block.splitlines()))
    assert ha["ha"] == {
        "candidate": "collector-a",
        "leader_lease_seconds": 5.0,
        "renew_seconds": 1.0,
    }
    lease = tomllib.loads(text)["collector"]["lease_seconds"]
    assert ha["ha"]["leader_lease_seconds"] + ha["ha"]["renew_seconds"] < lease


def test_collector_ha_dropin_delivers_the_url_as_a_credential() -> None:
    dropin = parse_unit((DEPLOY / "systemd" / "computewatch-collector-ha.conf").read_text())
    assert set(dropin) <= {"Unit", "Service"}
    service = dropin["Service"]
    # The same unit on every host: the drop-in adds the credential only.
    assert set(service) == {"LoadCredential"}
    (credential,) = service["LoadCredential"]
    assert Path(credential.partition(":")[2]).parent == Path("/etc/computewatch")
    unit = _unit("computewatch-collector.service")["Service"]
    names = [c.partition(":")[0] for c in (*unit["LoadCredential"], credential)]
    assert len(names) == len(set(names))
    # The unit's sandbox lets the collector reach a database over TCP or a socket.
    (families,) = unit["RestrictAddressFamilies"]
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families.split())


def test_systemd_analyze_accepts_the_unit_with_the_ha_dropin(tmp_path: Path) -> None:
    unit = "computewatch-collector.service"
    shutil.copy(DEPLOY / "systemd" / unit, tmp_path / unit)
    (tmp_path / f"{unit}.d").mkdir()
    shutil.copy(
        DEPLOY / "systemd" / "computewatch-collector-ha.conf", tmp_path / f"{unit}.d" / "ha.conf"
    )
    result = subprocess.run(
        [_systemd_analyze(), "verify", str(tmp_path / unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:"},
    )
    bad = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if re.search(r"Unknown (key|section|lvalue)|Failed to parse|Invalid", line)
    ]
    assert bad == []
