"""The benchmark scripts run at tiny sizes and count correctly.

Timings are never asserted: only that every report sent was acknowledged,
accepted and stored, and that the figures are the right kind of number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench import bench_agent, bench_fleet, bench_ingest, run_all
from bench.common import BenchError, machine
from computewatch.cli import cli


def test_ingest_counts_every_report_once(tmp_path: Path) -> None:
    r = bench_ingest.run(2, 20, gpus=8, timeout=60.0, base=tmp_path, verify_seconds=0.2)
    assert r.reports == 40
    assert r.accepted == 40
    assert r.ledger_reports == 40
    assert r.rejected == {}
    assert r.reports_per_second > 0
    assert r.raw_verify_per_second == max(r.raw_verify_per_second_rounds) > 0
    assert math.isclose(r.ratio, r.reports_per_second / r.raw_verify_per_second)
    assert r.collector_cpu_seconds >= 0
    assert r.collector_rss_bytes > 1 << 20
    assert 0 < r.acks_per_report <= 1
    assert r.envelope_bytes > 1000  # eight GPUs' worth of report


def test_ingest_runs_with_verification_on_the_event_loop(tmp_path: Path) -> None:
    r = bench_ingest.run(
        2, 5, gpus=1, timeout=60.0, base=tmp_path, verify_seconds=0.1, verify_threads=0
    )
    assert r.accepted == r.ledger_reports == 10


def test_fleet_reports_on_schedule_and_all_are_stored(tmp_path: Path) -> None:
    r = bench_fleet.run(10, 2.0, interval=0.5, warmup=0.5, timeout=60.0, base=tmp_path)
    assert r.agents == 10
    assert r.sessions == 10
    assert r.reports_sent == r.reports_acked == r.ledger_reports == r.accepted
    # (0.5 s warm-up + 2 s) / 0.5 s, plus one: 6 reports per agent.
    assert r.reports_sent == 10 * 6
    assert r.rejected == {}
    assert 0 <= r.ack_latency_p50_ms <= r.ack_latency_p99_ms <= r.ack_latency_max_ms
    assert r.collector_rss_max_bytes >= r.collector_rss_bytes > 1 << 20
    assert r.window_seconds >= 2.0


def test_agent_samples_eight_fake_gpus(tmp_path: Path) -> None:
    r = bench_agent.run(20, gpus=8, base=tmp_path)
    assert r.samples == 20
    assert r.reports_sealed >= 20
    assert r.cpu_ms_per_sample > 0
    assert r.backend_cpu_ms_per_sample > 0
    # The backend reads every GPU: at least one NVML call per GPU per sample.
    assert r.nvml_calls_per_sample >= 8
    assert r.envelope_bytes > 1000


def test_bad_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="at least 1"):
        bench_ingest.run(0, 10, base=tmp_path)
    with pytest.raises(BenchError, match="interval"):
        bench_fleet.run(10, 1.0, interval=0, base=tmp_path)
    with pytest.raises(BenchError, match="at least 1"):
        bench_agent.run(0, base=tmp_path)
    with pytest.raises(BenchError, match="unknown benchmark"):
        run_all.run(["nope"])


def test_table_names_every_figure_that_ran() -> None:
    ingest = {
        "agents": 2,
        "reports": 40,
        "gpus_per_report": 8,
        "reports_per_second": 1000.0,
        "raw_verify_per_second": 8000.0,
        "raw_verify_per_second_all_cores": 15000.0,
        "ratio": 0.125,
        "collector_cpu_percent": 90.0,
        "collector_rss_bytes": 64 << 20,
        "acks_per_report": 0.1,
        "load_average_1m": 0.5,
    }
    text = "\n".join("  ".join(row) for row in run_all.rows({"ingest": ingest}))
    assert "1,000" in text
    assert "0.12" in text
    assert "halt" not in text
    assert "fleet" not in text


def test_machine_names_cores_and_versions() -> None:
    m = machine()
    assert isinstance(m["logical_cores"], int)
    assert m["logical_cores"] >= 1
    versions = m["versions"]
    assert isinstance(versions, dict)
    assert {"grpcio", "cryptography", "python", "sqlite"} <= set(versions)


def test_cli_runs_a_benchmark_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = CliRunner().invoke(cli, ["bench", "agent", "--samples", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "agent: CPU per sample" in result.output
    doc = json.loads(out.read_text())
    assert doc["results"]["agent"]["samples"] == 5
    assert doc["machine"]["logical_cores"] >= 1


def test_cli_refuses_an_unknown_benchmark() -> None:
    result = CliRunner().invoke(cli, ["bench", "everything"])
    assert result.exit_code == 2
    assert "everything" in result.output
