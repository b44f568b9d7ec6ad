"""Every way a report can be bad, over real gRPC: a specific Reject reason, a
counter labelled by it, a log line, and nothing written to the ledger."""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client import generate_latest

from protos import dsse
from protos.computewatch.v1 import control_pb2, envelope_pb2
from protos.keys import PrivateKey
from tests.support import Node, StreamClient, collector_config, enroll_nodes, gpu, running_collector


def forged_signature(a: Node, b: Node) -> bytes:
    env = envelope_pb2.Envelope.FromString(a.seal(a.report([gpu(0)]), advance=False))
    sig = bytearray(env.signatures[0].sig)
    sig[0] ^= 0x01
    env.signatures[0].sig = bytes(sig)
    return env.SerializeToString()


def tampered_payload(a: Node, b: Node) -> bytes:
    env = envelope_pb2.Envelope.FromString(a.seal(a.report([gpu(0)]), advance=False))
    env.payload = env.payload.replace(b"job-1", b"job-2")
    return env.SerializeToString()


def wrong_key(a: Node, b: Node) -> bytes:
    # Node a's report, signed with node b's (enrolled) key.
    return dsse.seal(a.report([gpu(0)]), b.key)


def unknown_node(a: Node, b: Node) -> bytes:
    stranger = Node("stranger", PrivateKey.generate())
    return stranger.seal(stranger.report([gpu(0)]), advance=False)


def unknown_node_claiming_enrolled_id(a: Node, b: Node) -> bytes:
    return dsse.seal(a.report([gpu(0)]), PrivateKey.generate())


def gap(a: Node, b: Node) -> bytes:
    return a.seal(a.report([gpu(0)], sequence=a.sequence + 2), advance=False)


def broken_chain(a: Node, b: Node) -> bytes:
    return a.seal(a.report([gpu(0)], previous=b"\x01" * 32), advance=False)


def equivocation(a: Node, b: Node) -> bytes:
    # Same sequence as the accepted head, different content.
    return a.seal(a.report([gpu(0, util=1.0)], sequence=a.sequence), advance=False)


def rollback(a: Node, b: Node) -> bytes:
    return a.seal(a.report([gpu(0, util=2.0)], sequence=1), advance=False)


def sequence_zero(a: Node, b: Node) -> bytes:
    return a.seal(a.report([gpu(0)], sequence=0), advance=False)


def truncated(a: Node, b: Node) -> bytes:
    return a.seal(a.report([gpu(0)]), advance=False)[:-7]


def garbage(a: Node, b: Node) -> bytes:
    return b"\xff\xfe\x00garbage" * 10


def empty(a: Node, b: Node) -> bytes:
    return b""


def no_signature(a: Node, b: Node) -> bytes:
    env = envelope_pb2.Envelope(
        payload=a.report().SerializeToString(), payload_type=dsse.REPORT_TYPE
    )
    return env.SerializeToString()


def oversize(a: Node, b: Node) -> bytes:
    report = a.report([gpu(0)])
    report.boot_id = "x" * 70_000  # the test collector's limit is 64 KiB
    return a.seal(report, advance=False)


def wrong_payload_type(a: Node, b: Node) -> bytes:
    return dsse.seal(control_pb2.Directive(id="x"), a.key)


def payload_not_a_report(a: Node, b: Node) -> bytes:
    return dsse.seal_payload(dsse.REPORT_TYPE, b"\x0a\x05hello\xff\xff", a.key)


def impossible_values(a: Node, b: Node) -> bytes:
    return a.seal(a.report([gpu(0, util=math.nan)]), advance=False)


def endless_field_errors(a: Node, b: Node) -> bytes:
    g = gpu(0)
    for _ in range(65):
        g.field_errors.add(function="nvmlDeviceGetPowerUsage", code=999, message="x" * 300)
    return a.seal(a.report([g]), advance=False)


def from_the_future(a: Node, b: Node) -> bytes:
    return a.seal(a.report([gpu(0)], sample_ns=2**62), advance=False)


SIGNED_REFUSALS = {
    "gap",
    "broken_chain",
    "equivocation",
    "rollback",
    "wrong_key",
    "invalid_report",
    "report_limit",
}

