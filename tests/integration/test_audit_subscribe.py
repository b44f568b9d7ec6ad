"""Audit.Subscribe: order, covering checkpoints, resumption, and slow subscribers."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import grpc
import pytest

from collector.services.audit import AuditLimits
from computewatch.audit.follow import resume_hint
from protos import checkpoint as cpmod
from protos import dsse, merkle
from protos.computewatch.v1 import audit_pb2
from protos.keys import PrivateKey
from tests.integration.audit_support import ORIGIN, AuditServer, Keys, audit_server


async def read_until(
    call: grpc.aio.UnaryStreamCall, size: int, keys: Keys
) -> tuple[list[tuple[int, bytes]], list[cpmod.SignedCheckpoint]]:
    """Read (entries, checkpoints) until a checkpoint of at least ``size``."""
    entries: list[tuple[int, bytes]] = []
    cps: list[cpmod.SignedCheckpoint] = []
    for _ in range(100_000):
        msg = await asyncio.wait_for(call.read(), 10)
        assert isinstance(msg, audit_pb2.SubscribeResponse)
        if msg.HasField("entry"):
            entries.append((msg.entry.index, msg.entry.data))
        else:
            cp = cpmod.open_note(msg.checkpoint.note, [keys.collector.public], origin=ORIGIN)
            cps.append(cp)
            if cp.size >= size:
                return entries, cps
    raise AssertionError("stream never reached the size")


_KEY = PrivateKey.generate()


def blobs(n: int, size: int = 64) -> list[bytes]:
    """Signed envelopes of random payloads (the Audit service serves any entry)."""
    blob_type = "application/vnd.computewatch.Blob+protobuf"
    return [dsse.seal_payload(blob_type, os.urandom(size), _KEY) for _ in range(n)]


async def grow(srv: AuditServer, total: int, batch: int, *, checkpointed: bool = False) -> None:
    while srv.writer.size < total:
        srv.writer.append(blobs(min(batch, total - srv.writer.size)))
        for _ in range(500):
            latest = srv.handle.checkpointer.latest()
            if not checkpointed or (latest is not None and latest.size == srv.writer.size):
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.005)


async def drain(call: grpc.aio.UnaryStreamCall) -> grpc.aio.AioRpcError:
    """Read until the stream fails; return its error."""
    try:
        for _ in range(100_000):
            await asyncio.wait_for(call.read(), 10)
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the stream did not fail")


def test_stream_is_ordered_covered_and_resumable(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    limits = AuditLimits(round_entries=50, stream_chunk_entries=16)

    async def run() -> None:
        async with audit_server(tmp_path, keys, limits=limits) as srv:
            await grow(srv, 400, 25, checkpointed=True)  # a checkpoint after each batch
            async with srv.channel() as ch:
                stub = srv.stub(ch)
                call = stub.Subscribe(audit_pb2.SubscribeRequest(from_index=0))
                writer = asyncio.create_task(grow(srv, 600, 10))  # live while reading
                entries, cps = await read_until(call, 600, keys)
                await writer
                call.cancel()
                assert [i for i, _ in entries] == list(range(len(entries)))
                tree = merkle.MemoryTree([merkle.leaf_hash(d) for _, d in entries])
                for cp in cps:  # each checkpoint covers exactly the entries before it
                    assert cp.root == tree.root(cp.size)
                # Catch-up came in rounds of about round_entries, each with its checkpoint.
                assert len([cp for cp in cps if cp.size <= 400]) >= 400 // 50 - 1
                sizes = [cp.size for cp in cps]
                assert sizes == sorted(sizes)
                # Resume from the middle.
                call = stub.Subscribe(audit_pb2.SubscribeRequest(from_index=333))
                more, cps2 = await read_until(call, 600, keys)
                call.cancel()
                assert [i for i, _ in more] == list(range(333, 600))
                assert [d for _, d in more] == [d for _, d in entries[333:600]]
                assert cps2[-1].root == tree.root(cps2[-1].size)

    asyncio.run(run())


def test_a_quiet_log_still_streams_fresh_checkpoints(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")

    async def run() -> None:
        async with audit_server(tmp_path, keys, interval=0.05) as srv:
            srv.writer.append(blobs(3))
            async with srv.channel() as ch:
                call = srv.stub(ch).Subscribe(audit_pb2.SubscribeRequest(from_index=3))
                _, cps = await read_until(call, 3, keys)
                first = cps[-1]
                for _ in range(3):
                    msg = await asyncio.wait_for(call.read(), 10)
                    assert isinstance(msg, audit_pb2.SubscribeResponse)
                    assert msg.HasField("checkpoint")
                    cp = cpmod.open_note(msg.checkpoint.note, [keys.collector.public])
                    assert cp.size == 3
                    assert cp.timestamp_unix_nanos > first.timestamp_unix_nanos
                    first = cp
                call.cancel()

    asyncio.run(run())


def test_a_stuck_subscriber_is_closed_and_ingestion_goes_on(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    limits = AuditLimits(subscriber_queue=2)

    async def run() -> None:
        async with audit_server(tmp_path, keys, limits=limits) as srv:
            srv.writer.append(blobs(300, size=64 * 1024))  # ~19 MB: more than gRPC buffers
            async with srv.channel() as ch:
                call = srv.stub(ch).Subscribe(audit_pb2.SubscribeRequest(from_index=0))
                await asyncio.wait_for(call.read(), 10)  # the stream is open; now stop reading
                for _ in range(1000):  # the log keeps growing: ingestion is not held up
                    srv.writer.append(blobs(5))
                    if srv.handle.hub.dropped_total:
                        break
                    await asyncio.sleep(0.01)
                assert srv.handle.hub.dropped_total == 1
                error = await drain(call)
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "fell behind" in (error.details() or "")
                assert "from_index" in (error.details() or "")
            assert srv.handle.hub.active == 0

    asyncio.run(run())


def test_a_subscriber_that_never_reads_is_let_go_at_once_and_told_where_to_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler of a stuck stream used to wait in abort() until the
    subscriber read or left (then logged a traceback): now it ends at once."""
    keys = Keys(tmp_path / "keys")
    limits = AuditLimits(subscriber_queue=2, close_grace_seconds=0.2)

    async def run() -> None:
        async with audit_server(tmp_path, keys, limits=limits, interval=0.05) as srv:
            srv.writer.append(blobs(300, size=64 * 1024))  # ~19 MB: more than gRPC buffers
            async with srv.channel() as ch:
                call = srv.stub(ch).Subscribe(audit_pb2.SubscribeRequest(from_index=0))
                await asyncio.wait_for(call.read(), 10)  # open; now read nothing
                for _ in range(1000):
                    if srv.handle.hub.cut_off_total:
                        break
                    await asyncio.sleep(0.01)
                # Let go without a single read: no handler, no queue left.
                assert srv.handle.hub.dropped_total == 1
                assert srv.handle.hub.cut_off_total == 1
                assert srv.handle.hub.active == 0
                # Reading later still yields the typed status and where to resume.
                error = await drain(call)
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                hint = resume_hint(error)
                assert hint is not None
                assert f"from_index = {hint}" in (error.details() or "")

    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_subscriber_leaving_while_closed_logs_no_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = Keys(tmp_path / "keys")
    limits = AuditLimits(subscriber_queue=2, close_grace_seconds=60.0)

    async def run() -> None:
        async with audit_server(tmp_path, keys, limits=limits, interval=0.05) as srv:
            srv.writer.append(blobs(300, size=64 * 1024))
            ch = srv.channel()
            call = srv.stub(ch).Subscribe(audit_pb2.SubscribeRequest(from_index=0))
            await asyncio.wait_for(call.read(), 10)
            for _ in range(1000):
                if srv.handle.hub.dropped_total:
                    break
                await asyncio.sleep(0.01)
            assert srv.handle.hub.dropped_total == 1
            await ch.close()  # leaves while its closing status waits
            for _ in range(100):
                await asyncio.sleep(0.01)

    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, errors[0].getMessage()


def test_a_live_subscriber_too_far_behind_is_told_where_to_resume(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    limits = AuditLimits(max_lag_entries=20)

    async def run() -> None:
        async with audit_server(tmp_path, keys, limits=limits) as srv:
            srv.writer.append(blobs(10))
            async with srv.channel() as ch:
                call = srv.stub(ch).Subscribe(audit_pb2.SubscribeRequest(from_index=0))
                await read_until(call, 10, keys)  # caught up: now live
                srv.writer.append(blobs(100))  # a burst well past the lag bound
                error = await drain(call)
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "more than 20 entries behind" in (error.details() or "")

    asyncio.run(run())
