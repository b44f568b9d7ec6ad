"""The failover benchmark runs at a tiny size and its counts hold (never its timings)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from bench.bench_failover import failover
from tests.pg_support import fresh_database


def test_one_kill_loses_no_acknowledged_entry_and_the_tree_stays_consistent(
    pg_server: str,
) -> None:
    args = argparse.Namespace(kills=1, rate=100, lease=1.0, renew=0.2, seed=1)
    result = failover(fresh_database(pg_server), args)
    assert result["kills"] == 1
    assert result["acknowledged_then_lost"] == 0
    assert result["consistency_proofs_verified"] == "1/1"
    acknowledged = result["acknowledged"]
    assert isinstance(acknowledged, int)
    assert acknowledged > 0
    entries = result["entries_in_log"]
    assert isinstance(entries, int)
    assert entries >= acknowledged


def test_agents_fail_over_with_nothing_lost_or_doubled(
    tmp_path: Path,
    pg_server: str,
) -> None:
    from bench.bench_agent_failover import run

    args = argparse.Namespace(agents=3, kills=1, lease=1.0, renew=0.2, settle=0.5)
    result = asyncio.run(run(fresh_database(pg_server), tmp_path, args))
    assert result["kills"] == 1
    assert result["acknowledged_then_lost"] == 0
    assert result["stored_twice"] == 0
    assert result["consistency_proofs_verified"] == "1/1"
    acked = result["reports_acknowledged"]
    assert isinstance(acked, int)
    assert acked >= 3 * 2
