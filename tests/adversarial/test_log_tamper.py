"""Every way the public record can be falsified, and the name the regulator's tools give it.

Three families, one table each:
- the regulator's local copy is altered: ``audit verify`` names it;
- the operator alters the collector's ledger and restarts it: ``audit subscribe``
  names it when it resumes, keeping the signed notes as evidence;
- a collector serves a stream that contradicts what it signed: ``audit subscribe``
  names it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from computewatch.audit.follow import Follower, FollowOptions
from computewatch.audit.store import LocalStore
from computewatch.audit.verify import verify_store
from computewatch.cli import cli
from protos import checkpoint as cpmod
from protos import dsse, merkle
from protos.auth import client_interceptors
from protos.computewatch.v1 import audit_pb2, audit_pb2_grpc
from protos.errors import (
    CheckpointShrankError,
    DroppedEntryError,
    Error,
    InconsistentLogError,
    RewrittenEntryError,
    SplitViewError,
    StaleCheckpointError,
)
from protos.keys import PrivateKey
from tests.integration.audit_support import ORIGIN, AuditServer, Keys, Node, audit_server

# --- shared set-up ---------------------------------------------------------------


@dataclass
class World:
    tmp: Path
    keys: Keys
    ledger: Path
    copy: Path

    @property
    def a(self) -> Node:
        return self.keys.nodes[0]


def make_world(tmp: Path) -> World:
    keys = Keys(tmp / "keys")
    keys.add_node("node-a")
    keys.add_node("node-b")
    return World(tmp, keys, tmp / "ledger.db", tmp / "copy")


def reports(world: World, rounds: int) -> list[bytes]:
    return [n.report() for _ in range(rounds) for n in world.keys.nodes]


async def settle(srv: AuditServer) -> None:
    for _ in range(500):
        latest = srv.handle.checkpointer.latest()
        if latest is not None and latest.size == srv.writer.size:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no checkpoint covers the log")


async def follow(world: World, address: str, **options: object) -> None:
    store = LocalStore(world.copy)
    try:
        interceptors = client_interceptors(world.keys.auditor)
        async with grpc.aio.insecure_channel(address, interceptors=interceptors) as ch:
            follower = Follower(audit_pb2_grpc.AuditStub(ch), store, world.keys.trust())
            await follower.run(FollowOptions(once=True, max_retries=0, **options))  # type: ignore[arg-type]
    finally:
        store.close()


async def synced_copy(world: World, rounds: int = 10) -> None:
    """A collector with 2 x ``rounds`` reports, and a verified local copy of it."""
    async with audit_server(world.tmp, world.keys, ledger=world.ledger) as srv:
        srv.writer.append(reports(world, rounds))
        await settle(srv)
        await follow(world, srv.address)


def run_verify(world: World, max_age: float | None = None) -> set[str]:
    store = LocalStore(world.copy, create=False)
    try:
        report = verify_store(
            store, world.keys.trust(), now_ns=time.time_ns(), max_age_seconds=max_age
        )
    finally:
        store.close()
    return {f.reason for f in report.findings}


def copy_db(world: World) -> sqlite3.Connection:
    return sqlite3.connect(world.copy / "audit.db", isolation_level=None)


def latest_note(world: World) -> cpmod.SignedCheckpoint:
    conn = copy_db(world)
    note = conn.execute(
        "SELECT note FROM checkpoint ORDER BY timestamp_unix_nanos DESC LIMIT 1"
    ).fetchone()[0]
    conn.close()
    return cpmod.open_note(bytes(note), [world.keys.collector.public])


def add_note(world: World, size: int, root: bytes, key: PrivateKey | None = None) -> None:
    latest = latest_note(world)
    cp = cpmod.Checkpoint(ORIGIN, size, root, latest.timestamp_unix_nanos + 1)
    signed = cpmod.sign(cp, key or world.keys.collector)
    store = LocalStore(world.copy)
    store.add_checkpoint_note(signed)
    store.close()


def entry_root(world: World, size: int) -> bytes:
    conn = copy_db(world)
    rows = conn.execute("SELECT data FROM entry WHERE idx < ? ORDER BY idx", (size,)).fetchall()
    conn.close()
    return merkle.MemoryTree([merkle.leaf_hash(bytes(r[0])) for r in rows]).root()


# --- family 1: the local copy is altered --------------------------------------------


def flip_byte(world: World) -> None:
    conn = copy_db(world)
    data = bytearray(conn.execute("SELECT data FROM entry WHERE idx = 7").fetchone()[0])
    data[len(data) // 2] ^= 0x01
    conn.execute("UPDATE entry SET data = ? WHERE idx = 7", (bytes(data),))


def resign_entry(world: World) -> None:
    # Entry 6 is node-a's 4th report: a different, validly signed report takes its place.
    conn = copy_db(world)
    prev = bytes(conn.execute("SELECT data FROM entry WHERE idx = 4").fetchone()[0])
    forged = Node(world.a.node_id, world.a.key, sequence=3, previous=dsse.digest(prev))
    conn.execute("UPDATE entry SET data = ? WHERE idx = 6", (forged.report(),))


def delete_entry(world: World) -> None:
    copy_db(world).execute("DELETE FROM entry WHERE idx = 9")


def delete_and_renumber(world: World) -> None:
    conn = copy_db(world)
    rows = conn.execute("SELECT idx, data FROM entry WHERE idx > 9 ORDER BY idx").fetchall()
    conn.execute("DELETE FROM entry WHERE idx >= 9")
    conn.executemany("INSERT INTO entry VALUES (?, ?)", [(i - 1, d) for i, d in rows])


def shrunk_checkpoint(world: World) -> None:
    size = latest_note(world).size - 3
    add_note(world, size, entry_root(world, size))


def split_view(world: World) -> None:
    add_note(world, latest_note(world).size, bytes(32))


def foreign_checkpoint(world: World) -> None:
    latest = latest_note(world)
    add_note(world, latest.size, latest.root, key=PrivateKey.generate())


def append_uncovered(world: World) -> None:
    conn = copy_db(world)
    size = conn.execute("SELECT MAX(idx) + 1 FROM entry").fetchone()[0]
    conn.execute("INSERT INTO entry VALUES (?, ?)", (size, world.a.report()))


def untouched(world: World) -> None:
    pass


LOCAL = [
    ("rewritten entry (bytes changed)", flip_byte, None, {"rewritten_entry"}),
    ("rewritten entry (validly re-signed)", resign_entry, None, {"rewritten_entry"}),
    ("dropped entry (hole)", delete_entry, None, {"dropped_entry"}),
    ("dropped entry (renumbered)", delete_and_renumber, None, {"dropped_entry"}),
    ("checkpoint that shrinks", shrunk_checkpoint, None, {"checkpoint_shrank"}),
    ("two roots for one size", split_view, None, {"split_view"}),
    ("checkpoint by another key", foreign_checkpoint, None, {"checkpoint"}),
    ("entry added after the checkpoint", append_uncovered, None, {"rewritten_entry"}),
    ("stale checkpoint", untouched, 0.001, {"stale_checkpoint"}),
]


@pytest.mark.parametrize(
    ("tamper", "max_age", "want"), [c[1:] for c in LOCAL], ids=[c[0] for c in LOCAL]
)
def test_verify_names_each_tampering_of_the_copy(
    tmp_path: Path, tamper: Callable[[World], None], max_age: float | None, want: set[str]
) -> None:
    world = make_world(tmp_path)
    asyncio.run(synced_copy(world))
    assert run_verify(world, max_age=60) == set()
    tamper(world)
    found = run_verify(world, max_age=max_age)
    assert want <= found, found
    # The CLI names it and exits non-zero.
    args = ["audit", "verify", str(world.copy), *world.keys.cli_trust_args()]
    if max_age is not None:
        args += ["--max-age", str(max_age)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1
    for reason in want:
        assert f"{reason}:" in res.output


def test_split_view_evidence_is_transferable(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    asyncio.run(synced_copy(world))
    split_view(world)
    assert "split_view" in run_verify(world)
    folders = list((world.copy / "evidence").iterdir())
    assert len(folders) == 1
    notes = sorted(folders[0].glob("checkpoint-*.txt"))
    opened = [cpmod.open_note(p.read_bytes(), [world.keys.collector.public]) for p in notes]
    assert len(opened) == 2
    assert opened[0].size == opened[1].size
    assert opened[0].root != opened[1].root


# --- family 2: the operator alters the ledger and restarts the collector ---------------


def _reset_tree(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM merkle_node")
    conn.execute("DELETE FROM checkpoint")


def rewrite_history(ledger: Path, world: World) -> None:
    conn = sqlite3.connect(ledger, isolation_level=None)
    forged = Node("node-a", world.a.key, sequence=1, previous=bytes(32)).report(sequence=1)
    conn.execute("UPDATE log SET data = ? WHERE idx = 0", (forged,))
    _reset_tree(conn)
    conn.close()


def drop_and_renumber(ledger: Path, world: World) -> None:
    conn = sqlite3.connect(ledger, isolation_level=None)
    rows = conn.execute(
        "SELECT idx, data, payload_type, received_unix_nanos FROM log WHERE idx > 5 ORDER BY idx"
    ).fetchall()
    conn.execute("DELETE FROM log WHERE idx >= 5")
    conn.executemany(
        "INSERT INTO log(idx, data, payload_type, received_unix_nanos) VALUES (?, ?, ?, ?)",
        [(i - 1, d, t, r) for i, d, t, r in rows],
    )
    _reset_tree(conn)
    conn.close()


def truncate(ledger: Path, world: World) -> None:
    conn = sqlite3.connect(ledger, isolation_level=None)
    conn.execute("DELETE FROM log WHERE idx >= 17")
    _reset_tree(conn)
    conn.close()


SERVER = [
    ("history rewritten, then grown", rewrite_history, 4, InconsistentLogError),
    ("entry dropped and renumbered", drop_and_renumber, 4, InconsistentLogError),
    ("log truncated", truncate, 0, CheckpointShrankError),
    ("same size, other history", rewrite_history, 0, SplitViewError),
]


@pytest.mark.parametrize(
    ("tamper", "grow", "error"), [c[1:] for c in SERVER], ids=[c[0] for c in SERVER]
)
def test_subscribe_names_each_rewrite_of_the_ledger(
    tmp_path: Path,
    tamper: Callable[[Path, World], None],
    grow: int,
    error: type[Error],
) -> None:
    world = make_world(tmp_path)

    async def run() -> None:
        await synced_copy(world)
        tamper(world.ledger, world)
        async with audit_server(world.tmp, world.keys, ledger=world.ledger) as srv:
            if grow:
                srv.writer.append(reports(world, grow // 2))
            await settle(srv)
            with pytest.raises(error) as info:
                await follow(world, srv.address)
            assert "evidence" in str(info.value)

    asyncio.run(run())
    folders = list((world.copy / "evidence").iterdir())
    assert len(folders) == 1
    notes = sorted(folders[0].glob("checkpoint-*.txt"))
    for note in notes:  # each one verifies under the collector's key alone
        cpmod.open_note(note.read_bytes(), [world.keys.collector.public], origin=ORIGIN)
    assert (folders[0] / "README.txt").read_text().startswith(error.reason)
    # The copy was not touched by what failed: it still verifies.
    assert run_verify(world) <= {"split_view", "checkpoint_shrank"}


def test_subscribe_cli_exits_non_zero_and_names_the_split_view(tmp_path: Path) -> None:
    world = make_world(tmp_path)

    async def run() -> None:
        await synced_copy(world)
        rewrite_history(world.ledger, world)
        async with audit_server(world.tmp, world.keys, ledger=world.ledger) as srv:
            await settle(srv)
            args = [
                "audit", "subscribe", "--collector", srv.address,
                "--key", str(world.keys.auditor_key), "--out", str(world.copy),
                "--insecure-plaintext", *world.keys.cli_trust_args(),
            ]  # fmt: skip
            res = await asyncio.to_thread(CliRunner().invoke, cli, args)
            assert res.exit_code == 1
            assert "split_view:" in res.output

    asyncio.run(run())


def test_a_log_that_freezes_while_followed_is_stale(tmp_path: Path) -> None:
    world = make_world(tmp_path)

    async def run() -> None:
        async with audit_server(
            world.tmp, world.keys, ledger=world.ledger, interval=3600, min_interval=3600
        ) as srv:
            srv.writer.append(reports(world, 2))
            store = LocalStore(world.copy)
            try:
                interceptors = client_interceptors(world.keys.auditor)
                async with grpc.aio.insecure_channel(srv.address, interceptors=interceptors) as ch:
                    follower = Follower(audit_pb2_grpc.AuditStub(ch), store, world.keys.trust())
                    options = FollowOptions(once=False, max_age_seconds=0.5, max_retries=0)
                    with pytest.raises(StaleCheckpointError, match="may be frozen"):
                        await asyncio.wait_for(follower.run(options), 20)
            finally:
                store.close()

    asyncio.run(run())


def test_a_frozen_log_is_stale(tmp_path: Path) -> None:
    world = make_world(tmp_path)

    async def run() -> None:
        async with audit_server(
            world.tmp, world.keys, ledger=world.ledger, interval=3600, min_interval=3600
        ) as srv:
            srv.writer.append(reports(world, 2))
            await asyncio.sleep(0.3)  # no fresh checkpoint comes: the log is frozen
            with pytest.raises(StaleCheckpointError, match="may be frozen"):
                await follow(world, srv.address, max_age_seconds=0.2)

    asyncio.run(run())


# --- family 3: a collector whose stream contradicts what it signed --------------------


class LyingAudit(audit_pb2_grpc.AuditServicer):
    """An Audit service over a fixed log that lies in the stream, as configured."""

    def __init__(self, key: PrivateKey, entries: list[bytes]) -> None:
        self.key = key
        self.entries = entries
        self.tree = merkle.MemoryTree([merkle.leaf_hash(d) for d in entries])
        self.size = len(entries)
        self.skip: int | None = None
        self.substitute: dict[int, bytes] = {}
        self.withhold_tail = 0
        self.fail_next: grpc.StatusCode | None = None

    def note(self) -> bytes:
        cp = cpmod.Checkpoint(ORIGIN, self.size, self.tree.root(self.size), time.time_ns())
        return cpmod.sign(cp, self.key).note

    async def GetCheckpoint(self, request: object, context: object) -> audit_pb2.Checkpoint:
        return audit_pb2.Checkpoint(note=self.note())

    async def GetConsistencyProof(
        self, request: audit_pb2.ConsistencyProofRequest, context: object
    ) -> audit_pb2.Proof:
        proof = merkle.consistency_proof(request.old_size, request.new_size, self.tree.subtree)
        return audit_pb2.Proof(hashes=proof)

    async def Subscribe(
        self, request: audit_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[audit_pb2.SubscribeResponse]:
        if self.fail_next is not None:
            code, self.fail_next = self.fail_next, None
            await context.abort(code, "subscriber fell behind; reconnect")
        for i in range(request.from_index, self.size - self.withhold_tail):
            if i == self.skip:
                continue
            data = self.substitute.get(i, self.entries[i])
            yield audit_pb2.SubscribeResponse(entry=audit_pb2.LogEntry(index=i, data=data))
        yield audit_pb2.SubscribeResponse(checkpoint=audit_pb2.Checkpoint(note=self.note()))


def skip_one(liar: LyingAudit, world: World) -> None:
    liar.skip = 15


def other_bytes(liar: LyingAudit, world: World) -> None:
    liar.substitute[15] = world.a.report()


def withhold(liar: LyingAudit, world: World) -> None:
    liar.withhold_tail = 2


LIES = [
    ("an entry skipped", skip_one, DroppedEntryError, "where 15 was next"),
    ("other bytes than logged", other_bytes, RewrittenEntryError, "other bytes than it logged"),
    ("entries withheld", withhold, DroppedEntryError, "did not send"),
]


def test_a_dropped_stream_is_resumed(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    entries = reports(world, 5)

    async def run() -> None:
        liar = LyingAudit(world.keys.collector, entries)
        liar.fail_next = grpc.StatusCode.RESOURCE_EXHAUSTED
        server = grpc.aio.server()
        audit_pb2_grpc.add_AuditServicer_to_server(liar, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            store = LocalStore(world.copy)
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                    follower = Follower(audit_pb2_grpc.AuditStub(ch), store, world.keys.trust())
                    options = FollowOptions(max_retries=1, retry_backoff_seconds=0.01)
                    result = await follower.run(options)
                assert result.entries_added == 10
                assert liar.fail_next is None
            finally:
                store.close()
        finally:
            await server.stop(0)

    asyncio.run(run())


@pytest.mark.parametrize(("lie", "error", "match"), [c[1:] for c in LIES], ids=[c[0] for c in LIES])
def test_subscribe_names_a_lying_stream(
    tmp_path: Path,
    lie: Callable[[LyingAudit, World], None],
    error: type[Error],
    match: str,
) -> None:
    world = make_world(tmp_path)
    entries = reports(world, 10)

    async def run() -> None:
        liar = LyingAudit(world.keys.collector, entries)
        server = grpc.aio.server()
        audit_pb2_grpc.add_AuditServicer_to_server(liar, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            liar.size = 10
            await follow(world, f"127.0.0.1:{port}")  # honest so far
            liar.size = 20
            lie(liar, world)
            with pytest.raises(error, match=match):
                await follow(world, f"127.0.0.1:{port}")
        finally:
            await server.stop(0)

    asyncio.run(run())
    # Nothing of the lying round was stored.
    store = LocalStore(world.copy, create=False)
    assert store.size == 10
    store.close()


def test_a_report_missing_from_a_node_chain_is_named_and_the_copy_kept(tmp_path: Path) -> None:
    world = make_world(tmp_path)

    async def run() -> None:
        async with audit_server(world.tmp, world.keys, ledger=world.ledger) as srv:
            srv.writer.append(reports(world, 3))
            world.a.report()  # sequence 4 of node-a never reaches the log
            srv.writer.append(reports(world, 2))
            await settle(srv)
            with pytest.raises(DroppedEntryError, match="sequence 5 follows 3"):
                await follow(world, srv.address)

    asyncio.run(run())
    # The copy mirrors the log as signed (10 entries), and verify names the gap again.
    store = LocalStore(world.copy, create=False)
    assert store.size == 10
    store.close()
    assert run_verify(world) == {"dropped_entry"}
