"""Agent configuration: file, environment and flags, and every way to get it wrong."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.config import AgentConfig, load_agent_config
from computewatch.cli import cli
from protos.errors import ConfigError

MINIMAL = '[agent]\nnode_id = "gpu-node-01"\nkey = "/etc/computewatch/node.key"\n'


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(body)
    return path


def test_defaults_fill_what_the_file_leaves_out(tmp_path: Path) -> None:
    cfg = load_agent_config(write(tmp_path, MINIMAL), {})
    assert cfg.node_id == "gpu-node-01"
    assert cfg.key == Path("/etc/computewatch/node.key")
    assert cfg.interval_seconds == 1.0
    assert cfg.max_unacked == 10000
    assert cfg.backend == "nvml"
    assert cfg.fail_mode == "open"
    assert cfg.metrics_port == 0
    assert cfg.boot_id_path == Path("/proc/sys/kernel/random/boot_id")
    assert cfg.collector_key is None


def test_every_key_can_be_set_in_the_file(tmp_path: Path) -> None:
    body = MINIMAL + (
        'collector = "collector.example:7443"\n'
        'collector_key = "/etc/computewatch/collector.pub"\n'
        "interval_seconds = 2.5\n"
        'state_dir = "/srv/cw"\n'
        "max_unacked = 50\n"
        "max_in_flight = 8\n"
        'metrics_address = "0.0.0.0"\n'
        "metrics_port = 9401\n"
        'backend = "fake"\n'
        'scenario = "deploy/scenarios/demo.yaml"\n'
        'procfs_root = "/host/proc"\n'
        'job_metadata_dir = "/run/computewatch/jobs"\n'
        'fail_mode = "closed"\n'
        'boot_id_path = "/tmp/boot_id"\n'
        "backoff_min_seconds = 1\n"
        "backoff_max_seconds = 60\n"
    )
    cfg = load_agent_config(write(tmp_path, body), {})
    assert cfg == AgentConfig(
        node_id="gpu-node-01",
        key=Path("/etc/computewatch/node.key"),
        collector="collector.example:7443",
        collector_key=Path("/etc/computewatch/collector.pub"),
        interval_seconds=2.5,
        state_dir=Path("/srv/cw"),
        max_unacked=50,
        max_in_flight=8,
        metrics_address="0.0.0.0",
        metrics_port=9401,
        backend="fake",
        scenario=Path("deploy/scenarios/demo.yaml"),
        procfs_root=Path("/host/proc"),
        job_metadata_dir=Path("/run/computewatch/jobs"),
        fail_mode="closed",
        boot_id_path=Path("/tmp/boot_id"),
        backoff_min_seconds=1.0,
        backoff_max_seconds=60.0,
    )


def test_overrides_beat_the_file_and_none_means_not_given(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "interval_seconds = 5\nmax_unacked = 7\n")
    cfg = load_agent_config(path, {"interval_seconds": "0.25", "max_unacked": None})
    assert cfg.interval_seconds == 0.25
    assert cfg.max_unacked == 7


def test_no_file_needs_the_required_keys_from_overrides() -> None:
    cfg = load_agent_config(None, {"node_id": "n1", "key": "/k"})
    assert (cfg.node_id, cfg.key) == ("n1", Path("/k"))
    with pytest.raises(ConfigError, match="missing required key.*node_id"):
        load_agent_config(None, {"key": "/k"})


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        ("interval_seconds = 0", "interval_seconds", "above 0"),
        ("interval_seconds = 7200", "interval_seconds", "at most 3600"),
        ('interval_seconds = "often"', "interval_seconds", "a number"),
        ("interval_seconds = nan", "interval_seconds", "a finite number"),
        ("interval_seconds = inf", "interval_seconds", "a finite number"),
        ("max_unacked = 0", "max_unacked", "at least 1"),
        ("max_unacked = 1e23", "max_unacked", "at most 1e+07"),
        ('max_unacked = "lots"', "max_unacked", "an integer"),
        ("max_in_flight = 0", "max_in_flight", "at least 1"),
        ("lease_grace_seconds = inf", "lease_grace_seconds", "a finite number"),
        ("lease_grace_seconds = 1e12", "lease_grace_seconds", "at most 86400"),
        ("quorum = 100000", "quorum", "at most 1000"),
        ("metrics_port = 70000", "metrics_port", "0..65535"),
        ('metrics_address = ""', "metrics_address", "a host"),
        ('backend = "rocm"', "backend", "'nvml' or 'fake'"),
        ('backend = "fake"', "scenario", "a scenario file"),
        ('fail_mode = "ajar"', "fail_mode", "'open' or 'closed'"),
        ('fail_mode = "closed"', "collector_key", "when fail_mode is 'closed'"),
        ('collector = "nowhere"', "collector", "HOST:PORT"),
        ('collector = "host:99999"', "collector", "HOST:PORT"),
        ("backoff_min_seconds = 0", "backoff_min_seconds", "above 0"),
        ("backoff_max_seconds = 1e300", "backoff_max_seconds", "at most 3600"),
        ("backoff_max_seconds = 0.1", "backoff_max_seconds", ">= backoff_min_seconds"),
        ("state_dir = 3", "state_dir", "a path"),
        ("collector_key = true", "collector_key", "a path"),
    ],
)
def test_a_wrong_value_in_the_file_names_file_key_and_expectation(
    tmp_path: Path, line: str, key: str, expected: str
) -> None:
    path = write(tmp_path, MINIMAL + line + "\n")
    with pytest.raises(ConfigError) as info:
        load_agent_config(path, {})
    message = str(info.value)
    assert str(path) in message
    assert repr(key) in message
    assert expected in message
    if line.startswith(key):
        # The key is on line 4 (after the three lines of MINIMAL).
        assert f"{path}:4 [agent]" in message


@pytest.mark.parametrize(
    "node_id", ["", "has space", "x" * 129, "slash/inside", "emoji-\N{GREEK SMALL LETTER ALPHA}"]
)
def test_a_bad_node_id_is_refused(tmp_path: Path, node_id: str) -> None:
    body = f'[agent]\nnode_id = "{node_id}"\nkey = "/k"\n'
    with pytest.raises(ConfigError, match="'node_id'"):
        load_agent_config(write(tmp_path, body), {})


def test_a_wrong_override_names_the_setting_not_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match=r"setting agent\.interval_seconds.*'interval_seconds'"):
        load_agent_config(path, {"interval_seconds": -1})
    with pytest.raises(ConfigError, match=r"setting agent\.max_unacked.*an integer"):
        load_agent_config(path, {"max_unacked": "lots"})


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "intervall_seconds = 2\n")
    with pytest.raises(ConfigError, match=rf"{path}.*unknown key.*intervall_seconds"):
        load_agent_config(path, {})
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_agent_config(write(tmp_path, MINIMAL), {"colour": "blue"})


def test_unreadable_or_malformed_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=rf"{missing}: cannot read"):
        load_agent_config(missing, {})
    broken = write(tmp_path, "[agent\nnode_id = 1\n")
    with pytest.raises(ConfigError, match=rf"{broken}: not valid TOML"):
        load_agent_config(broken, {})
    not_table = write(tmp_path, 'agent = "x"\n')
    with pytest.raises(ConfigError, match=r"\[agent\] must be a table"):
        load_agent_config(not_table, {})


def test_direct_construction_validates_too() -> None:
    with pytest.raises(ConfigError, match="'fail_mode'"):
        AgentConfig(node_id="n", key=Path("/k"), fail_mode="maybe")
    with pytest.raises(ConfigError, match="'collector_key'"):
        AgentConfig(node_id="n", key=Path("/k"), fail_mode="closed")


# --- the CLI resolves flag > environment > file > default -------------------------
def show(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["agent", "show-config", *args], env=env)
    return result.exit_code, result.output


def value(output: str, key: str) -> str:
    for line in output.splitlines():
        name, _, rest = line.partition(" = ")
        if name == key:
            return rest
    raise AssertionError(f"{key} not in {output!r}")


def test_cli_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "interval_seconds = 3\nmax_unacked = 30\nmax_in_flight = 9\n")
    env = {
        "COMPUTEWATCH_AGENT_INTERVAL_SECONDS": "2",
        "COMPUTEWATCH_AGENT_MAX_UNACKED": "20",
    }
    code, out = show(["--config", str(path), "--interval", "1.5"], env)
    assert code == 0, out
    assert value(out, "interval_seconds") == "1.5"  # flag
    assert value(out, "max_unacked") == "20"  # environment
    assert value(out, "max_in_flight") == "9"  # file
    assert value(out, "backoff_max_seconds") == "30.0"  # default
    assert value(out, "node_id") == '"gpu-node-01"'


def test_cli_sets_job_attribution_from_flags_and_environment(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    env = {"COMPUTEWATCH_AGENT_K8S_ATTRIBUTION": "true"}
    args = ["--config", str(path), "--slurm-show-job-command", "", "--k8s-kubeconfig", "/kc"]
    code, out = show(args, env)
    assert code == 0, out
    assert value(out, "k8s_attribution") == "true"
    assert value(out, "slurm_show_job_command") == '""'
    assert value(out, "k8s_kubeconfig") == '"/kc"'
    assert value(out, "k8s_workload_labels").startswith('["trainer.kubeflow.org/trainjob-name=')


def test_cli_reads_the_config_file_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + 'backend = "fake"\nscenario = "s.yaml"\n')
    code, out = show([], {"COMPUTEWATCH_AGENT_CONFIG": str(path)})
    assert code == 0, out
    assert value(out, "backend") == '"fake"'


def test_cli_turns_a_config_error_into_one_line_and_exit_1(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "metrics_port = -4\n")
    code, out = show(["--config", str(path)])
    assert code == 1
    assert "Error: config:" in out
    assert str(path) in out
    assert "'metrics_port'" in out
    assert "Traceback" not in out


def test_cli_rejects_a_bad_environment_value_naming_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    code, out = show(["--config", str(path)], {"COMPUTEWATCH_AGENT_MAX_UNACKED": "many"})
    assert code == 2
    assert "COMPUTEWATCH_AGENT_MAX_UNACKED" in out or "--max-unacked" in out


def test_the_shipped_example_config_loads() -> None:
    example = Path(__file__).resolve().parents[3] / "deploy" / "agent.example.toml"
    cfg = load_agent_config(example, {})
    assert cfg.node_id == "gpu-node-01"
    assert cfg.backend == "nvml"
    assert cfg.metrics_port == 9401


def test_show_config_prints_toml_that_loads_back_to_the_same_config(tmp_path: Path) -> None:
    import tomllib

    path = write(tmp_path, MINIMAL + 'collector_key = "/etc/c.pub"\nfail_mode = "closed"\n')
    code, out = show(
        ["--config", str(path), "--authority-key", "/a/1.pub", "--authority-key", "/a/2.pub"],
        {"COMPUTEWATCH_AGENT_QUORUM": "2"},
    )
    assert code == 0, out
    assert tomllib.loads(out)["agent"]["authority_keys"] == ["/a/1.pub", "/a/2.pub"]
    again = write(tmp_path, out)
    assert load_agent_config(again, {}) == load_agent_config(
        path, {"authority_keys": ("/a/1.pub", "/a/2.pub"), "quorum": 2}
    )


def test_repeatable_flags_not_given_leave_the_file_value(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + 'authority_keys = ["/a/1.pub"]\nquorum = 1\n')
    code, out = show(["--config", str(path)])
    assert code == 0, out
    assert tomllib.loads(out)["agent"]["authority_keys"] == ["/a/1.pub"]
    code, out = show(["--config", str(path)], {"COMPUTEWATCH_AGENT_AUTHORITY_KEYS": "/b:/c"})
    assert code == 0, out
    assert tomllib.loads(out)["agent"]["authority_keys"] == ["/b", "/c"]


def test_show_config_writes_valid_toml_for_a_value_with_newlines_and_quotes(
    tmp_path: Path,
) -> None:
    import tomllib

    awkward = 'scontrol suspend {job}\n# "quoted" \\ and a tab\t'
    path = write(tmp_path, MINIMAL + 'collector_key = "/etc/c.pub"\n')
    code, out = show(["--config", str(path), "--suspend-command", awkward])
    assert code == 0, out
    assert tomllib.loads(out)["agent"]["suspend_command"] == awkward
