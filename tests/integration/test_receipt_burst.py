"""A burst of receipts, as after a cluster-wide halt: every node's receipt
report, sent at once on its own stream, is verified in the pool's batches and
committed exactly once; one forged copy in the same burst is refused alone
(typed reason, counted, logged) and changes nothing else. Real gRPC over
loopback, a real ledger file."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from collector.server import create_server
from protos import dsse
from protos.computewatch.v1 import control_pb2, envelope_pb2, telemetry_pb2
from tests.stop_support import Link, receipt_report_gpus
from tests.support import collector_config, enroll_nodes, gpu

NODES = 12


def forge(data: bytes) -> bytes:
    env = envelope_pb2.Envelope.FromString(data)
    sig = bytearray(env.signatures[0].sig)
    sig[0] ^= 0x01
    env.signatures[0].sig = bytes(sig)
    return env.SerializeToString()


def test_a_burst_of_receipts_lands_once_each_and_a_forged_one_alone_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = collector_config(tmp_path)
    nodes = enroll_nodes(config.ledger, [f"n{i:02d}" for i in range(NODES)])

    async def main() -> None:
        service, port = await create_server(config)
        links = [Link(f"127.0.0.1:{port}") for _ in range(NODES + 1)]
        try:
            for link, node in zip(links, nodes, strict=False):  # the last stays unbound
                await link.prove(node)
            stop = service.stop_protocol
            assert stop is not None
            halt = await stop.book.issue(
                control_pb2.ACTION_HALT, control_pb2.Scope(kind=control_pb2.SCOPE_KIND_CLUSTER)
            )
            envelopes = []
            for node in nodes:
                rep = node.report(receipt_report_gpus([gpu(0)], prohibited=True, util=0.0))
                rep.receipts.add(directive_id=halt.id, directive_counter=halt.counter)
                envelopes.append(node.seal(rep))
            forged = forge(envelopes[NODES // 2])
            # All at once: the forged copy rides in the middle of the burst.
            sends = [link.send(e) for link, e in zip(links, envelopes, strict=False)]
            sends.insert(NODES // 2, links[NODES].send(forged))
            await asyncio.gather(*sends)
            for link, node in zip(links, nodes, strict=False):
                ack = await link.ack_for(node.sequence, timeout=20.0)
                assert ack.node_id == node.node_id
            refused = await links[NODES].receive(20.0)
            assert refused.HasField("reject")
            assert refused.reject.reason == "bad_signature"
            assert service.ingestor.stats.rejected["bad_signature"] == 1
        finally:
            for link in links:
                await link.close()
            await service.stop(0)

    with caplog.at_level(logging.WARNING, logger="collector.telemetry.ingest"):
        asyncio.run(main())
    assert any("bad_signature" in r.getMessage() for r in caplog.records)
    # Exactly one receipt report per node in the ledger, none from the forgery.
    db = sqlite3.connect(config.ledger)
    try:
        rows = db.execute(
            "SELECT node_id, data FROM log WHERE payload_type = ?", (dsse.REPORT_TYPE,)
        ).fetchall()
    finally:
        db.close()
    receipts: dict[str, int] = {}
    for node_id, data in rows:
        rep = telemetry_pb2.NodeReport.FromString(dsse.open_envelope(bytes(data)).payload)
        if any(r.directive_id for r in rep.receipts):
            receipts[node_id] = receipts.get(node_id, 0) + 1
    assert receipts == {n.node_id: 1 for n in nodes}