CASES: list[tuple[str, Callable[[Node, Node], bytes], str]] = [
    ("forged signature", forged_signature, "bad_signature"),
    ("tampered payload", tampered_payload, "bad_signature"),
    ("wrong key", wrong_key, "wrong_key"),
    ("unknown node", unknown_node, "unknown_node"),
    ("enrolled id, unenrolled key", unknown_node_claiming_enrolled_id, "unknown_node"),
    ("gap", gap, "gap"),
    ("broken chain", broken_chain, "broken_chain"),
    ("equivocation", equivocation, "equivocation"),
    ("rollback", rollback, "rollback"),
    ("sequence zero", sequence_zero, "invalid_report"),
    ("truncated bytes", truncated, "decode"),
    ("garbage bytes", garbage, "decode"),
    ("empty message", empty, "decode"),
    ("no signature", no_signature, "bad_signature"),
    ("oversize", oversize, "oversize"),
    ("wrong payload type", wrong_payload_type, "payload_type"),
    ("payload not a report", payload_not_a_report, "decode"),
    ("impossible values", impossible_values, "invalid_report"),
    ("sample from the future", from_the_future, "invalid_report"),
    ("endless field errors", endless_field_errors, "report_limit"),
]


@pytest.mark.parametrize(("name", "make", "reason"), CASES, ids=[c[0] for c in CASES])
def test_bad_report_is_rejected_with_reason_metric_log_and_no_write(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    make: Callable[[Node, Node], bytes],
    reason: str,
) -> None:
    config = collector_config(tmp_path, max_envelope_bytes=64 * 1024)
    a, b = enroll_nodes(config.ledger, ["node-a", "node-b"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            client = StreamClient(service.address)
            for _ in range(3):
                await client.send(a.next([gpu(0)]))
            await client.ack_for(3)
            size = service.ledger.size
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="collector.telemetry.ingest"):
                await client.send(make(a, b))
                msg = await client.receive()
            assert msg.HasField("reject"), msg
            assert msg.reject.reason == reason, msg.reject.message
            # A refused report whose signature verified names its sequence, so the
            # agent can drop it; an unverified one names none.
            if reason in SIGNED_REFUSALS and name != "sequence zero":
                assert msg.reject.sequence > 0
            else:
                assert msg.reject.sequence == 0
            assert service.ingestor.stats.rejected == {reason: 1}
            assert service.ledger.size == size
            metrics = generate_latest(service.metrics_registry).decode()
            assert f'computewatch_collector_rejected_total{{reason="{reason}"}} 1.0' in metrics
            assert any(reason in r.getMessage() for r in caplog.records)
            # The stream survives and the chain continues where it was.
            await client.send(a.next([gpu(0)]))
            assert (await client.ack_for(4)).sequence == 4
            assert service.ledger.size == size + 1
            await client.close()

    asyncio.run(scenario())


def test_equivocation_keeps_both_envelopes_as_evidence(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    (a,) = enroll_nodes(config.ledger, ["node-a"])
    sent: dict[str, bytes] = {}

    async def scenario() -> None:
        async with running_collector(config) as service:
            client = StreamClient(service.address)
            accepted = sent["accepted"] = a.next([gpu(0)])
            await client.send(accepted)
            await client.ack_for(1)
            other = sent["other"] = a.seal(
                a.report([gpu(0, util=3.0)], sequence=1, previous=bytes(32)), advance=False
            )
            await client.send(other)
            msg = await client.receive()
            assert msg.reject.reason == "equivocation"
            assert service.ledger.evidence_count("equivocation") == 1
            await client.close()

    asyncio.run(scenario())
    conn = sqlite3.connect(config.ledger)
    (acc, off) = conn.execute("SELECT accepted_data, offending_data FROM evidence").fetchone()
    conn.close()
    assert acc == sent["accepted"]
    assert off == sent["other"]
    # Both are signed by the node: the pair is transferable proof.
    assert (
        dsse.verify(acc, {a.key.keyid: a.key.public}).payload
        != dsse.verify(off, {a.key.keyid: a.key.public}).payload
    )


def test_report_for_another_node_on_a_bound_stream_is_refused(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    a, b = enroll_nodes(config.ledger, ["node-a", "node-b"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            client = StreamClient(service.address)
            await client.send(a.next([gpu(0)]))
            await client.ack_for(1)
            await client.send(b.next([gpu(0)]))
            msg = await client.receive()
            assert msg.reject.reason == "stream_binding"
            assert service.ledger.size == 2 + 1  # both enrolments, then a's report
            await client.close()

    asyncio.run(scenario())


def test_message_beyond_the_grpc_limit_ends_the_stream_without_writing(tmp_path: Path) -> None:
    config = collector_config(tmp_path, max_envelope_bytes=16 * 1024)
    (_a,) = enroll_nodes(config.ledger, ["node-a"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            client = StreamClient(service.address)
            await client.send(b"\x00" * (16 * 1024 * 5))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.receive()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert service.ledger.size == 1  # the enrolment only
            await client.close()

    asyncio.run(scenario())
