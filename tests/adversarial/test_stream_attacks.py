"""Attacks on Telemetry.Stream itself: binding a stream to someone else's node,
and frames that are not AgentMessages. Real gRPC on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client import generate_latest

from protos.computewatch.v1 import control_pb2
from tests.stop_support import (
    Control,
    Link,
    authorities,
    collector_public,
    drain,
    manual_halt,
    next_directive,
    node_scope,
)
from tests.support import (
    Node,
    StreamClient,
    collector_config,
    enroll_nodes,
    gpu,
    running_collector,
    stream_proof,
)


def test_a_replayed_report_binds_nothing_and_receives_no_directive(tmp_path: Path) -> None:
    """Every report is public (the log serves them): one replayed on a fresh
    stream is acknowledged as a replay, but the stream stays unbound and the
    node's HALT goes only to the stream that proved possession of its key."""
    keys, paths = authorities(tmp_path, 1)
    config = collector_config(tmp_path, authority_keys=tuple(paths), quorum=1)
    (node,) = enroll_nodes(config.ledger, ["node-a"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            honest = Link(service.address)
            await honest.prove(node)
            await honest.send(node.next([gpu(0)]))
            await honest.ack_for(1)
            old = node.sent[0]  # what an auditor's copy of the log holds
            thief = Link(service.address)
            await thief.send(old)
            assert (await thief.ack_for(1)).sequence == 1  # a harmless replay
            assert service.ingestor.stats.replayed == 1
            bound = list(service.sessions.for_node("node-a"))
            assert len(bound) == 1
            control = Control(service.address)
            halted = await control.halt(manual_halt(keys[0], node_scope("node-a")))
            halt = await next_directive(honest, collector_public(config.key))
            assert halt.id == halted.directive_ids[0]
            stolen = [m for m in await drain(thief, 1.0) if m.HasField("directive")]
            assert stolen == []
            await control.close()
            await thief.close()
            await honest.close()

    asyncio.run(scenario())


def _replayed_proof(node: Node, other: Node, old_nonce: bytes, nonce: bytes) -> bytes:
    del other, nonce
    return stream_proof(node, old_nonce)  # the answer to another stream's challenge


def _proof_by_another_key(node: Node, other: Node, old_nonce: bytes, nonce: bytes) -> bytes:
    del old_nonce
    forged = Node(node.node_id, other.key)  # claims node-a, signed by node-b's key
    return stream_proof(forged, nonce)


def _not_an_envelope(node: Node, other: Node, old_nonce: bytes, nonce: bytes) -> bytes:
    del node, other, old_nonce, nonce
    return b"\x0a\x03abc"


ProofAttack = Callable[[Node, Node, bytes, bytes], bytes]


@pytest.mark.parametrize(
    "attack",
    [_replayed_proof, _proof_by_another_key, _not_an_envelope],
    ids=["proof from another stream", "signed by another node's key", "not an envelope"],
)
def test_a_bad_proof_is_refused_and_binds_nothing(tmp_path: Path, attack: ProofAttack) -> None:
    config = collector_config(tmp_path)
    a, b = enroll_nodes(config.ledger, ["node-a", "node-b"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            first = StreamClient(service.address)
            await first.prove(a)
            await first.send(a.next([gpu(0)]))
            await first.ack_for(1)
            assert first.nonce is not None
            second = StreamClient(service.address)
            msg = await second.receive_raw()
            assert msg.HasField("challenge")
            assert msg.challenge.nonce != first.nonce
            second.nonce = msg.challenge.nonce
            await second.send_proof(attack(a, b, first.nonce, msg.challenge.nonce))
            reply = await second.receive()
            assert reply.reject.reason == "stream_binding", reply
            assert [s.peer for s in service.sessions.for_node("node-a")] != []
            assert len(list(service.sessions.for_node("node-a"))) == 1
            assert list(service.sessions.for_node("node-b")) == []
            text = generate_latest(service.metrics_registry).decode()
            assert 'computewatch_collector_rejected_total{reason="stream_binding"} 1.0' in text
            # The stream stays open: an honest proof still binds it.
            await second.prove(a)
            await second.send(a.next([gpu(0)]))
            assert (await second.ack_for(2)).sequence == 2
            assert len(list(service.sessions.for_node("node-a"))) == 2
            await first.close()
            await second.close()

    asyncio.run(scenario())


def test_a_proof_for_another_node_than_the_streams_reports_is_refused(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    a, b = enroll_nodes(config.ledger, ["node-a", "node-b"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            client = StreamClient(service.address)
            await client.send(a.next([gpu(0)]))
            await client.ack_for(1)
            await client.prove(b)
            reply = await client.receive()
            assert reply.reject.reason == "stream_binding"
            assert list(service.sessions.for_node("node-b")) == []
            await client.close()

    asyncio.run(scenario())


async def _read_all(call: grpc.aio.StreamStreamCall[bytes, bytes]) -> None:
    for _ in range(10):  # the challenge, then the refusal
        assert await call.read() is not grpc.aio.EOF


def test_a_malformed_frame_is_invalid_argument_not_unavailable(tmp_path: Path) -> None:
    """UNAVAILABLE tells clients to retry the same bytes; a frame that is not an
    AgentMessage never becomes one."""
    config = collector_config(tmp_path)

    async def scenario() -> None:
        async with running_collector(config) as service:
            async with grpc.aio.insecure_channel(service.address) as channel:
                call = channel.stream_stream("/computewatch.v1.Telemetry/Stream")()
                await call.write(b"\xff\xff\xff\xff")
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await _read_all(call)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "malformed stream frame" in (err.value.details() or "")
            text = generate_latest(service.metrics_registry).decode()
            assert 'computewatch_collector_rejected_total{reason="malformed_frame"} 1.0' in text
            assert service.ledger.size == 0

    asyncio.run(scenario())


def test_cluster_scopes_name_the_collectors_cluster(tmp_path: Path) -> None:
    keys, paths = authorities(tmp_path, 1)
    config = collector_config(tmp_path, authority_keys=tuple(paths), quorum=1, cluster="west")
    (node,) = enroll_nodes(config.ledger, ["node-a"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            link = Link(service.address)
            await link.prove(node)
            await link.send(node.next([gpu(0)]))
            await link.ack_for(1)
            control = Control(service.address)
            cluster = control_pb2.Scope(kind=control_pb2.SCOPE_KIND_CLUSTER)
            await control.halt(manual_halt(keys[0], cluster))
            halt = await next_directive(link, collector_public(config.key))
            assert halt.scope.kind == control_pb2.SCOPE_KIND_CLUSTER
            assert halt.scope.cluster == "west"
            await control.close()
            await link.close()

    asyncio.run(scenario())
