"""The failover benchmark runs at a tiny size and its counts hold (never its timings):
real ``collector serve`` processes on PostgreSQL, agents failing over between them."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.bench_failover import failover
from tests.pg_support import fresh_database


def test_agents_fail_over_between_collector_processes_with_nothing_lost_or_doubled(
    tmp_path: Path,
    pg_server: str,
) -> None:
    args = argparse.Namespace(agents=3, kills=1, lease=1.0, renew=0.2, settle=0.5)
    result = failover(fresh_database(pg_server), tmp_path, args)
    assert result["kills"] == 1
    assert result["acknowledged_then_lost"] == 0
    assert result["stored_twice"] == 0
    assert result["consistency_proofs_verified"] == "1/1"
    acked = result["reports_acknowledged"]
    assert isinstance(acked, int)
    assert acked >= 3 * 2
