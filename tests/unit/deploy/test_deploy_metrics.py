"""Every ``computewatch_*`` series the alert rules and the dashboard use is
exported by the code, with the labels they match on."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from metricnames import (
    DEPLOY,
    Exported,
    Family,
    available_labels,
    check_expr,
    exported_from,
    families_from_source,
    series_of,
)
from prometheus_client import CollectorRegistry


@pytest.fixture(scope="module")
def source_families() -> list[Family]:
    return families_from_source()


@pytest.fixture(scope="module")
def exported(source_families: list[Family]) -> Exported:
    return exported_from(source_families)


def _live_series(registry: CollectorRegistry) -> set[str]:
    out: set[str] = set()
    for fam in registry.collect():
        out |= set(series_of(fam.name, fam.type))
    return out


def test_source_reader_finds_the_known_families(exported: Exported) -> None:
    # Names built in different ways: literals, an f-string over a loop
    # variable (collector), a prefix variable (agent), histogram suffixes.
    for series in (
        "computewatch_collector_rejected_total",
        "computewatch_cluster_achieved_flops",
        "computewatch_cluster_installed_flops",
        "computewatch_agent_samples_total",
        "computewatch_agent_sample_duration_seconds_bucket",
        "computewatch_gpu_utilization_ratio",
    ):
        assert series in exported.exact, series
    assert exported.labels("computewatch_collector_rejected_total") == {"reason"}
    assert exported.labels("computewatch_gpu_power_watts") == {"gpu", "uuid", "model"}
    assert not exported.has("computewatch_cluster_bogus_flops")


def test_source_reader_covers_the_live_agent_registry(exported: Exported) -> None:
    from agent.metrics import AgentStats, register_metrics

    registry = CollectorRegistry()
    register_metrics(registry, AgentStats())
    live = _live_series(registry)
    assert "computewatch_agent_unacked_reports" in live
    assert sorted(s for s in live if not exported.has(s)) == []


def test_source_reader_covers_the_live_collector_registry(
    exported: Exported, tmp_path: Path
) -> None:
    from collector.config import CollectorConfig
    from collector.server import create_server
    from protos.keys import PrivateKey, write_private_key

    write_private_key(PrivateKey.generate(), tmp_path / "collector.key")
    config = CollectorConfig(
        ledger=tmp_path / "ledger.sqlite3",
        key=tmp_path / "collector.key",
        listen="127.0.0.1:0",
        verify_threads=0,
        grace_seconds=0.1,
        insecure_plaintext=True,
        require_auth=False,
    )

    async def scrape() -> set[str]:
        registry = CollectorRegistry()
        collector, _ = await create_server(config, metrics_registry=registry)
        try:
            return _live_series(registry)
        finally:
            await collector.stop(grace=0)

    live = asyncio.run(scrape())
    assert "computewatch_collector_reports_accepted_total" in live
    assert sorted(s for s in live if not exported.has(s)) == []


def _alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alert_rules_use_only_exported_metrics_and_labels(exported: Exported) -> None:
    problems: list[str] = []
    for rule in _alerts():
        where = f"alerts.yml {rule['alert']}"
        problems += check_expr(rule["expr"], exported, where)
        available = available_labels(rule["expr"], exported)
        for text in rule["annotations"].values():
            for label in re.findall(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)", text):
                if available is not None and label not in available:
                    problems.append(f"{where}: annotation uses $labels.{label}, not in the result")
    assert problems == []


def test_check_expr_catches_mistakes(exported: Exported) -> None:
    assert check_expr("computewatch_collector_rejected_total > 0", exported, "x") == []
    # A counter without _total, a label the metric lacks, a reason nobody raises.
    # (Syntax errors are promtool's and Prometheus's to find, not a regex's.)
    assert check_expr("computewatch_collector_rejected > 0", exported, "x")
    assert check_expr('computewatch_collector_rejected_total{node="a"} > 0', exported, "x")
    assert check_expr('computewatch_collector_rejected_total{reason="nope"}', exported, "x")
    assert check_expr('computewatch_nodes{state="sleepy"} > 0', exported, "x")


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_dashboard_uses_only_exported_metrics_and_labels(exported: Exported) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "computewatch.json").read_text())
    problems: list[str] = []
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            where = f"dashboard panel {panel['title']!r}"
            problems += check_expr(expr, exported, where)
            available = available_labels(expr, exported)
            for label in re.findall(
                r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", target["legendFormat"]
            ):
                if available is not None and label not in available:
                    problems.append(f"{where}: legend uses {label}, not in the result")
    for variable in dashboard["templating"]["list"]:
        query = variable.get("definition", "")
        problems += check_expr(query, exported, f"dashboard variable {variable['name']}")
    assert problems == []
