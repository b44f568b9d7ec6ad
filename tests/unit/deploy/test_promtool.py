"""The deploy files checked by the real ``promtool`` (Debian's prometheus package).

- ``promtool check rules`` on the alert rules and ``check config`` on the
  shipped scrape configuration;
- ``promtool test rules`` on ``deploy/prometheus/alerts_test.yml``, which has
  a firing and a silent case for every alert (checked here without promtool);
- ``promtool check metrics`` on the live /metrics of a collector and an agent.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from agent.metrics import AgentStats, register_metrics, serve_metrics
from collector.config import CollectorConfig
from collector.server import create_server
from protos.keys import PrivateKey, write_private_key
from tests.prom_support import DEPLOY, check_metrics, fetch, free_port, run_tool, tool
from tests.tls_support import make_site

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"


def _alert_names() -> list[str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    doc: dict[str, Any] = yaml.safe_load(ALERT_TESTS.read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    names = set(_alert_names())
    assert sorted(names - fires) == [], "alerts without a firing case"
    assert sorted(names - silent) == [], "alerts without a silent case"
    assert sorted((fires | silent) - names) == [], "tests for alerts that do not exist"


def test_promtool_check_rules_accepts_every_alert() -> None:
    out = run_tool([tool("promtool"), "check", "rules", str(ALERTS)])
    assert f"SUCCESS: {len(_alert_names())} rules found" in out


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    out = run_tool([tool("promtool"), "test", "rules", str(ALERT_TESTS)], timeout=120)
    assert "SUCCESS" in out


def test_promtool_check_config_accepts_the_scrape_config(tmp_path: Path) -> None:
    promtool = tool("promtool")
    # scrape.yml names the rules file as installed next to it.
    shutil.copy(DEPLOY / "prometheus" / "scrape.yml", tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "computewatch-alerts.yml")
    out = run_tool([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert "SUCCESS: 1 rule files found" in out


def test_promtool_check_metrics_is_clean_on_live_endpoints(tmp_path: Path) -> None:
    promtool = tool("promtool")
    # An agent's registry, with counters and GPU readings in it.
    registry = CollectorRegistry()
    stats = AgentStats(node_id="gpu-node-1", version="test")
    stats.rejected["gap"] += 2
    stats.observe_sample(0.003)
    register_metrics(registry, stats)
    server, thread = serve_metrics(registry, "127.0.0.1", free_port())
    try:
        address = server.server_address
        check_metrics(promtool, fetch(f"http://127.0.0.1:{address[1]}/metrics"), "agent")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    # The collector as shipped: /metrics over TLS with its gRPC certificate.
    site = make_site(tmp_path / "tls")
    write_private_key(PrivateKey.generate(), tmp_path / "collector.key")
    port = free_port()
    config = CollectorConfig(
        ledger=tmp_path / "ledger.sqlite3",
        key=tmp_path / "collector.key",
        listen="127.0.0.1:0",
        verify_threads=0,
        grace_seconds=0.1,
        metrics_port=port,
        rule_packs=("demo", "operator-default"),
        tls_cert=site.server.cert,
        tls_key=site.server.key,
    )

    async def scrape() -> bytes:
        collector, _ = await create_server(config, metrics_registry=CollectorRegistry())
        try:
            return await asyncio.to_thread(
                fetch, f"https://127.0.0.1:{port}/metrics", ca=site.ca.cert
            )
        finally:
            await collector.stop(grace=0)

    check_metrics(promtool, asyncio.run(scrape()), "collector")
