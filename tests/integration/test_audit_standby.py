"""The Audit service of a collector that does not write the ledger (an HA
standby): over real loopback gRPC it serves the entries, proofs and
checkpoints another collector wrote, read from the shared database, and
signs on from them once it leads; on SQLite and a real PostgreSQL alike."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from collector.services.audit_wiring import start_audit
from collector.store import open_store
from collector.store.checkpoints import Checkpointer
from collector.store.ledger_store import Entry
from collector.store.sql import Location, open_db
from collector.store.tree_view import TreeView
from protos import checkpoint as cpmod
from protos import merkle
from protos.computewatch.v1 import audit_pb2, audit_pb2_grpc
from protos.errors import LogError
from protos.keys import PrivateKey
from tests.pg_support import BACKENDS, backend_location

ORIGIN = "computewatch.test/log"


@pytest.fixture(params=BACKENDS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    return backend_location(request, tmp_path)


def test_a_standby_serves_what_the_leader_wrote(location: Location) -> None:
    key = PrivateKey.generate()
    leader_store = open_store(str(location))
    leader_db = open_db(location)
    leader_tree = TreeView(leader_store)
    leader_cps = Checkpointer(leader_tree, key, ORIGIN, leader_db, min_interval_seconds=0)
    datas = [b"entry %d" % i for i in range(40)]

    def leader_writes(first: int, n: int) -> cpmod.SignedCheckpoint:
        chunk = [Entry(d, "t") for d in datas[first : first + n]]
        leader_store.append_batch(first, chunk, 1)
        leader_tree.refresh()
        return leader_cps.sign_now()

    leads = [False]

    async def scenario() -> None:
        leader_writes(0, 25)
        standby_store = open_store(str(location))
        server = grpc.aio.server()
        handle = await start_audit(
            server,
            location,
            TreeView(standby_store),
            key,
            ORIGIN,
            leading=lambda: leads[0],
            checkpoint_interval_seconds=0.05,
            min_checkpoint_interval_seconds=0.01,
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = audit_pb2_grpc.AuditStub(ch)
                note = (await stub.GetCheckpoint(audit_pb2.GetCheckpointRequest())).note
                cp = cpmod.open_note(note, [key.public], origin=ORIGIN)
                assert cp.size == 25
                # The leader goes on; the standby follows within a few ticks.
                newer = leader_writes(25, 15)
                for _ in range(1000):
                    latest = handle.checkpointer.latest()
                    if latest is not None and latest.size == 40:
                        break
                    await asyncio.sleep(0.01)
                assert handle.checkpointer.latest() == newer
                got = await stub.GetEntries(audit_pb2.GetEntriesRequest(start=3, end=40))
                assert [e.data for e in got.entries] == datas[3:]
                tree = merkle.MemoryTree(merkle.leaf_hash(d) for d in datas)
                proof = await stub.GetInclusionProof(
                    audit_pb2.InclusionProofRequest(index=7, tree_size=40)
                )
                merkle.verify_inclusion(
                    merkle.leaf_hash(datas[7]), 7, 40, list(proof.hashes), tree.root()
                )
                cons = await stub.GetConsistencyProof(
                    audit_pb2.ConsistencyProofRequest(old_size=25, new_size=40)
                )
                merkle.verify_consistency(25, 40, list(cons.hashes), cp.root, tree.root())
                # It signs nothing of its own: every checkpoint is the leader's.
                assert handle.checkpointer.signed_total == 0
                with pytest.raises(LogError, match="not the leader"):
                    handle.checkpointer.sign_now()
                # The leader dies; this collector takes the lead and signs on
                # from the leader's last checkpoint.
                leads[0] = True
                for _ in range(1000):
                    if handle.checkpointer.signed_total:
                        break
                    await asyncio.sleep(0.01)
                own = handle.checkpointer.latest()
                assert own is not None
                assert handle.checkpointer.writer
                assert own.size == 40
                assert own.root == tree.root()
                assert own.timestamp_unix_nanos > newer.timestamp_unix_nanos
        finally:
            await server.stop(0)
            await handle.close()
            standby_store.close()

    try:
        asyncio.run(scenario())
    finally:
        leader_db.close()
        leader_store.close()
