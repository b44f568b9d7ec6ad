"""The Audit service over real loopback gRPC, on a real SQLite ledger file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from collector.services.audit import AuditLimits
from protos import checkpoint as cpmod
from protos import merkle
from protos.computewatch.v1 import audit_pb2
from tests.integration.audit_support import ORIGIN, AuditServer, Keys, audit_server, directive

U64 = 2**64 - 1


async def wait_for_checkpoint(srv: AuditServer, size: int) -> cpmod.SignedCheckpoint:
    for _ in range(500):
        latest = srv.handle.checkpointer.latest()
        if latest is not None and latest.size >= size:
            return latest
        await asyncio.sleep(0.01)
    raise AssertionError(f"no checkpoint of size {size}")


def fill(srv: AuditServer, keys: Keys, reports_per_node: int) -> list[bytes]:
    datas: list[bytes] = []
    nodes = keys.nodes or [keys.add_node("node-a"), keys.add_node("node-b")]
    for i in range(reports_per_node):
        datas.extend(n.report() for n in nodes)
        if i % 10 == 9:
            datas.append(directive(keys.collector, i))
    srv.writer.append(datas)
    return datas


def test_checkpoint_entries_and_proofs(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")

    async def run() -> None:
        async with audit_server(tmp_path, keys) as srv:
            first = fill(srv, keys, 5)
            old = await wait_for_checkpoint(srv, len(first))
            rest = fill(srv, keys, 20)
            datas = first + rest
            await wait_for_checkpoint(srv, len(datas))
            async with srv.channel() as ch:
                stub = srv.stub(ch)
                note = (await stub.GetCheckpoint(audit_pb2.GetCheckpointRequest())).note
                cp = cpmod.open_note(note, [keys.collector.public], origin=ORIGIN)
                assert cp.size == len(datas)
                tree = merkle.MemoryTree([merkle.leaf_hash(d) for d in datas])
                assert cp.root == tree.root()
                got = await stub.GetEntries(audit_pb2.GetEntriesRequest(start=3, end=U64))
                assert [e.index for e in got.entries] == list(range(3, len(datas)))
                assert [e.data for e in got.entries] == datas[3:]
                for index in (0, 7, len(datas) - 1):
                    proof = await stub.GetInclusionProof(
                        audit_pb2.InclusionProofRequest(index=index, tree_size=cp.size)
                    )
                    merkle.verify_inclusion(
                        merkle.leaf_hash(datas[index]), index, cp.size, list(proof.hashes), cp.root
                    )
                proof = await stub.GetConsistencyProof(
                    audit_pb2.ConsistencyProofRequest(old_size=old.size, new_size=cp.size)
                )
                merkle.verify_consistency(old.size, cp.size, list(proof.hashes), old.root, cp.root)

    asyncio.run(run())


def test_get_entries_is_bounded_per_response(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    limits = AuditLimits(max_entries_per_response=7)

    async def run() -> None:
        async with audit_server(tmp_path, keys, limits=limits) as srv:
            fill(srv, keys, 10)
            async with srv.channel() as ch:
                got = await srv.stub(ch).GetEntries(audit_pb2.GetEntriesRequest(start=0, end=20))
                assert [e.index for e in got.entries] == list(range(7))

    asyncio.run(run())


BAD_REQUESTS = [
    ("GetEntries", audit_pb2.GetEntriesRequest(start=5, end=5), "INVALID_ARGUMENT"),
    ("GetEntries", audit_pb2.GetEntriesRequest(start=9, end=3), "INVALID_ARGUMENT"),
    ("GetEntries", audit_pb2.GetEntriesRequest(start=18, end=30), "OUT_OF_RANGE"),
    ("GetEntries", audit_pb2.GetEntriesRequest(start=U64 - 1, end=U64), "OUT_OF_RANGE"),
    (
        "GetInclusionProof",
        audit_pb2.InclusionProofRequest(index=0, tree_size=0),
        "INVALID_ARGUMENT",
    ),
    (
        "GetInclusionProof",
        audit_pb2.InclusionProofRequest(index=5, tree_size=5),
        "INVALID_ARGUMENT",
    ),
    ("GetInclusionProof", audit_pb2.InclusionProofRequest(index=0, tree_size=19), "OUT_OF_RANGE"),
    ("GetInclusionProof", audit_pb2.InclusionProofRequest(index=0, tree_size=U64), "OUT_OF_RANGE"),
    (
        "GetConsistencyProof",
        audit_pb2.ConsistencyProofRequest(old_size=0, new_size=5),
        "INVALID_ARGUMENT",
    ),
    (
        "GetConsistencyProof",
        audit_pb2.ConsistencyProofRequest(old_size=6, new_size=5),
        "INVALID_ARGUMENT",
    ),
    (
        "GetConsistencyProof",
        audit_pb2.ConsistencyProofRequest(old_size=1, new_size=U64),
        "OUT_OF_RANGE",
    ),
    (
        "GetConsistencyProof",
        audit_pb2.ConsistencyProofRequest(old_size=1, new_size=19),
        "OUT_OF_RANGE",
    ),
]


def test_out_of_range_requests_get_a_status_not_a_crash(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    registry = CollectorRegistry()

    async def run() -> None:
        async with audit_server(tmp_path, keys, registry=registry) as srv:
            fill(srv, keys, 9)
            assert srv.writer.size == 18
            async with srv.channel() as ch:
                stub = srv.stub(ch)
                for method, request, code in BAD_REQUESTS:
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await getattr(stub, method)(request)
                    assert info.value.code().name == code, (method, request)
                for start in (19, U64):
                    call = stub.Subscribe(audit_pb2.SubscribeRequest(from_index=start))
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await call.read()
                    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
                # Still serving.
                note = (await stub.GetCheckpoint(audit_pb2.GetCheckpointRequest())).note
                assert cpmod.parse_unverified(note).origin == ORIGIN
            rejected = srv.handle.servicer.rejected
            assert rejected[("GetEntries", "OUT_OF_RANGE")] == 2
            assert rejected[("Subscribe", "OUT_OF_RANGE")] == 2
            sample = registry.get_sample_value
            labels = {"method": "GetInclusionProof", "code": "INVALID_ARGUMENT"}
            assert sample("computewatch_audit_requests_rejected_total", labels) == 2
            assert sample("computewatch_log_entries") == 18
            assert (sample("computewatch_log_checkpoints_signed_total") or 0) >= 1
            assert sample("computewatch_audit_subscribers") == 0

    asyncio.run(run())
