"""Rows behind the key events: pending events, retired keys, a change counter.

Written by ``computewatch nodes ...`` (``collector.nodes.registry`` and
``collector.nodes.keyadmin``) inside their own transactions, on either backend
(``collector.store.sql``); every running collector polls
``key_state.version`` and the leader logs pending events (``collector.nodes.keylog``).
"""

from __future__ import annotations

from collector.store.migrations import KEY_EVENT_FILTER
from collector.store.sql import Db
from protos.errors import ConfigError

__all__ = [
    "KEY_EVENT_FILTER",
    "add_event",
    "bump",
    "refuse_retired",
    "retire",
    "retired_authorities",
    "retired_keyids",
    "version",
]


def add_event(
    db: Db,
    payload_type: str,
    payload: bytes,
    now_ns: int,
    envelope: bytes | None = None,
) -> None:
    # The counter's row first: on PostgreSQL it is the lock that makes queued
    # events commit in id order, so a collector reading ``id > cursor`` never
    # passes an event that commits later with a smaller id.
    bump(db)
    db.execute(
        "INSERT INTO key_event(payload_type, payload, envelope, created_unix_nanos)"
        " VALUES (?, ?, ?, ?)",
        (payload_type, payload, envelope, now_ns),
    )


def bump(db: Db) -> None:
    db.execute(
        "INSERT INTO key_state(id, version) VALUES (1, 1)"
        " ON CONFLICT(id) DO UPDATE SET version = key_state.version + 1"
    )


def version(db: Db) -> int:
    row = db.one("SELECT version FROM key_state WHERE id = 1")
    return 0 if row is None else int(row[0])


def retire(  # noqa: PLR0917 - one column each
    db: Db,
    keyid: str,
    role: str,
    raw: bytes,
    node_id: str | None,
    why: str,
    now_ns: int,
) -> None:
    db.execute(
        "INSERT INTO retired_key(keyid, role, public_key, node_id, why,"
        " retired_unix_nanos) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(keyid) DO NOTHING",
        (keyid, role, raw, node_id, why, now_ns),
    )


def refuse_retired(db: Db, keyid: str) -> None:
    row = db.one("SELECT why FROM retired_key WHERE keyid = ?", (keyid,))
    if row is not None:
        raise ConfigError(f"key {keyid[:16]} was {row[0]}; it can never be enrolled again")


def retired_keyids(db: Db) -> set[str]:
    return {str(r[0]) for r in db.execute("SELECT keyid FROM retired_key")}


def retired_authorities(db: Db) -> set[str]:
    rows = db.execute("SELECT keyid FROM retired_key WHERE role = 'authority'")
    return {str(r[0]) for r in rows}
