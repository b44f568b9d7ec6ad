"""Operator actions on keys: revoke a node or authority key, hand a node over
to a new key. Each writes the collector's database (the ledger's SQLite
file or the shared PostgreSQL: ``collector.store.sql``) in one transaction and queues a key
event that the running collector logs and honours within a poll interval
(``collector.nodes.keylog``); a stopped collector logs it before it serves.
"""

from __future__ import annotations

import time

from collector.nodes import keystore
from collector.nodes.registry import validate_node_id
from collector.store.sql import Location, open_db
from protos import dsse, keylog
from protos.computewatch.v1 import keylog_pb2
from protos.errors import ConfigError, KeyEventError
from protos.keys import PublicKey


def revoke_node(location: Location, node_id: str, reason: str) -> PublicKey:
    """Revoke ``node_id``'s current key; the node is unenrolled until re-enrolled."""
    validate_node_id(node_id)
    if len(reason) > keylog.MAX_REASON:
        raise ConfigError(f"reason: at most {keylog.MAX_REASON} characters")
    now = time.time_ns()
    db = open_db(location)
    try:
        with db.transaction():
            row = db.one("SELECT keyid, public_key FROM nodes WHERE node_id = ?", (node_id,))
            if row is None:
                raise ConfigError(f"node {node_id} is not enrolled")
            raw = bytes(row[1])
            db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
            keystore.retire(db, row[0], "node", raw, node_id, "revoked", now)
            event = keylog_pb2.KeyRevocation(
                role=keylog_pb2.KEY_ROLE_NODE,
                public_key=raw,
                node_id=node_id,
                revoked_unix_nanos=now,
                reason=reason,
            )
            keystore.add_event(db, keylog.REVOCATION_TYPE, event.SerializeToString(), now)
    finally:
        db.close()
    return PublicKey.from_raw(raw)


def revoke_authority(location: Location, key: PublicKey, reason: str) -> None:
    """Revoke an authority key: its approvals, halts and evaluations stop counting."""
    if len(reason) > keylog.MAX_REASON:
        raise ConfigError(f"reason: at most {keylog.MAX_REASON} characters")
    now = time.time_ns()
    db = open_db(location)
    try:
        with db.transaction():
            if db.execute("SELECT 1 FROM nodes WHERE keyid = ?", (key.keyid,)):
                raise ConfigError(f"key {key.keyid[:16]} is a node key; use nodes revoke")
            keystore.refuse_retired(db, key.keyid)
            keystore.retire(db, key.keyid, "authority", key.raw(), None, "revoked", now)
            event = keylog_pb2.KeyRevocation(
                role=keylog_pb2.KEY_ROLE_AUTHORITY,
                public_key=key.raw(),
                revoked_unix_nanos=now,
                reason=reason,
            )
            keystore.add_event(db, keylog.REVOCATION_TYPE, event.SerializeToString(), now)
    finally:
        db.close()


def handover(location: Location, envelope: bytes) -> tuple[str, PublicKey]:
    """Apply a ``KeyHandover`` envelope signed by the node's current key and the
    new key (``protos.keylog.handover``): the node is re-keyed, the old key
    retired, and the envelope itself is logged. Returns (node id, new key)."""
    msg, old, new = keylog.parse_handover(envelope)
    payload = dsse.open_envelope(envelope).payload
    validate_node_id(msg.node_id)
    now = time.time_ns()
    db = open_db(location)
    try:
        with db.transaction():
            row = db.one("SELECT keyid FROM nodes WHERE node_id = ?", (msg.node_id,))
            if row is None or row[0] != old.keyid:
                raise KeyEventError(
                    f"handover for node {msg.node_id} is signed by key {old.keyid[:16]},"
                    " which is not the node's current key"
                )
            keystore.refuse_retired(db, new.keyid)
            if db.execute("SELECT 1 FROM nodes WHERE keyid = ?", (new.keyid,)):
                raise ConfigError(f"key {new.keyid[:16]} is already enrolled")
            db.execute(
                "UPDATE nodes SET keyid = ?, public_key = ?, enrolled_unix_nanos = ?"
                " WHERE node_id = ?",
                (new.keyid, new.raw(), now, msg.node_id),
            )
            keystore.retire(db, old.keyid, "node", old.raw(), msg.node_id, "handed over", now)
            keystore.add_event(db, keylog.HANDOVER_TYPE, payload, now, envelope=envelope)
    finally:
        db.close()
    return msg.node_id, new
