"""Status, its text view and /metrics show compute as intervals, never a bare
0 for what was not measured."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from prometheus_client import CollectorRegistry

from collector.accounting.aggregate import Aggregator
from collector.nodes.sessions import Sessions
from collector.services.metrics import CollectorMetrics
from collector.services.status import build_status
from collector.store.ledger import Ledger
from collector.telemetry.ingest import IngestStats
from computewatch.cli_status import render_status
from computewatch.demo.view import render
from protos import devices
from protos.computewatch.v1 import telemetry_pb2
from tests.support import gpu

UNKNOWN = "NVIDIA RTX PRO 6000 Blackwell Server Edition"


def _fleet() -> Aggregator:
    agg = Aggregator(silent_after_intervals=3)
    for seq in (1, 2):
        agg.ingest(
            telemetry_pb2.NodeReport(
                node_id="odd",
                sequence=seq,
                sample_unix_nanos=int((100 + seq) * 1e9),
                interval_seconds=1.0,
                gpus=[gpu(0, product=UNKNOWN, util=50.0, job="mystery")],
            ),
            seq - 1,
            100.0 + seq,
        )
        agg.ingest(
            telemetry_pb2.NodeReport(
                node_id="h100",
                sequence=seq,
                sample_unix_nanos=int((100 + seq) * 1e9),
                interval_seconds=1.0,
                gpus=[gpu(0, util=100.0, tensor=100.0, job="known")],
            ),
            seq + 1,
            100.0 + seq,
        )
    return agg


def test_status_gives_every_job_an_interval_and_unknown_is_not_zero() -> None:
    st = build_status(
        _fleet(), IngestStats(), 4, 102.0, possibly_crossed=lambda: [("r", "mystery")]
    )
    jobs = {j.job_id: j for j in st.jobs}
    mystery, known = jobs["mystery"], jobs["known"]
    assert not mystery.HasField("cumulative_flop_estimate")
    assert mystery.cumulative_flop_upper_bound == 0.5 * devices.TABLE_MAX_PEAK_FLOPS * 2
    assert mystery.unmeasured_gpu_seconds == 2.0
    assert mystery.method == "unknown_model"
    assert list(mystery.possibly_crossed_rules) == ["r"]
    assert known.HasField("cumulative_flop_estimate")
    assert known.cumulative_flop_upper_bound >= known.cumulative_flop_estimate > 0
    assert st.unmeasured_gpu_seconds == 2.0
    assert list(st.possibly_crossed) == ["r mystery"]
    text = render_status(st)
    line = next(ln for ln in text.splitlines() if ln.startswith("mystery"))
    assert "unknown (<= " in line
    assert "2 GPU-s unmeasured" in line
    assert "possibly crossed: r mystery" in text


def test_a_job_on_a_silent_node_has_no_estimate_in_status() -> None:
    st = build_status(_fleet(), IngestStats(), 4, 200.0)
    known = next(j for j in st.jobs if j.job_id == "known")
    assert not known.HasField("achieved_flops_estimate")
    assert known.achieved_flops_upper_bound > 0
    assert "unknown (<= " in render_status(st)


def test_metrics_export_the_bounds_and_unmeasured_time(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    agg = _fleet()
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    registry.register(CollectorMetrics(IngestStats(), ledger, agg, Sessions(), clock=lambda: 102.0))
    unmeasured = registry.get_sample_value("computewatch_cluster_unmeasured_gpu_seconds")
    assert unmeasured == 2.0
    upper = registry.get_sample_value("computewatch_cluster_upper_bound_cumulative_flop")
    assert upper is not None
    assert upper > 0.5 * devices.TABLE_MAX_PEAK_FLOPS * 2
    node = registry.get_sample_value(
        "computewatch_node_upper_bound_achieved_flops", {"node": "odd"}
    )
    assert node == 0.5 * devices.TABLE_MAX_PEAK_FLOPS
    odd = registry.get_sample_value("computewatch_node_achieved_flops", {"node": "odd"})
    assert odd is not None
    assert math.isnan(odd)  # unknown, never 0

    asyncio.run(ledger.close())


def test_the_demo_live_view_shows_the_same_forms() -> None:
    st = build_status(
        _fleet(), IngestStats(), 4, 102.0, possibly_crossed=lambda: [("r", "mystery")]
    )
    text = render(st, [], elapsed=1.0, duration=2.0, job_thresholds=[1e18], events=[])
    line = next(ln for ln in text.splitlines() if ln.startswith("mystery"))
    assert "unknown (<= " in line
    assert "POSSIBLY CROSSED r" in line
    known = next(ln for ln in text.splitlines() if ln.startswith("known"))
    assert "(<= " in known


def test_with_every_node_silent_the_cluster_rate_is_unknown() -> None:
    st = build_status(_fleet(), IngestStats(), 4, 200.0)
    assert not st.HasField("achieved_flops_estimate")
    assert st.achieved_flops_upper_bound > 0
    assert "achieved unknown (<= " in render_status(st)
