"""Keys over time, end to end: enrolment, handover, revocation of node and
authority keys and collector key rotation, each logged as a signed entry,
honoured by ingest and the quorum at once, and checked by ``audit verify``
from the first collector key alone."""

from __future__ import annotations

import asyncio
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
