"""``computewatch demo --serve``: a cluster that keeps running with /metrics on
loopback, a Prometheus config and file_sd targets that name every node."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from computewatch.cli import cli
from computewatch.demo.cluster import Cluster
from computewatch.demo.serve import ServeOptions, serve_demo
from tests.prom_support import fetch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SCENARIO = """
name: serve
duration_seconds: 600
interval_seconds: 0.5
nodes:
  - {id_prefix: "n", count: 2, gpus: [{model: "NVIDIA H100 80GB HBM3", count: 1}]}
jobs:
  - {id: "91", nodes: ["n01"], utilization: [[0, 50]], tensor_fraction: 0.5, memory_gib: 10}
"""


def test_serve_exposes_every_endpoint_and_writes_prometheus_files(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(SCENARIO)
    seen: dict[str, bytes] = {}

    def ready(cluster: Cluster, config: Path) -> None:
        assert cluster.collector_metrics is not None
        # The collector's /metrics is HTTPS by default, signed by the demo's CA.
        url = f"https://{cluster.collector_metrics}/metrics"
        seen["collector"] = fetch(url, ca=cluster.ca_cert)
        seen["ca"] = cluster.ca_cert.read_bytes()
        for node_id, address in cluster.agent_metrics.items():
            seen[node_id] = fetch(f"http://{address}/metrics")
        seen["config"] = config.read_bytes()

    out = io.StringIO()
    opts = ServeOptions(path, ("operator-default",), workdir=tmp_path / "w", duration=1.0)
    asyncio.run(serve_demo(opts, out, ready=ready))

    assert b"computewatch_collector_streams_open" in seen["collector"]
    for node_id in ("n00", "n01"):
        assert f'computewatch_agent_info{{node_id="{node_id}"'.encode() in seen[node_id]
    prom_dir = tmp_path / "w" / "prometheus"
    config = yaml.safe_load(seen["config"])
    assert config["rule_files"] == ["computewatch-alerts.yml"]
    assert (prom_dir / "computewatch-alerts.yml").exists()
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"computewatch-collector", "computewatch-agent"}
    # Prometheus scrapes the collector over HTTPS, verifying it with the demo's CA.
    collector_job = jobs["computewatch-collector"]
    assert collector_job["scheme"] == "https"
    ca_file = Path(collector_job["tls_config"]["ca_file"])
    assert ca_file.is_absolute()
    assert ca_file.read_bytes() == seen["ca"]
    assert "insecure_skip_verify" not in collector_job["tls_config"]
    targets = json.loads((prom_dir / "computewatch-agents.json").read_text())
    # On one host every agent is 127.0.0.1: the node comes from the target's label.
    assert sorted(t["labels"]["node"] for t in targets) == ["n00", "n01"]
    assert all(t["targets"][0].startswith("127.0.0.1:") for t in targets)
    text = out.getvalue()
    assert "collector /metrics: https://" in text
    assert "prometheus --config.file=" in text
    assert "computewatch.json" in text  # how to load the dashboard


def test_cli_allows_over_sixty_seconds_only_with_serve_which_writes_the_files(
    tmp_path: Path,
) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(SCENARIO)
    runner = CliRunner()
    result = runner.invoke(cli, ["demo", "--scenario", str(path), "--duration", "61"])
    assert result.exit_code == 2
    assert "at most 60 s without --serve" in result.output
    args = ["demo", "--serve", "--scenario", str(path), "--duration", "1"]
    result = runner.invoke(cli, [*args, "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    assert "Grafana" in result.output
    assert (tmp_path / "w" / "prometheus" / "prometheus.yml").exists()
