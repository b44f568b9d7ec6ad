"""The elector on a real PostgreSQL: a standby takes over when the leader stops renewing."""

from __future__ import annotations

import asyncio

import pytest

from collector.ha.elector import Elector
from collector.ha.leader import LeaderLease
from collector.store.pg_store import PgStore
from tests.pg_support import fresh_database


@pytest.fixture
def url(pg_server: str) -> str:
    u = fresh_database(pg_server)
    PgStore(u).close()  # migrate
    return u


def test_a_standby_takes_over_when_the_leader_dies_and_resign_is_immediate(url: str) -> None:
    lease_a = LeaderLease(url, "a", lease_seconds=2.0)
    lease_b = LeaderLease(url, "b", lease_seconds=2.0)
    a, b = Elector(lease_a, renew_seconds=0.1), Elector(lease_b, renew_seconds=0.1)
    seen_b: list[int | None] = []
    b.add_listener(seen_b.append)

    async def scenario() -> None:
        assert await a.step() == 1
        assert await b.step() is None
        assert (a.role, b.role) == ("leader", "standby")
        a.start()
        b.start()
        for _ in range(5):  # the leader keeps renewing: no takeover
            await asyncio.sleep(0.15)
            assert (a.role, b.role) == ("leader", "standby")
        await a.stop(resign=False)  # dies without resigning (kill -9)
        for _ in range(300):  # bounded: 15 s
            if b.role == "leader":
                break
            await asyncio.sleep(0.05)
        assert b.term == 2
        assert seen_b == [2]
        assert await a.step() is None  # the old leader learns it was deposed
        await b.stop()  # resigns: a takes over on its next step, no wait
        assert await a.step() == 3

    try:
        asyncio.run(scenario())
    finally:
        lease_a.close()
        lease_b.close()


def test_an_unreachable_database_means_standby(url: str) -> None:
    lease = LeaderLease(url, "a", lease_seconds=5)
    elector = Elector(lease, renew_seconds=1)
    dropped: list[int | None] = []
    elector.add_listener(dropped.append)

    async def scenario() -> None:
        assert await elector.step() == 1
        lease.close()  # the connection is gone
        assert await elector.step() is None
        assert elector.role == "standby"
        assert elector.errors == 1
        assert dropped == [1, None]

    asyncio.run(scenario())


def test_renew_must_be_shorter_than_the_lease(url: str) -> None:
    lease = LeaderLease(url, "a", lease_seconds=1)
    try:
        with pytest.raises(ValueError, match="shorter than the lease"):
            Elector(lease, renew_seconds=1)
    finally:
        lease.close()


def test_a_leader_whose_renewals_stall_stops_leading_on_its_own_clock(url: str) -> None:
    lease = LeaderLease(url, "a", lease_seconds=5)
    now = [100.0]
    elector = Elector(lease, renew_seconds=1, monotonic=lambda: now[0])

    async def scenario() -> None:
        assert await elector.step() == 1
        now[0] += 4.9
        assert elector.current_term() == 1
        assert elector.role == "leader"
        now[0] += 0.1  # 5 s since the renewal was sent: the lease may have lapsed
        assert elector.current_term() is None
        assert elector.role == "standby"
        assert elector.term == 1  # it has not heard otherwise; it just cannot prove it
        assert await elector.step() == 1  # a renewal proves it again
        assert elector.current_term() == 1

    try:
        asyncio.run(scenario())
    finally:
        lease.close()
