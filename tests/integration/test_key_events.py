"""Keys over time, end to end: enrolment, handover, revocation of node and
authority keys and collector key rotation, each logged as a signed entry,
honoured by ingest and the quorum at once, and checked by ``audit verify``
from the first collector key alone."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from collector.ledger import iter_entries
from computewatch.audit.store import LocalStore
from computewatch.audit.trust import Trust
from computewatch.audit.verify import verify_store
from computewatch.cli import cli
from protos import dsse, keylog
from protos.computewatch.v1 import keylog_pb2
from tests.integration.keylog_support import DemoLog, build_demo_log
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
