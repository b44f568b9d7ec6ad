"""The ledger's group commit and fail-stop over both stores; fencing on PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from collector.store import open_store
from collector.store.ledger_store import Entry
from collector.store.sequencer import StoreLedger
from protos import merkle
from protos.errors import LedgerUnavailableError
from tests.pg_support import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'ledger.db'}"
    return fresh_database(request.getfixturevalue("pg_server"))


def report(key: str, seq: int) -> Entry:
    data = f"{key}:{seq}".encode()
    return Entry(data, "t", f"node-{key}", key, seq, merkle.leaf_hash(data))


def test_appends_resolve_after_commit_in_groups_and_read_back(store_url: str) -> None:
    async def scenario() -> None:
        ledger = StoreLedger(open_store(store_url), max_batch=16)
        sizes: list[int] = []
        ledger.add_commit_listener(sizes.append)
        futs = [ledger.append(report(f"k{i % 4}", i // 4 + 1)) for i in range(40)]
        indices = await asyncio.gather(*futs)
        assert indices == list(range(40))
        assert ledger.size == 40
        assert sizes[-1] == 40
        assert ledger.batches < 40  # grouped: 40 entries in fewer transactions
        assert ledger.stored_sequence("k3") == 10
        assert ledger.report_bytes("k1", 2) == b"k1:2"
        assert ledger.report_index("k1", 2) == 5
        assert [e.data for e in ledger.entries(0, 3)] == [b"k0:1", b"k1:1", b"k2:1"]
        assert (
            ledger.store.root()
            == merkle.MemoryTree(
                merkle.leaf_hash(f"k{i % 4}:{i // 4 + 1}".encode()) for i in range(40)
            ).root()
        )
        assert ledger.record_evidence("equivocation", "n", 1, b"a", b"b", keyid="k", keep=1)
        assert not ledger.record_evidence("equivocation", "n", 1, b"a", b"c", keyid="k", keep=1)
        assert ledger.evidence_count() == 1
        assert ledger.evidence_seen("k", "equivocation") == 2
        await ledger.close()
        again = StoreLedger(open_store(store_url))
        assert again.size == 40
        await again.close()

    asyncio.run(scenario())


def test_a_deposed_leader_fails_stop_and_resumes_only_when_it_leads_again(
    pg_server: str,
) -> None:
    from collector.ha.leader import LeaderLease

    url = fresh_database(pg_server)
    now = [10**12]
    lease_a = LeaderLease(url, "a", lease_seconds=5, clock_ns=lambda: now[0])
    lease_b = LeaderLease(url, "b", lease_seconds=5, clock_ns=lambda: now[0])

    async def scenario() -> None:
        assert lease_a.try_acquire() == 1
        a = StoreLedger(
            open_store(url),
            term=lambda: lease_a.term,
            retry_min_seconds=0.01,
            retry_max_seconds=0.05,
        )
        states: list[bool] = []
        a.add_state_listener(states.append)
        assert await a.append(report("x", 1)) == 0
        now[0] += 6 * 10**9  # a stalls past its lease; b takes over
        assert lease_b.try_acquire() == 2
        b = StoreLedger(open_store(url), term=lambda: lease_b.term)
        assert b.size == 1
        assert await b.append(report("y", 1)) == 1
        # a wakes up: its batch is refused by the fence, nothing is written
        first, second = a.append(report("x", 2)), a.append(report("x", 3))
        for fut in (first, second):  # the batch and what queued behind it
            with pytest.raises(LedgerUnavailableError, match="fencing term 1 refused"):
                await fut
        assert not a.writable
        assert states == [False]
        with pytest.raises(LedgerUnavailableError):
            await a.append(report("x", 2))
        assert lease_a.try_acquire() is None  # a learns it is deposed: stays down
        await asyncio.sleep(0.2)
        assert not a.writable
        assert b.stored_sequence("x") == 1
        assert b.size == 2
        assert await b.append(report("x", 2)) == 2  # x's agent resent to b
        lease_b.resign()  # b hands over; a leads again with term 3
        assert lease_a.try_acquire() == 3
        for _ in range(200):  # bounded: the recovery probe's backoff is <= 0.05 s
            if a.writable:
                break
            await asyncio.sleep(0.02)
        assert a.writable
        assert states == [False, True]
        assert a.size == 3
        assert await a.append(report("x", 3)) == 3
        with pytest.raises(LedgerUnavailableError, match="standby"):
            await b.append(report("y", 2))  # b resigned: it no longer sequences
        await a.close()
        await b.close()

    try:
        asyncio.run(scenario())
    finally:
        lease_a.close()
        lease_b.close()
