"""A directive to many streams is serialised once and the same frame queued
on each: every bound stream in scope receives exactly the committed envelope
bytes, and each node's own verifier (the agent's) accepts them. Real gRPC over
loopback, a real ledger file."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.enforce.verify import DirectiveVerifier
from collector.server import create_server
from protos.computewatch.v1 import control_pb2
from protos.keys import PublicKey, load_private_key
from tests.stop_support import Link, open_directive
from tests.support import collector_config, enroll_nodes

NODES = 6


class _NothingSeen:
    def highest(self, cls: str) -> int:
        return 0

    def applied_counter(self, directive_id: str) -> int | None:
        return None


async def _halt_envelope(link: Link, collector: PublicKey) -> bytes:
    """Read until a HALT directive; its raw envelope bytes."""
    for _ in range(1000):
        msg = await link.receive(10.0)
        if msg.HasField("directive"):
            d = open_directive(msg.directive, collector)
            if d.action == control_pb2.ACTION_HALT:
                return msg.directive
    raise AssertionError("no HALT among 1,000 messages")


def test_one_directive_reaches_every_stream_as_the_same_bytes(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    nodes = enroll_nodes(config.ledger, [f"n{i}" for i in range(NODES)])
    collector_key = load_private_key(config.key).public

    async def main() -> None:
        service, port = await create_server(config)
        links = [Link(f"127.0.0.1:{port}") for _ in nodes]
        try:
            for link, node in zip(links, nodes, strict=True):
                await link.prove(node)
            for _ in range(200):  # bounded: until every stream is bound
                if len(service.sessions) == NODES:
                    break
                await asyncio.sleep(0.05)
            assert len(service.sessions) == NODES
            stop = service.stop_protocol
            assert stop is not None
            scope = control_pb2.Scope(kind=control_pb2.SCOPE_KIND_CLUSTER)
            halt = await stop.book.issue(control_pb2.ACTION_HALT, scope, reason="fan-out test")
            record = stop.book.get(halt.id)
            assert record is not None
            verifiers = [DirectiveVerifier(n.node_id, collector_key) for n in nodes]
            received = [await _halt_envelope(link, collector_key) for link in links]
            assert all(data == record.envelope for data in received)
            for data, verifier in zip(received, verifiers, strict=True):
                accepted = verifier.verify(data, now_ns=halt.issued_unix_nanos, seen=_NothingSeen())
                assert accepted.directive.id == halt.id
            assert stop.book.stats.pushed >= NODES
        finally:
            for link in links:
                await link.close()
            await service.stop(0)

    asyncio.run(main())
