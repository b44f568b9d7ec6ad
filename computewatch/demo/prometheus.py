"""Point a Prometheus at a running simulated cluster: its config, targets, alerts.

``write_prometheus_files`` writes, into one directory:

- ``prometheus.yml``: the collector as a static target (over HTTPS, trusting
  the given CA, when it serves TLS as it does by default), the agents from a
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
    collector_ca: Path | None,
    scrape_interval: str = "5s",
) -> Path:
    """Write the files above; return the path of ``prometheus.yml``.

    ``collector_ca``: the CA certificate that signed the collector's TLS
    certificate (its /metrics is HTTPS, verified against it); None only for
    a collector that serves plain text (``insecure_plaintext``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    targets = [
        {"targets": [address], "labels": {"node": node_id}}
        for node_id, address in sorted(agents.items())
    ]
    (directory / AGENT_TARGETS).write_text(json.dumps(targets, indent=2) + "\n")
    if ALERTS.exists():
        shutil.copyfile(ALERTS, directory / ALERT_RULES)
    collector_job: dict[str, object] = {
        "job_name": "computewatch-collector",
        "static_configs": [{"targets": [collector]}],
    }
    if collector_ca is not None:
        collector_job["scheme"] = "https"
        collector_job["tls_config"] = {"ca_file": str(collector_ca.resolve())}
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [ALERT_RULES] if ALERTS.exists() else [],
        "scrape_configs": [
            collector_job,
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


def instructions(
    config: Path, collector: str, agents: Mapping[str, str], *, collector_ca: Path | None
) -> str:
    """What to run next, printed by ``computewatch demo --serve``."""
    if collector_ca is None:
        collector_line = f"collector /metrics: http://{collector}/metrics"
    else:
        collector_line = (
            f"collector /metrics: https://{collector}/metrics"
            f" (TLS: curl --cacert {collector_ca} ...)"
        )
    return "\n".join(
        [
            collector_line,
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
