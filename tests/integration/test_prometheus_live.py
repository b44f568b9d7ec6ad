"""A real Prometheus (Debian's package) scrapes a live simulated cluster.

The cluster is the demo's (collector and real agents on the fake NVML), with
/metrics on loopback, and Prometheus is configured by the same files
``computewatch demo --serve`` writes. Once every target is up and scraped a
few times, every dashboard expression and every alert expression is evaluated
through Prometheus's HTTP API: each must evaluate without error and return
data, unless it is listed below with the reason it cannot here. The alert
rules themselves must evaluate with health "ok", and the first forged report
fires its critical alert. ``promtool check metrics`` runs on every live
endpoint.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.fakenvml.scenario import load_scenario
from computewatch.demo.cluster import Cluster, start_cluster
from computewatch.demo.prometheus import write_prometheus_files
from protos.keys import PrivateKey
from protos.tls import channel_credentials
from tests.prom_support import DEPLOY, check_metrics, fetch, free_port, run_tool, tool
from tests.support import Node, StreamClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SCENARIO = """
name: prometheus-live
duration_seconds: 600
interval_seconds: 0.5
nodes:
  - {id_prefix: "n", count: 2, gpus: [{model: "NVIDIA H100 80GB HBM3", count: 2}]}
jobs:
  - {id: "81", nodes: ["n00"], utilization: [[0, 60]], tensor_fraction: 0.5, memory_gib: 10}
