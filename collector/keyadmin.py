"""Operator actions on keys: revoke a node or authority key, hand a node over
to a new key. Each writes the ledger file in one transaction and queues a key
event that the running collector logs and honours within a poll interval
(``collector.keylog``); a stopped collector logs it before it serves.
"""

from __future__ import annotations

import time
from pathlib import Path

from collector import keystore
from collector.ledger import connect, init_db
from collector.registry import validate_node_id
from protos import dsse, keylog
from protos.computewatch.v1 import keylog_pb2
from protos.errors import ConfigError, KeyEventError
from protos.keys import PublicKey


def revoke_node(path: Path, node_id: str, reason: str) -> PublicKey:
    """Revoke ``node_id``'s current key; the node is unenrolled until re-enrolled."""
    validate_node_id(node_id)
    if len(reason) > keylog.MAX_REASON:
        raise ConfigError(f"reason: at most {keylog.MAX_REASON} characters")
    init_db(path)
    now = time.time_ns()
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT keyid, public_key FROM nodes WHERE node_id = ?", (node_id,)
            ).fetchone()
            if row is None:
                raise ConfigError(f"node {node_id} is not enrolled")
            raw = bytes(row[1])
            conn.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
            keystore.retire(conn, row[0], "node", raw, node_id, "revoked", now)
            event = keylog_pb2.KeyRevocation(
                role=keylog_pb2.KEY_ROLE_NODE,
                public_key=raw,
                node_id=node_id,
                revoked_unix_nanos=now,
                reason=reason,
            )
            keystore.add_event(conn, keylog.REVOCATION_TYPE, event.SerializeToString(), now)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return PublicKey.from_raw(raw)


def revoke_authority(path: Path, key: PublicKey, reason: str) -> None:
    """Revoke an authority key: its approvals, halts and evaluations stop counting."""
    if len(reason) > keylog.MAX_REASON:
        raise ConfigError(f"reason: at most {keylog.MAX_REASON} characters")
    init_db(path)
    now = time.time_ns()
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM nodes WHERE keyid = ?", (key.keyid,)).fetchone():
                raise ConfigError(f"key {key.keyid[:16]} is a node key; use nodes revoke")
            keystore.refuse_retired(conn, key.keyid)
            keystore.retire(conn, key.keyid, "authority", key.raw(), None, "revoked", now)
            event = keylog_pb2.KeyRevocation(
                role=keylog_pb2.KEY_ROLE_AUTHORITY,
                public_key=key.raw(),
                revoked_unix_nanos=now,
                reason=reason,
            )
            keystore.add_event(conn, keylog.REVOCATION_TYPE, event.SerializeToString(), now)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()


def handover(path: Path, envelope: bytes) -> tuple[str, PublicKey]:
    """Apply a ``KeyHandover`` envelope signed by the node's current key and the
    new key (``protos.keylog.handover``): the node is re-keyed, the old key
    retired, and the envelope itself is logged. Returns (node id, new key)."""
    msg, old, new = keylog.parse_handover(envelope)
    payload = dsse.open_envelope(envelope).payload
    validate_node_id(msg.node_id)
    init_db(path)
    now = time.time_ns()
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT keyid FROM nodes WHERE node_id = ?", (msg.node_id,)
            ).fetchone()
            if row is None or row[0] != old.keyid:
                raise KeyEventError(
                    f"handover for node {msg.node_id} is signed by key {old.keyid[:16]},"
                    " which is not the node's current key"
                )
            keystore.refuse_retired(conn, new.keyid)
            if conn.execute("SELECT 1 FROM nodes WHERE keyid = ?", (new.keyid,)).fetchone():
                raise ConfigError(f"key {new.keyid[:16]} is already enrolled")
            conn.execute(
                "UPDATE nodes SET keyid = ?, public_key = ?, enrolled_unix_nanos = ?"
                " WHERE node_id = ?",
                (new.keyid, new.raw(), now, msg.node_id),
            )
            keystore.retire(conn, old.keyid, "node", old.raw(), msg.node_id, "handed over", now)
            keystore.add_event(conn, keylog.HANDOVER_TYPE, payload, now, envelope=envelope)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return msg.node_id, new
