"""Keys over time, end to end: enrolment, handover, revocation of node and
authority keys and collector key rotation, each logged as a signed entry,
honoured by ingest and the quorum at once, and checked by ``audit verify``
from the first collector key alone."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from collector.store.ledger import init_db, iter_entries
from computewatch.audit.store import LocalStore
from computewatch.audit.trust import Trust
from computewatch.audit.verify import verify_store
from computewatch.cli import cli
from protos import checkpoint as cpmod
from protos import dsse, keylog, merkle
from protos.computewatch.v1 import keylog_pb2
from protos.keys import PrivateKey, load_private_key
from tests.integration.keylog_support import DemoLog, build_demo_log
from tests.support import Node, StreamClient, collector_config, gpu, running_collector
from tests.thirdparty import cwverify


def _run(tmp: Path) -> tuple[DemoLog, Path]:
    copy = tmp / "copy"
    return asyncio.run(build_demo_log(tmp, copy)), copy


def test_key_events_are_logged_honoured_and_verified(tmp_path: Path) -> None:
    demo, copy = _run(tmp_path)
    entries = list(iter_entries(demo.ledger))
    types = [e.payload_type for e in entries]

    # Both enrolments come first, signed by the collector key, before any report.
    assert types[:2] == [keylog.ENROLMENT_TYPE, keylog.ENROLMENT_TYPE]
    first = dsse.verify(entries[0].data, {demo.collector_key.keyid: demo.collector_key.public})
    assert first.parse(keylog_pb2.NodeEnrolment).node_id in {"node-a", "node-b"}

    # The handover carries the old key's and the new key's signatures.
    hand = entries[demo.handover_index].data
    signers = {s.keyid for s in dsse.open_envelope(hand).signatures}
    assert demo.node_a_new.keyid in signers
    assert len(signers) == 2
    assert demo.old_key_reject == "unknown_node"  # the old key is refused at once

    # The stolen key is refused at once, and signs nothing after its revocation.
    assert demo.revoked_node_reject == "unknown_node"
    after = [
        e
        for e in entries[demo.node_revocation_index :]
        if e.payload_type == dsse.REPORT_TYPE
        and dsse.open_envelope(e.data).signatures[0].keyid == demo.node_b.key.keyid
    ]
    assert after == []

    # The revoked authority's approval no longer counts toward the quorum.
    assert demo.second_approval == "approval 1 of 2 recorded"
    # Nor does its token open Control (or any call) any more.
    assert demo.revoked_token == "UNAUTHENTICATED"
    assert 'computewatch_collector_auth_rejected_total{reason="revoked_key"} 1.0' in demo.metrics
    assert 'computewatch_collector_key_events_total{type="NodeEnrolment"} 2.0' in demo.metrics
    assert 'computewatch_collector_key_events_total{type="KeyHandover"} 1.0' in demo.metrics
    assert 'computewatch_collector_key_events_total{type="KeyRevocation"} 2.0' in demo.metrics
    assert "computewatch_collector_revoked_authority_keys 1.0" in demo.metrics

    # The rotation is signed by the old and the new collector key, and later
    # directives and the checkpoint by the new one.
    rot = dsse.open_envelope(entries[demo.rotation_index].data)
    assert [s.keyid for s in rot.signatures] == [
        demo.collector_key.keyid,
        demo.new_collector_key.keyid,
    ]

    # Agents configured with the first collector key are sent the rotation.
    assert demo.rotation_pushed

    # A regulator given only the first collector key checks it all.
    store = LocalStore(copy, create=False)
    try:
        trust = Trust(demo.collector_key.public, {}, demo.authorities)
        report = verify_store(store, trust, now_ns=0)
        assert report.ok, report.findings
        assert report.entries == len(entries)
    finally:
        store.close()
    args = ["audit", "verify", str(copy), "--collector-key", str(tmp_path / "collector.pub")]
    args += ["--authority-keys", str(tmp_path / "authority-0.pub")]
    args += ["--authority-keys", str(tmp_path / "authority-1.pub")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    # An entry signed by a key the regulator was never given, proved from the copy.
    prove = ["audit", "prove", "--index", str(demo.handover_index), "--dir", str(copy)]
    prove += ["--collector-key", str(tmp_path / "collector.pub")]
    res = CliRunner().invoke(cli, prove)
    assert res.exit_code == 0, res.output
    assert "KeyHandover" in res.output

    # A checkpoint of the tree before the rotation, signed by the new key: that
    # key was not the log's key then.
    store = LocalStore(copy, create=False)
    try:
        size = demo.rotation_index
        leaves = [merkle.leaf_hash(d) for i, d in store.iter_entries() if i < size]
        early = cpmod.Checkpoint(demo.origin, size, merkle.MemoryTree(leaves).root(), 1)
        note = cpmod.sign_note(early.body(), demo.new_collector_key, demo.origin)
        store.add_checkpoint_note(cpmod.SignedCheckpoint(early, note))
        report = verify_store(store, trust, now_ns=0)
        assert [f.reason for f in report.findings] == ["checkpoint"]
    finally:
        store.close()


def test_third_party_verifier_checks_the_demo_log(tmp_path: Path) -> None:
    """A verifier written only from docs/regulators.md checks the regulator's
    copy of a real run (read straight from ``copy/audit.db``)."""
    demo, copy = _run(tmp_path)
    conn = sqlite3.connect(copy / "audit.db")
    try:
        entries = [bytes(r[0]) for r in conn.execute("SELECT data FROM entry ORDER BY idx")]
        notes = [bytes(r[0]).decode() for r in conn.execute("SELECT note FROM checkpoint")]
    finally:
        conn.close()
    authority_pems = [(tmp_path / f"authority-{i}.pub").read_text() for i in range(2)]
    result = cwverify.verify_log(
        entries,
        notes,
        origin=demo.origin,
        collector_pem=(tmp_path / "collector.pub").read_text(),
        authority_pems=authority_pems,
    )
    assert result.findings == []
    assert result.checkpoint is not None
    assert result.checkpoint.size == len(entries)
    state = result.state
    assert state.collector == demo.new_collector_key.public.raw()
    assert state.nodes == {demo.node_a_new.public.raw(): "node-a"}
    assert demo.node_b.key.public.raw() in state.retired
    assert demo.revoked_authority.public.raw() in state.retired
    assert state.reports == {"node-a": 5, "node-b": 2}

    # Moving a stolen key's report after its revocation is caught.
    forged = entries[:]
    stolen = next(
        i
        for i, d in enumerate(entries)
        if cwverify.envelope(d).message == "NodeReport"
        and cwverify.envelope(d).signed_by(demo.node_b.key.public.raw())
    )
    moved = forged.pop(stolen)
    forged.insert(demo.node_revocation_index, moved)
    result = cwverify.verify_log(
        forged,
        notes,
        origin=demo.origin,
        collector_pem=(tmp_path / "collector.pub").read_text(),
        authority_pems=authority_pems,
    )
    reasons = {f.split(":", 1)[0] for f in result.findings}
    assert "revoked_key" in reasons
    assert "rewritten_entry" in reasons


def test_enrolments_made_before_key_events_are_logged_once(tmp_path: Path) -> None:
    """A ledger whose nodes were enrolled before key events existed (a row in
    ``nodes`` and nothing queued) gets one enrolment entry per node, once."""
    config = collector_config(tmp_path)
    init_db(config.ledger)
    key = PrivateKey.generate()
    conn = sqlite3.connect(config.ledger)
    with conn:
        conn.execute(
            "INSERT INTO nodes(node_id, keyid, public_key, enrolled_unix_nanos)"
            " VALUES (?, ?, ?, 7)",
            ("node-old", key.keyid, key.public.raw()),
        )
    conn.close()

    async def scenario() -> None:
        for _ in range(2):  # the second start finds it logged
            async with running_collector(config) as service:
                client = StreamClient(service.address)
                await client.send(node.next([gpu(0)]))
                await client.ack_for(node.sequence)
                await client.close()

    node = Node("node-old", key)
    asyncio.run(scenario())
    entries = list(iter_entries(config.ledger))
    assert [e.payload_type for e in entries] == [
        keylog.ENROLMENT_TYPE,
        dsse.REPORT_TYPE,
        dsse.REPORT_TYPE,
    ]
    collector = load_private_key(config.key)
    enrolment = dsse.verify(entries[0].data, {collector.keyid: collector.public})
    msg = enrolment.parse(keylog_pb2.NodeEnrolment)
    assert (msg.node_id, msg.public_key, msg.enrolled_unix_nanos) == (
        "node-old",
        key.public.raw(),
        7,
    )
