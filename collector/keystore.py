"""Rows behind the key events: pending events, retired keys, a change counter.

Written by ``computewatch nodes ...`` (``collector.registry`` and
``collector.keyadmin``) inside their own transactions; the running collector
polls ``key_state.version`` and logs pending events (``collector.keylog``).
"""

from __future__ import annotations

import sqlite3

from protos import keylog
from protos.errors import ConfigError

# Only these rows of the log are read back when the collector starts.
KEY_EVENT_FILTER = "payload_type IN ({})".format(
    ", ".join(f"'{t}'" for t in keylog.KEY_EVENT_TYPES)
)
INDEX = f"CREATE INDEX IF NOT EXISTS log_key_events ON log(idx) WHERE {KEY_EVENT_FILTER}"


def add_event(
    conn: sqlite3.Connection,
    payload_type: str,
    payload: bytes,
    now_ns: int,
    envelope: bytes | None = None,
) -> None:
    conn.execute(
        "INSERT INTO key_event(payload_type, payload, envelope, created_unix_nanos)"
        " VALUES (?, ?, ?, ?)",
        (payload_type, payload, envelope, now_ns),
    )
    bump(conn)


def bump(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO key_state(id, version) VALUES (1, 1)"
        " ON CONFLICT(id) DO UPDATE SET version = version + 1"
    )


def version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT version FROM key_state WHERE id = 1").fetchone()
    return 0 if row is None else int(row[0])


def retire(  # noqa: PLR0917 - one column each
    conn: sqlite3.Connection,
    keyid: str,
    role: str,
    raw: bytes,
    node_id: str | None,
    why: str,
    now_ns: int,
) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO retired_key(keyid, role, public_key, node_id, why,"
        " retired_unix_nanos) VALUES (?, ?, ?, ?, ?, ?)",
        (keyid, role, raw, node_id, why, now_ns),
    )


def refuse_retired(conn: sqlite3.Connection, keyid: str) -> None:
    row = conn.execute("SELECT why FROM retired_key WHERE keyid = ?", (keyid,)).fetchone()
    if row is not None:
        raise ConfigError(f"key {keyid[:16]} was {row[0]}; it can never be enrolled again")


def retired_authorities(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT keyid FROM retired_key WHERE role = 'authority'").fetchall()
    return {r[0] for r in rows}
