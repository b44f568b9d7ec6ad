"""kill -9 of the collector and the agent (real processes) at random moments:
every acknowledged report is in the ledger exactly once, the chain is
contiguous, nothing becomes evidence, and ``audit verify`` passes.

The harness is ``bench.crash_loop`` (the benchmark runs it 50 times); here it
runs a few iterations, each wait bounded (60 s to come up, 90 s to drain).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import crash_loop
from bench.common import BenchError


def test_kill_9_at_random_moments_loses_and_repeats_nothing(tmp_path: Path) -> None:
    result = crash_loop.run(6, seed=5, root=tmp_path)
    assert result.problems == []
    assert result.survived == 6
    assert result.collector_kills >= 1
    assert result.agent_kills >= 1
    # Everything sealed was acknowledged in the end, and is stored once, in order.
    assert result.reports_acked == result.reports_sealed > 6
    assert result.reports_lost == 0
    assert result.duplicates == 0
    assert result.chain_breaks == 0
    assert result.evidence_rows == 0
    assert result.audit_ok
    crash_loop.check(result)  # the benchmark's own verdict agrees


def test_the_check_refuses_a_run_that_lost_a_report() -> None:
    result = crash_loop.CrashResult(
        iterations=1, survived=1, reports_sealed=3, reports_acked=3, audit_ok=True
    )
    crash_loop.check(result)
    result.reports_lost = 1
    with pytest.raises(BenchError, match="crash loop failed"):
        crash_loop.check(result)
