"""Leader lease and fencing on a real PostgreSQL: one writer, a deposed one refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from collector.store.ledger_store import Entry
from collector.store.merkle_log import node_pos
from protos import merkle
from protos.errors import FencedError, LedgerUnavailableError
from tests.pg_support import fresh_database

SECOND = 1_000_000_000


class Clock:
    """The candidates' shared clock, driven by the test."""

    def __init__(self) -> None:
        self.now = 1_000 * SECOND

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def url(pg_server: str) -> str:
    return fresh_database(pg_server)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pair(url: str, clock: Clock) -> Iterator[tuple[object, object]]:
    from collector.ha.leader import LeaderLease
    from collector.store.pg_store import PgStore

    PgStore(url).close()  # migrate first
    a = LeaderLease(url, "collector-a", lease_seconds=10, clock_ns=clock)
    b = LeaderLease(url, "collector-b", lease_seconds=10, clock_ns=clock)
    yield a, b
    a.close()
    b.close()


def entries(key: str, first: int, n: int) -> list[Entry]:
    return [
        Entry(f"{key}{i}".encode(), "t", "n", key, i, b"d" * 32) for i in range(first, first + n)
    ]


def test_one_leader_at_a_time_and_a_takeover_raises_the_term(pair: tuple, clock: Clock) -> None:
    a, b = pair
    assert a.try_acquire() == 1
    assert b.try_acquire() is None
    clock.now += 9 * SECOND
    assert a.try_acquire() == 1  # renewed in time: same term
    clock.now += 9 * SECOND
    assert b.try_acquire() is None  # the renewal moved the expiry
    clock.now += 2 * SECOND  # a stopped renewing: its lease lapses
    assert b.try_acquire() == 2
    assert b.is_leader
    state = b.current()
    assert state is not None
    assert (state.holder, state.term) == ("collector-b", 2)
    assert a.try_acquire() is None
    assert not a.is_leader


def test_resign_lets_a_standby_take_over_without_waiting(pair: tuple) -> None:
    a, b = pair
    assert a.try_acquire() == 1
    a.resign()
    assert b.try_acquire() == 2


def test_a_deposed_leader_cannot_write_and_the_tree_continues(
    url: str, pair: tuple, clock: Clock
) -> None:
    from collector.store.pg_store import PgStore

    a, b = pair
    store_a, store_b = PgStore(url), PgStore(url)
    try:
        term_a = a.try_acquire()
        store_a.append_batch(0, entries("a", 1, 5), 1, term=term_a)
        checkpoint = (store_a.size, store_a.root())
        clock.now += 11 * SECOND  # a pauses past its lease
        term_b = b.try_acquire()
        assert term_b == 2
        assert store_b.reload() == 5  # the new leader reads what the old one committed
        store_b.append_batch(5, entries("b", 1, 3), 2, term=term_b)
        # a wakes up and writes with its old token: refused, nothing written
        with pytest.raises(FencedError, match="term 1 refused") as info:
            store_a.append_batch(5, entries("a", 6, 1), 3, term=term_a)
        assert isinstance(info.value, LedgerUnavailableError)
        assert info.value.reason == "fenced"
        assert store_b.reload() == 8
        assert store_b.stored_sequence("a") == 5
        store_b.append_batch(8, entries("b", 4, 1), 4, term=term_b)

        def subtree(level: int, index: int) -> bytes:
            h = store_b.merkle_node(node_pos(level, index))
            assert h is not None
            return h

        size, root = checkpoint
        proof = merkle.consistency_proof(size, store_b.size, subtree)
        merkle.verify_consistency(size, store_b.size, proof, root, store_b.root())
    finally:
        store_a.close()
        store_b.close()


def test_a_write_with_no_leader_row_is_fenced(url: str) -> None:
    from collector.store.pg_store import PgStore

    store = PgStore(url)
    try:
        with pytest.raises(FencedError, match="term None"):
            store.append_batch(0, entries("a", 1, 1), 1, term=1)
        assert store.reload() == 0
    finally:
        store.close()


def _drop_connections(url: str) -> int:
    """Terminate every other session on ``url``'s database (a server restart, as
    the clients see it); the number terminated."""
    import psycopg

    server, _, name = url.rpartition("/")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


def test_dropped_connections_fail_one_call_then_reconnect(url: str, clock: Clock) -> None:
    import psycopg

    from collector.ha.leader import LeaderLease
    from collector.store.pg_store import PgStore

    store = PgStore(url)
    lease = LeaderLease(url, "a", lease_seconds=10, clock_ns=clock)
    try:
        term = lease.try_acquire()
        store.append_batch(0, entries("a", 1, 2), 1, term=term)
        assert _drop_connections(url) >= 3
        assert store.stored_sequence("a") == 2  # a read reconnects and retries
        with pytest.raises(psycopg.OperationalError):
            store.append_batch(2, entries("a", 3, 1), 2, term=term)  # outcome unknown: fail
        assert store.reload() == 2  # the recovery re-read reconnects
        with pytest.raises(psycopg.OperationalError):
            lease.try_acquire()
        assert lease.try_acquire() == term  # reconnected: a renewal, same term
        store.append_batch(2, entries("a", 3, 1), 3, term=term)
        assert store.stored_sequence("a") == 3
    finally:
        store.close()
        lease.close()
    with pytest.raises(LedgerUnavailableError, match="closed"):
        store.stored_sequence("a")
