"""``ControlServicer`` on its own gRPC server, with a clock the test drives."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from collector.accounting.aggregate import Aggregator
from collector.nodes.sessions import Sessions
from collector.stop.control import MAX_SKEW_SECONDS, ControlServicer
from collector.stop.directives import DirectiveBook
from collector.stop.effectiveness import Progress
from collector.stop.scoping import ScopeResolver
from collector.store.ledger import Ledger
from protos.computewatch.v1 import control_pb2, control_pb2_grpc
from protos.keys import PrivateKey
from tests.stop_support import Control, approval, authorities, manual_halt, node_scope

VALIDITY_SECONDS = 60.0


class Clock:
    def __init__(self) -> None:
        self.ns = time.time_ns()

    def __call__(self) -> int:
        return self.ns


def test_a_halt_past_its_not_after_can_still_be_resumed(tmp_path: Path) -> None:
    # Agents keep a halt they applied until a RESUME lifts it; the collector only
    # stops resending it after not_after. Refusing approvals then would leave
    # the node halted with no way back but wiping its state.
    keys, _ = authorities(tmp_path, 2)
    clock = Clock()

    async def scenario() -> None:
        ledger = Ledger(tmp_path / "ledger.sqlite3")
        book = DirectiveBook(
            PrivateKey.generate(),
            ledger,
            Sessions(),
            lease_seconds=10.0,
            validity_seconds=VALIDITY_SECONDS,
            clock_ns=clock,
        )
        aggregator = Aggregator()
        aggregator.enroll("node-a")
        control = ControlServicer(
            book,
            ledger,
            ScopeResolver(aggregator, lambda: ["node-a"]),
            {k.keyid: k.public for k in keys},
            quorum=2,
            ingest_evaluation=aggregator.ingest_evaluation,
            progress=lambda _id: Progress(0, (), False),
            clock_ns=clock,
        )
        server = grpc.aio.server()
        control_pb2_grpc.add_ControlServicer_to_server(control, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        client = Control(f"127.0.0.1:{port}")
        try:
            halt = await book.issue(
                control_pb2.ACTION_HALT, node_scope("node-a"), rule_id="manual", reason="test"
            )
            clock.ns += int(2 * VALIDITY_SECONDS * 1e9)
            assert not book.get(halt.id).in_force(clock.ns)  # type: ignore[union-attr]
            await client.approve(approval(keys[0], halt.id, when_ns=clock.ns))
            done = await client.approve(approval(keys[1], halt.id, when_ns=clock.ns))
            assert len(done.directive_ids) == 1
            record = book.get(done.directive_ids[0])
            assert record is not None
            assert record.directive.action == control_pb2.ACTION_RESUME
            assert record.directive.resumes_directive_id == halt.id
            assert len(record.directive.approvals) == 2
            # Once lifted, it is lifted: a late approval is refused.
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await client.approve(approval(PrivateKey.generate(), halt.id))
            assert late.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as again:
                await client.approve(approval(keys[0], halt.id, when_ns=clock.ns))
            assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        finally:
            await client.close()
            await server.stop(0)
            await ledger.close()

    asyncio.run(scenario())


def test_halt_nonces_are_forgotten_once_a_replay_would_be_stale(tmp_path: Path) -> None:
    """Replay protection stays, memory does not grow with every halt ever made."""
    keys, _ = authorities(tmp_path, 1)
    clock = Clock()

    async def scenario() -> None:
        ledger = Ledger(tmp_path / "ledger.sqlite3")
        book = DirectiveBook(
            PrivateKey.generate(), ledger, Sessions(), lease_seconds=10.0, clock_ns=clock
        )
        aggregator = Aggregator()
        aggregator.enroll("node-a")
        control = ControlServicer(
            book,
            ledger,
            ScopeResolver(aggregator, lambda: ["node-a"]),
            {k.keyid: k.public for k in keys},
            quorum=1,
            ingest_evaluation=aggregator.ingest_evaluation,
            progress=lambda _id: Progress(0, (), False),
            clock_ns=clock,
        )
        server = grpc.aio.server()
        control_pb2_grpc.add_ControlServicer_to_server(control, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        client = Control(f"127.0.0.1:{port}")
        try:
            first = manual_halt(keys[0], node_scope("node-a"), when_ns=clock.ns)
            await client.halt(first)
            with pytest.raises(grpc.aio.AioRpcError) as replay:
                await client.halt(first)
            assert replay.value.code() == grpc.StatusCode.ALREADY_EXISTS
            clock.ns += int(2 * MAX_SKEW_SECONDS * 1e9)
            await client.halt(manual_halt(keys[0], node_scope("node-a"), when_ns=clock.ns))
            assert len(control._halt_nonces) == 1  # the first one's nonce is gone
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await client.halt(first)
            assert late.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # stale, still refused
        finally:
            await client.close()
            await server.stop(0)
            await ledger.close()

    asyncio.run(scenario())
