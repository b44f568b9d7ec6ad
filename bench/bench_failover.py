"""Failover of the sequencing collector on PostgreSQL, and PostgreSQL's ingest
rate next to SQLite's (issue 12's figures; measured, never asserted in tests).

Failover: what users run. Two ``computewatch collector serve`` processes
(``bench.ha_cluster``: one PostgreSQL from Debian's binaries, the same
collector key, TLS, ``[ha]`` leader lease + fencing) and ``--agents`` agents
streaming one report a second to whichever leads
(``bench.bench_agent_failover``). Each round kills the leader with SIGKILL and
measures the time until the standby sequences and until every agent caught
up, then restarts the dead one as the new standby. At the end every
acknowledged report must be in the ledger exactly once (``acknowledged_then_lost``
must be 0) and a consistency proof from the tree head before each kill to the
one after it must verify.

    python -m bench.bench_failover --agents 200 --kills 10 --lease 1.0 --renew 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from bench import bench_agent_failover
from collector.ha.leader import LeaderLease
from collector.store.interface import LedgerStore
from collector.store.ledger_store import Entry
from collector.store.pg_store import PgStore
from collector.store.sqlite_store import SqliteStore


def failover(url: str, root: Path, args: argparse.Namespace) -> dict[str, object]:
    """``--kills`` SIGKILLs of the leading ``collector serve`` under ``--agents`` agents."""
    return asyncio.run(bench_agent_failover.run(url, root, args))


def ingest_rate(store: LedgerStore, reports: int, batch: int) -> float:
    """Reports/s through ``append_batch`` (log, chain and tree rows, one commit per batch)."""
    payload = os.urandom(900)
    start = time.perf_counter()
    for first in range(0, reports, batch):
        entries = [
            Entry(
                payload + i.to_bytes(8, "big"),
                "bench",
                f"n{i % 64}",
                f"k{i % 64}",
                i // 64 + 1,
                i.to_bytes(32, "big"),
            )
            for i in range(first, min(reports, first + batch))
        ]
        store.append_batch(first, entries, time.time_ns(), term=1)
    return reports / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--agents", type=int, default=200)
    p.add_argument("--lease", type=float, default=1.0, help="[ha] leader_lease_seconds")
    p.add_argument("--renew", type=float, default=0.2, help="[ha] renew_seconds")
    p.add_argument("--settle", type=float, default=2.0, help="seconds between kills")
    p.add_argument("--reports", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    from bench.pg_temp import create_database, temp_server

    with temp_server() as server, tempfile.TemporaryDirectory() as tmp:
        result: dict[str, object] = {
            "failover": failover(create_database(server, "fo"), Path(tmp), args)
        }
        pg = PgStore(create_database(server, "ingest"))
        with tempfile.TemporaryDirectory() as lite_dir:
            lite = SqliteStore(Path(lite_dir) / "ledger.db")
            sqlite_rate = ingest_rate(lite, args.reports, args.batch)
            lite.close()
        with psycopg_leader(pg.url):
            pg_rate = ingest_rate(pg, args.reports, args.batch)
        pg.close()
    result["ingest"] = {
        "reports": args.reports,
        "batch": args.batch,
        "sqlite_reports_per_second": round(sqlite_rate),
        "postgresql_reports_per_second": round(pg_rate),
        "postgresql_to_sqlite": round(pg_rate / sqlite_rate, 3),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")


class psycopg_leader:  # noqa: N801 - a context manager used like a function
    """Hold term 1 of the ingest database's lease, so the writes pay for the fence."""

    def __init__(self, url: str) -> None:
        self._lease = LeaderLease(url, "ingest", lease_seconds=3600)

    def __enter__(self) -> None:
        self._lease.try_acquire()

    def __exit__(self, *exc: object) -> None:
        self._lease.close()


if __name__ == "__main__":
    main()
