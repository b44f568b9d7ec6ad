"""``/metrics`` served by ``collector.services.exposition`` carries exactly the lines
``prometheus_client`` writes for the same registry, in both formats (only
the families' order differs), over real HTTP on loopback."""

from __future__ import annotations

import gzip
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as om
from prometheus_client.parser import text_string_to_metric_families

from collector.accounting.aggregate import Aggregator
from collector.nodes.sessions import Sessions
from collector.services.exposition import start_metrics_server
from collector.services.metrics import CollectorMetrics
from collector.store.ledger import Ledger
from collector.telemetry.ingest import IngestStats
from protos.computewatch.v1 import telemetry_pb2
from tests.support import gpu

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _aggregator() -> Aggregator:
    agg = Aggregator()
    for n in range(5):
        lost = gpu(1, job=None)
        lost.health = telemetry_pb2.GPU_HEALTH_LOST
        report = telemetry_pb2.NodeReport(
            node_id=f"n{n}",
            sequence=1,
            interval_seconds=1.0,
            gpus=[gpu(0, util=10.0 * n, job=f"j{n % 2}"), lost],
        )
        report.jobs.add(job_id=f"j{n % 2}", actor="org:acme")
        agg.ingest(report, n, 100.0 if n else 90.0)  # n0 is silent at 101
    agg.enroll('odd "node"\\id')  # never seen; a label value that needs escaping
    agg.note_chain_break("n2")
    agg.note_chain_break('odd "node"\\id')
    return agg


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, CollectorRegistry]]:
    registry = CollectorRegistry()
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    metrics = CollectorMetrics(
        IngestStats(), ledger, _aggregator(), Sessions(), clock=lambda: 101.0
    )
    registry.register(metrics)
    httpd, _ = start_metrics_server(0, addr="127.0.0.1", registry=registry, metrics=metrics)
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/metrics", registry
    finally:
        httpd.shutdown()
        httpd.server_close()


def _get(url: str, **headers: str) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read(), dict(response.headers)


def test_text_format_has_the_same_lines(served: tuple[str, CollectorRegistry]) -> None:
    url, registry = served
    body, headers = _get(url)
    want = generate_latest(registry).decode()
    assert headers["Content-Type"].startswith("text/plain")
    assert sorted(body.decode().splitlines()) == sorted(want.splitlines())
    assert 'computewatch_node_chain_breaks_total{node="odd \\"node\\"\\\\id"} 1.0' in want
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert len(families["computewatch_node_achieved_flops"].samples) == 5
    assert len(families["computewatch_node_chain_breaks"].samples) == 6


def test_openmetrics_has_the_same_lines_and_ends_with_eof(
    served: tuple[str, CollectorRegistry],
) -> None:
    url, registry = served
    body, headers = _get(url, Accept=OPENMETRICS, **{"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(body).decode()
    want = om.generate_latest(registry).decode()
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    assert sorted(text.splitlines()) == sorted(want.splitlines())


def test_filters_and_methods_behave_as_prometheus_client(
    served: tuple[str, CollectorRegistry],
) -> None:
    url, registry = served
    body, _ = _get(url + "?name[]=computewatch_node_achieved_flops")
    assert body == generate_latest(
        registry.restricted_registry(["computewatch_node_achieved_flops"])
    )
    assert _get(url.replace("/metrics", "/favicon.ico"))[0] == b""
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, data=b"x", method="POST"), timeout=10)
    assert refused.value.code == 405
    refused.value.close()
