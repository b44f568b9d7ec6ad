"""The /metrics endpoint runs in prometheus_client's HTTP thread while the event
loop ingests reports: a scrape must never trip over dicts that grow under it."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from collector.accounting.aggregate import Aggregator
from collector.nodes.sessions import Sessions
from collector.services.metrics import CollectorMetrics
from collector.store.ledger import Ledger
from collector.telemetry.ingest import IngestStats
from protos.computewatch.v1 import telemetry_pb2
from tests.support import gpu

NODES = 200
MAX_CHURN = 20_000
SCRAPES = 20


def report(node: str, job: str) -> telemetry_pb2.NodeReport:
    return telemetry_pb2.NodeReport(
        node_id=node, sequence=1, interval_seconds=1.0, gpus=[gpu(0, util=50.0, job=job)]
    )


def test_a_scrape_while_reports_arrive_does_not_fail(tmp_path: Path) -> None:
    agg = Aggregator()
    for n in range(NODES):
        agg.ingest(report(f"n{n}", f"j{n}"), n, 0.0)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    registry = CollectorRegistry()
    registry.register(CollectorMetrics(IngestStats(), ledger, agg, Sessions(), clock=lambda: 1.0))
    stop = threading.Event()

    def churn() -> None:
        # What the event loop does between two scrapes: new jobs, new nodes.
        for i in range(MAX_CHURN):
            if stop.is_set():
                return
            agg.ingest(report(f"n{i % NODES}", f"new{i}"), i, 0.0)
            agg.enroll(f"late{i}")

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads as often as the interpreter can
    writer = threading.Thread(target=churn)
    writer.start()
    try:
        for _ in range(SCRAPES):
            text = generate_latest(registry).decode()
            assert "computewatch_cluster_installed_flops" in text
    finally:
        stop.set()
        writer.join()
        sys.setswitchinterval(old)
        asyncio.run(ledger.close())
