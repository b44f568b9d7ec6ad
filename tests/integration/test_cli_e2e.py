"""The operator's path through the CLI, each command a real process:
keys generate, nodes enroll, collector serve (from a TOML file), agent run
(fake NVML), status, and a graceful SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SCENARIO = """
name: cli
duration_seconds: 60
interval_seconds: 0.5
nodes:
  - {id: "gpu-001", gpus: [{model: "NVIDIA H100 80GB HBM3", count: 2}]}
jobs:
  - {id: "9001", nodes: ["gpu-001"], utilization: [[0, 80]], tensor_fraction: 0.5, memory_gib: 8}
"""


def cw(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "computewatch.cli", "--log-level", "warning", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_operator_cli_path(tmp_path: Path) -> None:
    collector_id = cw("keys", "generate", "--out", str(tmp_path / "collector.key")).strip()
    assert len(collector_id) == 64
    assert (tmp_path / "collector.key").stat().st_mode & 0o777 == 0o600
    cw("keys", "generate", "--out", str(tmp_path / "node.key"))
    ledger = tmp_path / "ledger.db"
    out = cw(
        "nodes", "enroll", "--ledger", str(ledger), "--node-id", "gpu-001",
        "--public-key", str(tmp_path / "node.key.pub"),
    )  # fmt: skip
    assert "enrolled gpu-001" in out
    assert "gpu-001" in cw("nodes", "list", "--ledger", str(ledger))

    # TLS from the site's own CA, and tokens: the defaults, nothing opted out.
    tls = tmp_path / "tls"
    assert "collector:" in cw("tls", "init", str(tls), "--host", "collector.example")
    cw("keys", "generate", "--out", str(tmp_path / "auditor.key"))
    port = free_port()
    config = tmp_path / "collector.toml"
    config.write_text(
        f'[collector]\nledger = "{ledger}"\nkey = "{tmp_path / "collector.key"}"\n'
        f'listen = "127.0.0.1:{port}"\ninterval_seconds = 0.5\ntick_seconds = 0.2\n'
        'rule_packs = ["operator-default"]\n'
        f'tls_cert = "{tls / "collector.pem"}"\ntls_key = "{tls / "collector.key"}"\n'
        f'auditor_keys = ["{tmp_path / "auditor.key.pub"}"]\n'
    )
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    env = {**os.environ, "COMPUTEWATCH_AGENT_NODE_ID": "gpu-001"}  # env, not a flag
    collector = subprocess.Popen(
        [sys.executable, "-m", "computewatch.cli", "collector", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(0.5)
        cw(
            "agent", "run", "--collector", f"127.0.0.1:{port}", "--key",
            str(tmp_path / "node.key"), "--collector-key", str(tmp_path / "collector.key.pub"),
            "--backend", "fake", "--scenario", str(scenario), "--interval", "0.5",
            "--state-dir", str(tmp_path / "agent"), "--backoff-min", "0.1",
            "--tls-ca", str(tls / "ca.pem"),
            "--duration", "4",
            env=env,
        )  # fmt: skip
        status = json.loads(
            cw(
                "status", "--collector", f"127.0.0.1:{port}", "--json",
                "--tls-ca", str(tls / "ca.pem"), "--key", str(tmp_path / "auditor.key"),
            )
        )  # fmt: skip
        (node,) = status["nodes"]
        assert node["node_id"] == "gpu-001"
        assert node["last_sequence"] >= 4  # a plain number
        (job,) = status["jobs"]
        assert job["job_id"] == "9001"
        assert job["cumulative_flop"] > 0
        assert float(job["cumulative_flop_upper_bound"]) >= job["cumulative_flop"]
        assert job["method"]
        assert status["rejected_by_reason"] == {}
    finally:
        collector.send_signal(signal.SIGTERM)
        output, _ = collector.communicate(timeout=30)
    assert collector.returncode == 0, output
    assert "collector listening on" in output
