"""The portable SQL layer (``collector.store.sql``), the same on SQLite and a real
PostgreSQL: bytes, transactions, typed driver errors, the schema version, and
an enrolment written by one collector's CLI read by another collector."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.nodes import keystore
from collector.nodes.registry import Registry, enroll, list_nodes
from collector.store.migrations import PG_STEPS, SCHEMA_VERSION, VERSION_TABLE
from collector.store.sql import DB_ERRORS, Db, Location, describe, open_db, redact
from protos.errors import (
    ConfigError,
    DatabaseError,
    LedgerUnavailableError,
    SchemaVersionError,
    StoreConfigError,
)
from protos.keys import PrivateKey
from tests.pg_support import BACKENDS, backend_location, need_psycopg


@pytest.fixture(params=BACKENDS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    return backend_location(request, tmp_path)


@pytest.fixture
def db(location: Location) -> Iterator[Db]:
    handle = open_db(location)
    yield handle
    handle.close()


def test_bytes_round_trip_as_bytes_including_nul_and_empty(db: Db) -> None:
    raw = bytes(range(256)) * 3
    keystore.add_event(db, "t", raw, 1, envelope=b"")
    keystore.add_event(db, "t", b"\x00", 2)
    rows = db.execute("SELECT payload, envelope FROM key_event ORDER BY id")
    assert rows == [(raw, b""), (b"\x00", None)]
    assert all(type(r[0]) is bytes for r in rows)


def test_a_failed_transaction_writes_nothing_and_the_handle_goes_on(db: Db) -> None:
    def refused_midway() -> None:
        with db.transaction():
            keystore.add_event(db, "t", b"x", 1)
            raise ConfigError("refused midway")

    with pytest.raises(ConfigError, match="refused"):
        refused_midway()
    assert not db.in_transaction
    assert db.execute("SELECT COUNT(*) FROM key_event") == [(0,)]
    assert keystore.version(db) == 0
    with db.transaction():
        keystore.add_event(db, "t", b"x", 1)
        keystore.add_event(db, "t", b"y", 2)
    assert keystore.version(db) == 2


def test_a_driver_error_is_our_typed_error_with_the_driver_error_chained(db: Db) -> None:
    keystore.retire(db, "k", "node", b"raw", "n", "revoked", 1)
    keystore.retire(db, "k", "node", b"raw", "n", "revoked", 2)  # ON CONFLICT DO NOTHING
    with pytest.raises(DatabaseError) as info:
        db.execute(
            "INSERT INTO nodes(node_id, keyid, public_key) VALUES (?, ?, ?)", ("n", "k", b"")
        )
    assert isinstance(info.value.__cause__, DB_ERRORS)
    assert info.value.reason == "database"
    with pytest.raises(DatabaseError), db.transaction():
        db.execute("SELECT no_such_column FROM nodes")
    assert not db.in_transaction  # rolled back: the next transaction starts cleanly
    with db.transaction():
        keystore.bump(db)
    assert keystore.version(db) == 1


def test_enrolled_by_the_cli_seen_by_another_collector_on_its_own_connection(
    location: Location,
) -> None:
    """Two collectors sharing the database: each has its own Registry (its own
    connections); an enrolment made by ``nodes enroll`` reaches both."""
    first, second = PrivateKey.generate(), PrivateKey.generate()
    enroll(location, "node-a", first.public)
    clock = [0.0]
    a = Registry(location, reload_interval=1.0, monotonic=lambda: clock[0])
    b = Registry(location, reload_interval=1.0, monotonic=lambda: clock[0])
    enroll(location, "node-b", second.public)
    clock[0] = 2.0
    for reg in (a, b):
        node = reg.by_keyid(second.keyid)
        assert node is not None
        assert node.node_id == "node-b"
        assert node.key.raw() == second.public.raw()
    reader = open_db(location, readonly=True)
    try:
        assert keystore.version(reader) == 2
        assert [r[0] for r in reader.execute("SELECT node_id FROM nodes ORDER BY node_id")] == [
            "node-a",
            "node-b",
        ]
    finally:
        reader.close()


def _set_version(location: Location, version: int) -> None:
    db = open_db(location)
    try:
        db.execute("UPDATE schema_version SET version = ?", (version,))
    finally:
        db.close()


def test_a_newer_schema_is_refused_by_writers_and_readers_of_these_tables(
    location: Location,
) -> None:
    enroll(location, "node-a", PrivateKey.generate().public)
    _set_version(location, SCHEMA_VERSION + 1)
    key = PrivateKey.generate().public
    with pytest.raises(SchemaVersionError, match=f"version {SCHEMA_VERSION + 1}"):
        enroll(location, "node-b", key)
    with pytest.raises(SchemaVersionError, match="upgrade the collector"):
        list_nodes(location)
    with pytest.raises(SchemaVersionError):
        Registry(location)


def test_an_older_database_is_migrated_to_this_release(location: Location) -> None:
    """A version-1 database (before the key tables joined PostgreSQL's schema)
    is brought to SCHEMA_VERSION by the first writer."""
    if isinstance(location, Path):
        conn = sqlite3.connect(location)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (0)")
        conn.commit()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(location, autocommit=True) as pg:
            pg.execute(VERSION_TABLE)
            pg.execute(PG_STEPS[0].encode())
            pg.execute("INSERT INTO schema_version VALUES (1)")
    enroll(location, "node-a", PrivateKey.generate().public)
    db = open_db(location, readonly=True)
    try:
        assert db.one("SELECT MAX(version) FROM schema_version") == (SCHEMA_VERSION,)
    finally:
        db.close()


def test_locations_and_their_messages(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such ledger"):
        open_db(tmp_path / "missing.db", readonly=True)
    with pytest.raises(StoreConfigError, match="names no backend"):
        open_db("mysql://u:secret@h/db")
    with pytest.raises(StoreConfigError, match="absolute"):
        open_db("sqlite://relative.db")
    with pytest.raises(StoreConfigError, match="empty"):
        open_db("")
    assert redact("postgresql://cw:secret@db:5432/x") == "postgresql://cw@db:5432/x"
    assert describe(f"sqlite://{tmp_path}/l.db") == f"{tmp_path}/l.db"
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    with pytest.raises(ConfigError, match="not a computewatch ledger"):
        list_nodes(other)


def test_an_unreachable_postgresql_is_ledger_unavailable_without_the_password() -> None:
    need_psycopg()
    with pytest.raises(LedgerUnavailableError, match="cannot connect") as info:
        open_db("postgresql://cw:hunter2@127.0.0.1:1/none?connect_timeout=2")
    assert "hunter2" not in str(info.value)


def test_a_ledger_from_before_versions_is_read_as_it_is(tmp_path: Path) -> None:
    """``nodes list`` on a ledger no collector of this release has opened yet:
    read only, nothing to refuse, nothing written."""
    path = tmp_path / "old.db"
    enroll(path, "node-a", PrivateKey.generate().public)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE schema_version")
    conn.commit()
    conn.close()
    assert [n.node_id for n in list_nodes(path)] == ["node-a"]
    conn = sqlite3.connect(path)
    try:
        assert (
            conn.execute("SELECT name FROM sqlite_master WHERE name = 'schema_version'").fetchall()
            == []
        )
    finally:
        conn.close()


def test_a_dropped_postgresql_connection_is_opened_again(pg_server: str) -> None:
    """The server ends the connection (a restart, a failover): a read is run
    again at once on a new one; a write in flight fails as unavailable (its
    outcome is unknown) and the next statement reconnects."""
    import psycopg

    from tests.pg_support import fresh_database

    url = fresh_database(pg_server)
    db = open_db(url)

    def drop() -> None:
        pid = db.one("SELECT pg_backend_pid()")
        assert pid is not None
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid[0],))

    try:
        drop()
        assert keystore.version(db) == 0  # a read: retried on a new connection
        drop()
        with pytest.raises(LedgerUnavailableError, match="is gone"):
            keystore.bump(db)  # a write: its error stands
        with db.transaction():  # the next one reconnects before it begins
            keystore.bump(db)
        assert keystore.version(db) == 1
    finally:
        db.close()
