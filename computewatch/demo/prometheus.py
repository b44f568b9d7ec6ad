"""Point a Prometheus at a running simulated cluster: its config, targets, alerts.

``write_prometheus_files`` writes, into one directory:

- ``prometheus.yml``: the collector as a static target, the agents from a
  file_sd file, the shipped alert rules loaded;
- ``computewatch-agents.json``: one file_sd entry per agent, labelled with its
  node id (on one host every agent is 127.0.0.1: the address cannot name it);
- ``computewatch-alerts.yml``: a copy of ``deploy/prometheus/alerts.yml``.

The same files drive the real-Prometheus integration test.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "computewatch.json"
AGENT_TARGETS = "computewatch-agents.json"
ALERT_RULES = "computewatch-alerts.yml"


def write_prometheus_files(
    directory: Path,
    collector: str,
    agents: Mapping[str, str],
    *,
    scrape_interval: str = "5s",
) -> Path:
    """Write the files above; return the path of ``prometheus.yml``."""
    directory.mkdir(parents=True, exist_ok=True)
    targets = [
        {"targets": [address], "labels": {"node": node_id}}
        for node_id, address in sorted(agents.items())
    ]
    (directory / AGENT_TARGETS).write_text(json.dumps(targets, indent=2) + "\n")
    if ALERTS.exists():
        shutil.copyfile(ALERTS, directory / ALERT_RULES)
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [ALERT_RULES] if ALERTS.exists() else [],
        "scrape_configs": [
            {
                "job_name": "computewatch-collector",
                "static_configs": [{"targets": [collector]}],
            },
            {
                "job_name": "computewatch-agent",
                "file_sd_configs": [
                    {"files": [str(directory / AGENT_TARGETS)], "refresh_interval": "30s"}
                ],
            },
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(
        "# Written by `computewatch demo --serve` for its simulated cluster.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return path


def instructions(config: Path, collector: str, agents: Mapping[str, str]) -> str:
    """What to run next, printed by ``computewatch demo --serve``."""
    return "\n".join(
        [
            f"collector /metrics: http://{collector}/metrics",
            f"agent /metrics: {len(agents)} endpoints, e.g. "
            + ", ".join(f"{n}=http://{a}/metrics" for n, a in sorted(agents.items())[:2]),
            f"Prometheus config (targets in {config.parent / AGENT_TARGETS}):",
            f"  prometheus --config.file={config} --storage.tsdb.path={config.parent / 'data'}"
            " --web.listen-address=127.0.0.1:9090",
            "Grafana: add a Prometheus data source at http://127.0.0.1:9090, then",
            f"  Dashboards > New > Import > upload {DASHBOARD}",
            "Stop with Ctrl-C.",
        ]
    )
