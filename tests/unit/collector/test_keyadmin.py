"""Operator key actions on a real ledger (SQLite file and PostgreSQL): what
each refuses, and the key event each queues for the collector to log."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.nodes.keyadmin import handover, revoke_authority, revoke_node
from collector.nodes.registry import Registry, enroll, list_nodes
from collector.store.sql import Location, open_db
from protos import keylog
from protos.computewatch.v1 import keylog_pb2
from protos.errors import ConfigError, KeyEventError, SignatureError
from protos.keys import PrivateKey
from tests.pg_support import BACKENDS, backend_location


@pytest.fixture(params=BACKENDS)
def path(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    return backend_location(request, tmp_path)


def _events(path: Location) -> list[str]:
    db = open_db(path, readonly=True)
    try:
        rows = db.execute("SELECT payload_type FROM key_event ORDER BY id")
    finally:
        db.close()
    return [r[0] for r in rows]


def test_each_action_queues_one_event(path: Location) -> None:
    a, b, new = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    enroll(path, "node-a", a.public)
    enroll(path, "node-a", a.public)  # unchanged: nothing new to log
    enroll(path, "node-b", b.public)
    handover(path, keylog.handover("node-a", a, new, 1))
    revoke_node(path, "node-b", "stolen")
    revoke_authority(path, PrivateKey.generate().public, "compromised")
    assert _events(path) == [
        keylog.ENROLMENT_TYPE,
        keylog.ENROLMENT_TYPE,
        keylog.HANDOVER_TYPE,
        keylog.REVOCATION_TYPE,
        keylog.REVOCATION_TYPE,
    ]
    assert [(n.node_id, n.key.keyid) for n in list_nodes(path)] == [("node-a", new.keyid)]
    registry = Registry(path)
    assert registry.by_keyid(a.keyid) is None  # handed over
    assert registry.by_keyid(b.keyid) is None  # revoked


def test_refusals(path: Location) -> None:
    a, b, other = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    enroll(path, "node-a", a.public)
    enroll(path, "node-b", b.public)
    # Signed by a key that is not node-a's current key.
    with pytest.raises(KeyEventError, match="not the node's current key"):
        handover(path, keylog.handover("node-a", other, PrivateKey.generate(), 1))
    # Only the new key signed: the old key's signature is missing.
    forged = keylog.seal_all(
        keylog.HANDOVER_TYPE,
        keylog_pb2.KeyHandover(
            node_id="node-a", old_public_key=a.public.raw(), new_public_key=other.public.raw()
        ).SerializeToString(),
        [other],
    )
    with pytest.raises(SignatureError, match="old and the new key"):
        handover(path, forged)
    # The new key already belongs to node-b.
    with pytest.raises(ConfigError, match="already enrolled"):
        handover(path, keylog.handover("node-a", a, b, 1))
    with pytest.raises(ConfigError, match="not enrolled"):
        revoke_node(path, "node-z", "")
    revoke_node(path, "node-b", "stolen")
    # A revoked key can never come back, for any node.
    with pytest.raises(ConfigError, match="revoked"):
        enroll(path, "node-c", b.public)
    with pytest.raises(ConfigError, match="node key"):
        revoke_authority(path, a.public, "")
    assert _events(path) == [keylog.ENROLMENT_TYPE] * 2 + [keylog.REVOCATION_TYPE]


def test_a_retired_key_never_comes_back_on_reload(path: Location) -> None:
    """The key log retires a key when it logs the event; a reload that reads
    the enrolment table as it was before (a verify thread's) cannot undo it."""
    a = PrivateKey.generate()
    enroll(path, "node-a", a.public)
    registry = Registry(path)
    generation = registry.generation
    registry.retire(a.keyid)
    assert registry.by_keyid(a.keyid) is None
    assert registry.generation == generation + 1
    registry.reload()  # the table still lists node-a with key a
    assert registry.by_keyid(a.keyid) is None
    assert registry.node_ids() == []


def test_metric_label_values_name_every_key_event_type() -> None:
    from collector.nodes.keylog import EVENT_NAMES

    assert sorted(f"application/vnd.computewatch.{n}+protobuf" for n in EVENT_NAMES) == sorted(
        keylog.KEY_EVENT_TYPES
    )
