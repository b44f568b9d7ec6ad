"""Move a single-node SQLite ledger into PostgreSQL, row for row, and prove it.

For operators going from the embedded default to collectors in high
availability. Every table is copied verbatim (log rows keep their receipt
times, the Merkle tree its node rows), in one PostgreSQL transaction, into a
database that must be empty. Before committing, the tree is re-hashed from the
log's bytes (RFC 9162 leaves) and its root compared with the copied rows';
after, the store reopened on PostgreSQL must give the same size and root as
the SQLite file. Run it with the collector stopped.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import psycopg

from collector.store.ledger_store import connect
from collector.store.merkle_log import node_count
from collector.store.pg_store import PgStore, migrate_pg
from collector.store.sqlite_store import SqliteStore
from collector.store.tree import load_frontier
from protos import merkle
from protos.errors import LogError

_BATCH = 2048
# (table, columns) in an order that satisfies nothing but readability: no foreign keys.
_TABLES = (
    ("log", "idx, data, payload_type, node_id, keyid, sequence, received_unix_nanos"),
    ("chain", "keyid, node_id, last_sequence, last_digest, last_index"),
    ("evidence", "id, kind, node_id, sequence, accepted_data, offending_data, detected_unix_nanos"),
    ("evidence_counts", "keyid, kind, count, last_unix_nanos"),
    ("nodes", "node_id, keyid, public_key, enrolled_unix_nanos"),
    ("merkle_node", "pos, hash"),
    ("checkpoint", "size, timestamp_unix_nanos, note"),
    ("key_event", "id, payload_type, payload, envelope, created_unix_nanos"),
    ("retired_key", "keyid, role, public_key, node_id, why, retired_unix_nanos"),
    ("key_state", "id, version"),
)
# Tables whose BIGSERIAL id must go on after the copied ids.
_SERIAL = ("evidence", "key_event")


@dataclass(frozen=True)
class CopyResult:
    entries: int
    root: bytes
    rows: dict[str, int]


def _rehash(src: sqlite3.Connection, size: int) -> bytes:
    """Root of the log's entries, hashed from their bytes (not from stored nodes)."""
    frontier = merkle.Frontier()
    sha = hashlib.sha256
    expected = 0
    for idx, data in src.execute("SELECT idx, data FROM log ORDER BY idx"):
        if idx != expected:
            raise LogError(f"the SQLite log skips from index {expected} to {idx}")
        frontier.append(sha(b"\x00" + bytes(data)).digest())
        expected += 1
    if expected != size:
        raise LogError(f"the SQLite log has {expected} entries but its tree {size}")
    return frontier.root()


def copy_ledger(source: Path, url: str) -> CopyResult:
    """Copy the SQLite ledger at ``source`` into the empty PostgreSQL database at ``url``."""
    if not source.exists():
        raise LogError(f"no ledger at {source}")
    SqliteStore(source).close()  # migrates it and builds nothing new
    src = connect(source, readonly=True)
    try:
        count = int(src.execute("SELECT COALESCE(MAX(pos) + 1, 0) FROM merkle_node").fetchone()[0])

        def node(pos: int) -> bytes | None:
            row = src.execute("SELECT hash FROM merkle_node WHERE pos = ?", (pos,)).fetchone()
            return None if row is None else bytes(row[0])

        frontier = load_frontier(count, node)
        if node_count(frontier.size) != count:
            raise LogError("the SQLite Merkle tree is incomplete")
        root = _rehash(src, frontier.size)
        if root != frontier.root():
            raise LogError("the SQLite Merkle tree does not match its log's bytes: not copied")
        rows: dict[str, int] = {}
        with psycopg.connect(url, autocommit=True) as dst:
            migrate_pg(dst, "the destination")
            with dst.transaction():
                for table, _ in _TABLES:
                    probe = f"SELECT 1 FROM {table} LIMIT 1"  # noqa: S608 - constant names
                    got = dst.execute(probe.encode()).fetchone()
                    if got is not None:
                        raise LogError(f"the destination's {table} table is not empty: not copied")
                for table, columns in _TABLES:
                    marks = ", ".join(["%s"] * len(columns.split(",")))
                    # Table and column names are the constants above, never input.
                    insert = f"INSERT INTO {table} ({columns}) VALUES ({marks})"  # noqa: S608
                    cur = src.execute(f"SELECT {columns} FROM {table}")  # noqa: S608
                    n = 0
                    while batch := cur.fetchmany(_BATCH):
                        with dst.cursor() as out:
                            out.executemany(insert.encode(), batch)
                        n += len(batch)
                    rows[table] = n
                for table in _SERIAL:
                    if rows[table]:
                        # The table name is one of the constants above.
                        top = f"(SELECT MAX(id) FROM {table})"  # noqa: S608
                        reset = f"SELECT setval(pg_get_serial_sequence(%s, 'id'), {top})"
                        dst.execute(reset.encode(), (table,))
    finally:
        src.close()
    check = PgStore(url)
    try:
        if (check.size, check.root()) != (frontier.size, root):
            raise LogError("the copy's Merkle tree differs from the source's")
    finally:
        check.close()
    return CopyResult(frontier.size, root, rows)