"""

# Dashboard and alert expressions (or parts of alert expressions) that return
# no data from a healthy two-node cluster, and why. Anything else without data
# fails the test.
NO_DATA_HERE = {
    "absent(computewatch_collector_streams_open)": "absent() is empty while the collector is up",
    "computewatch_rule_firing > 0": "no rule fires in this scenario (the job stays under them)",
    "sum by (node, function) (computewatch_agent_nvml_field_errors)": "the agent exports a"
    " function only while it fails, and no NVML call fails in this scenario",
    # Collectors in high availability only: a single-node (SQLite) collector,
    # as here, exports no leader series.
    "sum by (job, namespace) (computewatch_collector_leader)": "single-node collector",
    "sum by (job, namespace) (increase(computewatch_collector_leader_elections_total[30m]))": (
        "single-node collector"
    ),
    "increase(computewatch_collector_leader_lease_errors_total[5m])": "single-node collector",
}

# Grafana's variables, as Grafana would expand them here.
GRAFANA_VARS = {"$__rate_interval": "30s", "$__interval": "5s", '"$node"': '".*"'}
_COMPARISON = re.compile(r"\s*(?:>|<|==|!=|>=|<=)\s*[0-9.e+]+\s*$")

Sample = dict[str, Any]


def _dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "computewatch.json").read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    out = []
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            out.append((f"dashboard {panel['title']!r}", expr))
    return out


def _alert_parts() -> list[tuple[str, str]]:
    """Each alert's operands: the expression split at ``and``, each without its
    final threshold, so that "returns data" means "could fire"."""
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    out = []
    for group in doc["groups"]:
        for rule in group["rules"]:
            for part in str(rule["expr"]).split(" and "):
                out.append((f"alert {rule['alert']}", _COMPARISON.sub("", part.strip())))
    return out


class _Prometheus:
    def __init__(self, binary: str, config: Path, data: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        body = json.loads(fetch(f"{self.url}/api/v1/{path}?{query}"))
        assert body["status"] == "success", body
        return body["data"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


async def _until(what: str, cond: Callable[[], bool], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await asyncio.to_thread(cond):
                return
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{tail}")
        await asyncio.sleep(0.5)


def test_real_prometheus_evaluates_every_dashboard_and_alert_expression(tmp_path: Path) -> None:
    binary = tool("prometheus")
    promtool = tool("promtool")
    path = tmp_path / "scenario.yaml"
    path.write_text(SCENARIO)
    scenario = load_scenario(path)
    log = tmp_path / "prometheus.log"
    no_data: dict[str, str] = {}

    async def run() -> None:
        cluster: Cluster = await start_cluster(
            scenario,
            path,
            tmp_path / "w",
            rule_packs=("demo", "operator-default"),
            metrics_address="127.0.0.1",
        )
        prom: _Prometheus | None = None
        try:
            assert cluster.collector_metrics is not None
            config = write_prometheus_files(
                tmp_path / "prom",
                cluster.collector_metrics,
                cluster.agent_metrics,
                collector_ca=cluster.ca_cert,
                scrape_interval="1s",
            )
            run_tool([promtool, "check", "config", str(config)])
            prom = _Prometheus(binary, config, tmp_path / "data", log)
            p = prom

            def targets_up() -> bool:
                active = p.api("targets")["activeTargets"]
                return len(active) == 1 + len(cluster.nodes) and all(
                    t["health"] == "up" for t in active
                )

            await _until("every target up", targets_up, 90, log)
            # The collector is scraped over HTTPS, verified with the demo's CA.
            scrape_urls = {
                t["labels"]["job"]: t["scrapeUrl"] for t in p.api("targets")["activeTargets"]
            }
            assert scrape_urls["computewatch-collector"].startswith("https://")

            def scraped_enough() -> bool:
                r = p.api("query", query="count_over_time(computewatch_agent_halted_gpus[1m])")
                return len(r["result"]) == len(cluster.nodes) and all(
                    float(s["value"][1]) >= 5 for s in r["result"]
                )

            await _until("five scrapes of every agent", scraped_enough, 90, log)

            def rules_evaluated() -> bool:
                groups = p.api("rules")["groups"]
                return bool(groups) and all(
                    r["lastEvaluation"] > "0001" and r["health"] != "unknown"
                    for g in groups
                    for r in g["rules"]
                )

            await _until("the alert rules evaluated", rules_evaluated, 60, log)
            rules = [r for g in p.api("rules")["groups"] for r in g["rules"]]
            assert {r["name"]: r["health"] for r in rules if r["health"] != "ok"} == {}
            assert {r["name"]: r.get("lastError") for r in rules if r.get("lastError")} == {}

            for where, expr in _dashboard_exprs() + _alert_parts():
                result = await asyncio.to_thread(p.api, "query", query=expr)
                if not result["result"]:
                    no_data[expr] = where

            # The node label comes from the file_sd targets, not the address.
            info = p.api("query", query="computewatch_agent_info")["result"]
            assert {s["metric"]["node"] for s in info} == {n.node_id for n in cluster.nodes}
            assert all(s["metric"]["node"] == s["metric"]["node_id"] for s in info)

            # The FIRST forged report fires its critical alert: its reason's
            # series existed at 0 before, so increase() sees the step to 1.
            def firing(name: str) -> bool:
                return any(
                    a["labels"]["alertname"] == name and a["state"] == "firing"
                    for a in p.api("alerts")["alerts"]
                )

            forged_alert = "ComputewatchForgedOrConflictingReports"
            assert not firing(forged_alert)
            forger = Node(cluster.nodes[0].node_id, PrivateKey.generate())  # a key nobody enrolled
            client = StreamClient(cluster.collector.address, channel_credentials(cluster.ca_cert))
            try:
                await client.send(forger.next())
                reply = await client.receive()
                assert reply.reject.reason == "unknown_node", reply
            finally:
                await client.close()
            await _until("the first forged report's alert", lambda: firing(forged_alert), 60, log)

            # The collector serves /metrics over TLS (its default), the demo's agents plain.
            url = f"https://{cluster.collector_metrics}/metrics"
            body = await asyncio.to_thread(fetch, url, ca=cluster.ca_cert)
            check_metrics(promtool, body, cluster.collector_metrics)
            for address in cluster.agent_metrics.values():
                body = await asyncio.to_thread(fetch, f"http://{address}/metrics")
                check_metrics(promtool, body, address)
        finally:
            if prom is not None:
                await asyncio.to_thread(prom.stop)
            await cluster.stop()

    asyncio.run(run())
    for expr, where in sorted(no_data.items()):
        print(f"no data: {where}: {expr}: {NO_DATA_HERE.get(expr, 'NO REASON LISTED')}")
    unexplained = {expr: where for expr, where in no_data.items() if expr not in NO_DATA_HERE}
    assert unexplained == {}, "expressions without data and without a reason listed"
