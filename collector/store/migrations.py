"""Versioned schema migrations for both ledger backends, checked at start.

Each backend's schema is a list of steps; step ``n`` takes a database from
version ``n - 1`` to ``n`` and is applied in the same transaction that records
the new version in ``schema_version``. A database whose version is above
``SCHEMA_VERSION`` was written by a newer release: ``check_version`` refuses
it with SchemaVersionError instead of guessing what its rows mean.

SQLite version 1 is exactly ``collector.store.ledger_store.SCHEMA`` plus the Merkle
and checkpoint tables (all ``IF NOT EXISTS``), so ledgers written before
versions existed migrate in place without a row changing.
"""

from __future__ import annotations

import sqlite3

from collector.store.sqlite_faults import rollback_after
from protos import keylog
from protos.errors import SchemaVersionError

SCHEMA_VERSION = 2

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"

# Only these rows of the log are read back when a collector starts (key events).
KEY_EVENT_FILTER = "payload_type IN ({})".format(
    ", ".join(f"'{t}'" for t in keylog.KEY_EVENT_TYPES)
)
KEY_EVENT_INDEX = f"CREATE INDEX log_key_events ON log(idx) WHERE {KEY_EVENT_FILTER}"

# PostgreSQL: the same tables and columns as SQLite's (BIGINT for INTEGER,
# BYTEA for BLOB), plus ``leader``: the lease row with its fencing term.
PG_STEPS: tuple[str, ...] = (
    """
CREATE TABLE log (
    idx BIGINT PRIMARY KEY,
    data BYTEA NOT NULL,
    payload_type TEXT NOT NULL,
    node_id TEXT,
    keyid TEXT,
    sequence BIGINT,
    received_unix_nanos BIGINT NOT NULL
);
CREATE UNIQUE INDEX log_chain ON log(keyid, sequence) WHERE sequence IS NOT NULL;
CREATE TABLE chain (
    keyid TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    last_sequence BIGINT NOT NULL,
    last_digest BYTEA NOT NULL,
    last_index BIGINT NOT NULL
);
CREATE TABLE evidence (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    node_id TEXT,
    sequence BIGINT,
    accepted_data BYTEA,
    offending_data BYTEA NOT NULL,
    detected_unix_nanos BIGINT NOT NULL
);
CREATE TABLE evidence_counts (
    keyid TEXT NOT NULL,
    kind TEXT NOT NULL,
    count BIGINT NOT NULL,
    last_unix_nanos BIGINT NOT NULL,
    PRIMARY KEY (keyid, kind)
);
CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY,
    keyid TEXT NOT NULL UNIQUE,
    public_key BYTEA NOT NULL,
    enrolled_unix_nanos BIGINT NOT NULL
);
CREATE TABLE merkle_node (pos BIGINT PRIMARY KEY, hash BYTEA NOT NULL);
CREATE TABLE checkpoint (
    size BIGINT PRIMARY KEY,
    timestamp_unix_nanos BIGINT NOT NULL,
    note BYTEA NOT NULL
);
CREATE TABLE leader (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    term BIGINT NOT NULL,
    expires_unix_nanos BIGINT NOT NULL
);
""",
    # 2: the key tables (``collector.nodes.keystore``): pending key events, retired
    # keys, the change counter the collectors poll; and the partial index that
    # finds the key events in the log.
    f"""
CREATE TABLE key_event (
    id BIGSERIAL PRIMARY KEY,
    payload_type TEXT NOT NULL,
    payload BYTEA NOT NULL,
    envelope BYTEA,
    created_unix_nanos BIGINT NOT NULL
);
CREATE TABLE retired_key (
    keyid TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    public_key BYTEA NOT NULL,
    node_id TEXT,
    why TEXT NOT NULL,
    retired_unix_nanos BIGINT NOT NULL
);
CREATE TABLE key_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
{KEY_EVENT_INDEX};
""",
)


def sqlite_steps() -> tuple[str, ...]:
    """SQLite's steps (imported late: ``ledger_store`` calls ``migrate_sqlite``).
    Version 1's schema already had the key tables; 2 adds the key events' index."""
    from collector.store.checkpoints import SCHEMA as CHECKPOINT_SCHEMA
    from collector.store.ledger_store import SCHEMA
    from collector.store.merkle_log import SCHEMA as MERKLE_SCHEMA

    return (
        f"{SCHEMA}\n{MERKLE_SCHEMA};\n{CHECKPOINT_SCHEMA};\n",
        f"{KEY_EVENT_INDEX.replace('INDEX', 'INDEX IF NOT EXISTS', 1)};\n",
    )


def check_version(found: int, where: str) -> None:
    """SchemaVersionError unless this release knows ``found``."""
    if found > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{where} has ledger schema version {found}, but this collector knows only"
            f" versions up to {SCHEMA_VERSION}: upgrade the collector (or point it at"
            " another database); it will not write rows it does not understand"
        )
    if found < 0:
        raise SchemaVersionError(f"{where} has an invalid ledger schema version {found}")


def migrate_sqlite(conn: sqlite3.Connection, where: str) -> int:
    """Bring ``conn``'s database to SCHEMA_VERSION; SchemaVersionError if it is newer."""
    conn.execute(VERSION_TABLE)
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    found = 0 if row is None or row[0] is None else int(row[0])
    check_version(found, where)
    steps = sqlite_steps()
    for version in range(found + 1, len(steps) + 1):
        conn.executescript(steps[version - 1])  # every SQLite step is IF NOT EXISTS
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException as exc:
            rollback_after(conn, exc)
            raise
        found = version
    return found


if len(PG_STEPS) != SCHEMA_VERSION:  # pragma: no cover - a release mistake
    raise RuntimeError("PG_STEPS must have one step per schema version")
