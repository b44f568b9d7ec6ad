"""The halt benchmark at a tiny size: 8 real agents (and 8 light responders)
in two host processes, a collector in its own, one crossing, one halt.

Timings are never asserted: only that the crossing report is the trigger's,
that every agent's receipt was logged for the one HALT, that nothing was
refused or failed, and that the timeline is in causal order.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench import bench_halt, halt_setup, run_all
from bench.common import BenchError
from bench.halt_figures import HaltResult, HaltRun
from computewatch.cli import cli

AGENTS = 8


def tiny(tmp_path: Path, *, light: bool = False) -> HaltRun:
    return bench_halt.run_once(
        AGENTS,
        0.1,
        hosts=2,
        interval=1.0,
        steady=0.5,
        timeout=60.0,
        base=tmp_path,
        agent_base=tmp_path,
        light=light,
    )


def causal(r: HaltRun) -> None:
    assert r.receipts == AGENTS
    assert r.crossing_in_evidence
    assert r.measured_flops > r.threshold_flops
    assert r.refused == {}
    assert r.halt_refusals == 0
    assert r.steps_failed == 0
    assert 0 <= r.tick_wait_ms <= r.issue_ms <= r.pushed_ms
    assert r.pushed_ms <= r.arrival_min_ms <= r.arrival_p50_ms <= r.arrival_p99_ms
    assert r.arrival_p50_ms <= r.enforced_p50_ms
    assert r.receipt_min_ms <= r.receipt_p50_ms <= r.receipt_p99_ms <= r.receipt_max_ms
    assert r.receipt_max_ms <= r.effective_ms
    assert min(r.evaluation_ms, r.commit_ms, r.fanout_ms) >= 0
    assert set(r.steady_hook_ms) == {"rules", "leases", "reconcile", "effectiveness"}
    assert r.steady_ticks_per_second > 0


def test_real_agents_halt_and_every_receipt_is_logged(tmp_path: Path) -> None:
    r = tiny(tmp_path)
    assert r.kind == "agent"
    causal(r)
    # Each agent enforced: the handler returned after the envelope arrived.
    assert 0 <= r.handle_p50_ms <= r.handle_p99_ms
    assert r.agent_cpu_percent > 0

    # Medians per tick setting, and the rows the table prints.
    other = dataclasses.replace(r, tick_seconds=1.0, receipt_p99_ms=r.receipt_p99_ms + 10)
    result = HaltResult(AGENTS, 2, 1.0, [r, other, dataclasses.replace(other, receipt_p99_ms=0)])
    by_tick = result.summary()
    assert [t["tick_seconds"] for t in by_tick] == [1.0, 0.1]
    assert by_tick[0]["runs"] == 2
    assert by_tick[0]["receipt_p99_ms"] == pytest.approx((r.receipt_p99_ms + 10) / 2)
    assert by_tick[0]["receipt_p99_ms_worst"] == r.receipt_p99_ms + 10
    text = "\n".join("  ".join(row) for row in run_all.rows({"halt": result.to_dict()}))
    assert "halt: last receipt p99, 8 agents, tick 0.1 s" in text
    assert "halt: rules evaluation, tick 1 s" in text
    json.dumps(result.to_dict())  # the document --out writes


def test_light_responders_are_effective_with_their_last_receipt(tmp_path: Path) -> None:
    r = tiny(tmp_path, light=True)
    assert r.kind == "light"
    causal(r)
    # Their receipt report already shows the GPUs prohibited and idle.
    assert math.isclose(r.effective_ms, r.receipt_max_ms)


def test_only_the_trigger_can_cross() -> None:
    per_node = halt_setup.node_allocated_flops(8)
    line = halt_setup.threshold(1000, 8)
    assert 999 * per_node < line < 1000 * per_node
    doc = halt_setup.scenario_doc([f"n{i}" for i in range(17)], 8, 5.0)
    jobs = {j["id"]: j["nodes"] for j in doc["jobs"]}
    assert jobs[halt_setup.TRIGGER_JOB] == ["n16"]
    assert sum(len(n) for n in jobs.values()) == 17  # each node runs exactly one job
    assert "allocated_flops" in halt_setup.pack_yaml(line)


def test_bad_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="trigger"):
        bench_halt.run_once(1, 0.1, base=tmp_path)
    with pytest.raises(BenchError, match="hosts"):
        bench_halt.run_once(4, 0.1, hosts=5, base=tmp_path)
    with pytest.raises(BenchError, match="positive"):
        bench_halt.run_once(4, 0.0, base=tmp_path)
    with pytest.raises(BenchError, match="at least 1 run"):
        bench_halt.run(4, runs=0)


def test_cli_runs_the_halt_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = CliRunner().invoke(
        cli, ["bench", "halt", "--quick", "--agents", "4", "--runs", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "halt: last receipt p99, 4 agents" in result.output
    doc = json.loads(out.read_text())
    (run,) = doc["results"]["halt"]["runs"]
    assert run["receipts"] == 4
