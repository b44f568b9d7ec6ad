"""Helpers for the public-record tests: a real ledger file, a real Audit server.

``LogWriter`` writes the ledger's ``log`` table exactly as the contract with
the ledger says (rows and Merkle nodes in one transaction, then
``committed()``), so these tests need nothing but SQLite. ``audit_server``
runs the Audit service on 127.0.0.1:0 with token checks, built from the
same pieces ``collector.services.audit_wiring.start_audit`` gives the collector.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry

from collector.services.audit import AuditLimits
from collector.services.audit_wiring import AuditHandle, auth_interceptor, start_audit
from collector.store.ledger import SCHEMA as LEDGER_SCHEMA
from collector.store.merkle_log import MerkleLog
from computewatch.audit.trust import Trust
from protos import dsse
from protos.auth import client_interceptors
from protos.computewatch.v1 import audit_pb2_grpc, control_pb2, telemetry_pb2
from protos.keys import PrivateKey, write_private_key, write_public_key

ORIGIN = "computewatch.test/log"
ZERO = bytes(32)


class LogWriter:
    """The ledger's side of the contract: rows and tree in one transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.conn.executescript(LEDGER_SCHEMA)  # the real ledger's tables
        self.merkle = MerkleLog(self.conn)

    @property
    def size(self) -> int:
        return self.merkle.size

    def append(self, datas: Sequence[bytes]) -> int:
        """Append envelopes; returns the index of the first."""
        first = self.merkle.size
        now = time.time_ns()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.executemany(
                "INSERT INTO log(idx, data, payload_type, received_unix_nanos) VALUES (?, ?, ?, ?)",
                [
                    (first + i, d, dsse.open_envelope(d).payload_type, now)
                    for i, d in enumerate(datas)
                ],
            )
            self.merkle.append_leaves(self.conn, first, datas)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            self.merkle.rolled_back()
            raise
        self.merkle.committed()
        return first

    def close(self) -> None:
        self.merkle.close()
        self.conn.close()


@dataclass
class Node:
    """Seals chained NodeReports like an agent."""

    node_id: str
    key: PrivateKey = field(default_factory=PrivateKey.generate)
    sequence: int = 0
    previous: bytes = ZERO

    def report(self, *, sequence: int | None = None, previous: bytes | None = None) -> bytes:
        seq = self.sequence + 1 if sequence is None else sequence
        msg = telemetry_pb2.NodeReport(
            node_id=self.node_id,
            boot_id="boot-1",
            sequence=seq,
            previous_digest=self.previous if previous is None else previous,
            sample_unix_nanos=time.time_ns(),
            interval_seconds=1.0,
            agent_version="test",
        )
        data = dsse.seal(msg, self.key)
        self.sequence, self.previous = seq, dsse.digest(data)
        return data


def directive(key: PrivateKey, counter: int) -> bytes:
    msg = control_pb2.Directive(
        id=f"d{counter}", counter=counter, action=control_pb2.ACTION_HALT, reason="test"
    )
    return dsse.seal(msg, key)


@dataclass
class Keys:
    """Every key of a test deployment, with public-key files for the CLI."""

    dir: Path
    collector: PrivateKey = field(default_factory=PrivateKey.generate)
    auditor: PrivateKey = field(default_factory=PrivateKey.generate)
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.dir / "nodes").mkdir(parents=True, exist_ok=True)
        write_public_key(self.collector.public, self.collector_pub)
        write_private_key(self.auditor, self.auditor_key, overwrite=True)
        write_public_key(self.auditor.public, self.dir / "auditor.pub")

    @property
    def collector_pub(self) -> Path:
        return self.dir / "collector.pub"

    @property
    def auditor_key(self) -> Path:
        return self.dir / "auditor.key"

    @property
    def node_dir(self) -> Path:
        return self.dir / "nodes"

    def add_node(self, node_id: str) -> Node:
        node = Node(node_id)
        write_public_key(node.key.public, self.node_dir / f"{node_id}.pub")
        self.nodes.append(node)
        return node

    def trust(self, origin: str | None = ORIGIN) -> Trust:
        return Trust(
            self.collector.public,
            {n.key.keyid: n.key.public for n in self.nodes},
            {},
            origin,
        )

    def cli_trust_args(self) -> list[str]:
        return ["--collector-key", str(self.collector_pub), "--node-keys", str(self.node_dir)]


@dataclass
class AuditServer:
    address: str
    writer: LogWriter
    handle: AuditHandle
    server: grpc.aio.Server
    keys: Keys

    def channel(self, key: PrivateKey | None = None) -> grpc.aio.Channel:
        interceptors = client_interceptors(key or self.keys.auditor)
        return grpc.aio.insecure_channel(self.address, interceptors=interceptors)

    def stub(self, channel: grpc.aio.Channel) -> audit_pb2_grpc.AuditStub:
        return audit_pb2_grpc.AuditStub(channel)


@asynccontextmanager
async def audit_server(
    tmp: Path,
    keys: Keys,
    *,
    ledger: Path | None = None,
    interval: float = 0.2,
    min_interval: float = 0.02,
    limits: AuditLimits | None = None,
    authorities: Sequence[Path] = (),
    registry: CollectorRegistry | None = None,
) -> AsyncIterator[AuditServer]:
    path = ledger or tmp / "ledger.db"
    writer = LogWriter(path)
    interceptor = auth_interceptor([keys.dir / "auditor.pub"], authorities)
    server = grpc.aio.server(interceptors=[interceptor])
    handle = await start_audit(
        server,
        path,
        writer.merkle,
        keys.collector,
        ORIGIN,
        checkpoint_interval_seconds=interval,
        min_checkpoint_interval_seconds=min_interval,
        limits=limits,
        registry=registry,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield AuditServer(f"127.0.0.1:{port}", writer, handle, server, keys)
    finally:
        await server.stop(0)
        await handle.close()
        writer.close()
