"""Enrolment: which node owns which public key.

Stored in the ``nodes`` table of the collector's database (the ledger's
SQLite file or the PostgreSQL database collectors share: any location
``collector.store.sql.open_db`` takes), written by ``computewatch nodes
enroll`` (collectors may be running: each rereads on a cache miss, and when
``key_state.version`` changes). A key belongs to exactly one node;
re-enrolling a node with a new key starts a new chain for it (chains are kept
per key) and retires the old key for good. Every enrolment is also queued as
a ``NodeEnrolment`` key event, which the collector signs and logs
(``collector.nodes.keylog``) before any report signed by the new key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from collector.nodes import keystore
from collector.store.sql import Location, open_db
from protos import keylog
from protos.computewatch.v1 import keylog_pb2
from protos.errors import ConfigError, DatabaseError
from protos.keys import PublicKey

log = logging.getLogger(__name__)

_NODE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


@dataclass(frozen=True)
class EnrolledNode:
    node_id: str
    key: PublicKey
    enrolled_unix_nanos: int


def validate_node_id(node_id: str) -> str:
    if not node_id or len(node_id) > 128 or not set(node_id) <= _NODE_ID_CHARS:
        raise ConfigError(
            f"node id {node_id!r} is not valid: expected 1-128 characters of"
            " letters, digits, '-', '_', '.', ':'"
        )
    return node_id


def enroll(
    location: Location, node_id: str, key: PublicKey, *, replace: bool = False
) -> EnrolledNode:
    """Record ``node_id`` -> ``key`` in the database at ``location`` (a ledger
    path or URL, ``collector.store.sql``). Refuses a key already held by
    another node."""
    validate_node_id(node_id)
    now = time.time_ns()
    db = open_db(location)
    try:
        with db.transaction():
            row = db.one("SELECT node_id FROM nodes WHERE keyid = ?", (key.keyid,))
            if row is not None and row[0] != node_id:
                raise ConfigError(f"key {key.keyid[:16]} is already enrolled for node {row[0]}")
            existing = db.one("SELECT keyid, public_key FROM nodes WHERE node_id = ?", (node_id,))
            if existing is not None and existing[0] != key.keyid and not replace:
                raise ConfigError(
                    f"node {node_id} is enrolled with another key; pass --replace to re-key it"
                )
            keystore.refuse_retired(db, key.keyid)
            replaced = b""
            if existing is not None and existing[0] != key.keyid:
                replaced = bytes(existing[1])
                keystore.retire(
                    db, existing[0], "node", replaced, node_id, "replaced by re-enrolment", now
                )
            if existing is None or existing[0] != key.keyid:
                event = keylog_pb2.NodeEnrolment(
                    node_id=node_id,
                    public_key=key.raw(),
                    enrolled_unix_nanos=now,
                    replaces_public_key=replaced,
                )
                keystore.add_event(db, keylog.ENROLMENT_TYPE, event.SerializeToString(), now)
            db.execute(
                "INSERT INTO nodes(node_id, keyid, public_key, enrolled_unix_nanos)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(node_id) DO UPDATE SET"
                " keyid = excluded.keyid, public_key = excluded.public_key,"
                " enrolled_unix_nanos = excluded.enrolled_unix_nanos",
                (node_id, key.keyid, key.raw(), now),
            )
    finally:
        db.close()
    return EnrolledNode(node_id, key, now)


def _read(location: Location) -> tuple[list[tuple[str, bytes, int]], set[str]]:
    """(enrolled rows, retired key ids), read in one go."""
    db = open_db(location, readonly=True)
    try:
        rows = db.execute(
            "SELECT node_id, public_key, enrolled_unix_nanos FROM nodes ORDER BY node_id"
        )
        retired = keystore.retired_keyids(db)
    except DatabaseError as exc:
        raise ConfigError(f"{db.where}: not a computewatch ledger ({exc})") from exc
    finally:
        db.close()
    return [(str(r[0]), bytes(r[1]), int(r[2])) for r in rows], retired


def list_nodes(location: Location) -> list[EnrolledNode]:
    return [EnrolledNode(n, PublicKey.from_raw(raw), t) for n, raw, t in _read(location)[0]]


class Registry:
    """keyid -> enrolled node, cached; rereads the table on a miss (rate-limited)
    and, on any lookup, once the cache is ``max_age`` seconds old: a key
    replaced with ``nodes enroll --replace`` (a lost or stolen node key) stops
    being trusted within ``max_age`` even if no unknown key ever shows up."""

    def __init__(
        self,
        location: Location,
        *,
        reload_interval: float = 1.0,
        max_age: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._location = location
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._by_keyid: dict[str, EnrolledNode] = {}
        self._by_node: dict[str, EnrolledNode] = {}
        self._reload_interval = reload_interval
        self._max_age = max(max_age, reload_interval)
        self._monotonic = monotonic
        self._last_reload = float("-inf")
        # +1 whenever the set of (node, key) changes: the key log checks it.
        self.generation = 0
        # Revoked, replaced and handed-over keys: only ever grows, so a reload
        # that read the table before a revocation cannot bring the key back.
        self._retired: set[str] = set()
        self.reload()

    def retire(self, keyid: str) -> None:
        """Never trust ``keyid`` again (the key log, when it logs the event)."""
        with self._lock:
            self._retired.add(keyid)
            if self._by_keyid.pop(keyid, None) is not None:
                self.generation += 1
            self._by_node = {n.node_id: n for n in self._by_keyid.values()}

    def reload(self) -> None:
        known = self._by_node
        nodes = []
        rows, retired = _read(self._location)
        for node_id, raw, enrolled in rows:
            prev = known.get(node_id)
            if prev is not None and prev.enrolled_unix_nanos == enrolled and prev.key.raw() == raw:
                nodes.append(prev)  # unchanged: no need to rebuild the key
            else:
                nodes.append(EnrolledNode(node_id, PublicKey.from_raw(raw), enrolled))
        with self._lock:
            self._retired |= retired
            nodes = [n for n in nodes if n.key.keyid not in self._retired]
            if {n.key.keyid: n.node_id for n in nodes} != {
                k: n.node_id for k, n in self._by_keyid.items()
            }:
                self.generation += 1
            self._by_keyid = {n.key.keyid: n for n in nodes}
            self._by_node = {n.node_id: n for n in nodes}
            self._last_reload = self._monotonic()

    def by_keyid(self, keyid: str) -> EnrolledNode | None:
        # Verify threads call this too: one of them refreshes, the others
        # go on with the cache meanwhile.
        if self._monotonic() - self._last_reload >= self._max_age and self._refreshing.acquire(
            blocking=False
        ):
            try:
                self.reload()
            finally:
                self._refreshing.release()
        node = self._by_keyid.get(keyid)
        if node is None and self._monotonic() - self._last_reload >= self._reload_interval:
            self.reload()
            node = self._by_keyid.get(keyid)
        return node

    def node_ids(self) -> list[str]:
        return sorted(self._by_node)

    def public_keys(self) -> list[PublicKey]:
        """Every trusted key now (ingest workers start with a copy)."""
        return [n.key for n in self._by_keyid.values()]

    def by_node(self, node_id: str) -> EnrolledNode | None:
        return self._by_node.get(node_id)
