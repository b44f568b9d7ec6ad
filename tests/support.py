"""Shared test helpers: keys, enrolled nodes, signed reports, a live collector.

Everything here builds real objects (real keys, real SQLite files, a real
gRPC server on 127.0.0.1:0); nothing of ours is replaced.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc

from collector.config import CollectorConfig
from collector.nodes.registry import enroll
from collector.server import Collector, create_server
from protos import dsse
from protos.computewatch.v1 import telemetry_pb2, telemetry_pb2_grpc
from protos.keys import PrivateKey, write_private_key

ZERO = bytes(32)


def gpu(
    index: int,
    *,
    product: str = "NVIDIA H100 80GB HBM3",
    util: float | None = 90.0,
    tensor: float | None = None,
    job: str | None = "job-1",
    pid: int = 4242,
) -> telemetry_pb2.GpuSample:
    g = telemetry_pb2.GpuSample(
        uuid=f"GPU-{index:04d}-{product[-4:]}",
        index=index,
        product_name=product,
        health=telemetry_pb2.GPU_HEALTH_OK,
        processes_known=True,
        compute_mode=telemetry_pb2.COMPUTE_MODE_DEFAULT,
    )
    if util is not None:
        g.utilization_gpu_percent = util
    if tensor is not None:
        g.tensor_activity_percent = tensor
    if job is not None:
        g.processes.add(pid=pid, job_id=job, attribution="slurm")
    return g


@dataclass
class Node:
    """A node with its key and chain state, that seals reports like an agent."""

    node_id: str
    key: PrivateKey
    sequence: int = 0
    previous: bytes = ZERO
    sent: list[bytes] = field(default_factory=list)

    def report(
        self,
        gpus: Sequence[telemetry_pb2.GpuSample] = (),
        *,
        sequence: int | None = None,
        previous: bytes | None = None,
        interval: float = 1.0,
        sample_ns: int | None = None,
    ) -> telemetry_pb2.NodeReport:
        return telemetry_pb2.NodeReport(
            node_id=self.node_id,
            boot_id="boot-1",
            sequence=self.sequence + 1 if sequence is None else sequence,
            previous_digest=self.previous if previous is None else previous,
            sample_unix_nanos=time.time_ns() if sample_ns is None else sample_ns,
            interval_seconds=interval,
            gpus=list(gpus),
            agent_version="test",
            nvml_status=telemetry_pb2.NVML_STATUS_OK,
        )

    def seal(self, report: telemetry_pb2.NodeReport, *, advance: bool = True) -> bytes:
        data = dsse.seal(report, self.key)
        if advance:
            self.sequence = report.sequence
            self.previous = dsse.digest(data)
            self.sent.append(data)
        return data

    def next(self, gpus: Sequence[telemetry_pb2.GpuSample] = (), **kw: object) -> bytes:
        return self.seal(self.report(gpus, **kw))  # type: ignore[arg-type]


def new_key(path: Path) -> PrivateKey:
    key = PrivateKey.generate()
    write_private_key(key, path)
    return key


def collector_config(tmp: Path, **overrides: object) -> CollectorConfig:
    key_path = tmp / "collector.key"
    if not key_path.exists():
        new_key(key_path)
    base = CollectorConfig(
        ledger=tmp / "ledger.db",
        key=key_path,
        listen="127.0.0.1:0",
        tick_seconds=0.05,
        checkpoint_interval_seconds=0.5,
        # Where TLS and tokens are not the point, tests opt out explicitly
        # (the collector logs both loudly); tests/tls_support.py provides TLS.
        insecure_plaintext=True,
        require_auth=False,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def enroll_nodes(ledger: Path, names: Sequence[str]) -> list[Node]:
    nodes = []
    for name in names:
        key = PrivateKey.generate()
        enroll(ledger, name, key.public)
        nodes.append(Node(name, key))
    return nodes


@asynccontextmanager
async def running_collector(config: CollectorConfig) -> AsyncIterator[Collector]:
    service, _ = await create_server(config)
    try:
        yield service
    finally:
        await service.stop(0)


def stream_proof(node: Node, nonce: bytes) -> bytes:
    """What an agent answers a stream's challenge with (``collector.telemetry.binding``)."""
    return dsse.seal(telemetry_pb2.StreamProof(node_id=node.node_id, nonce=nonce), node.key)


class StreamClient:
    """A raw Telemetry.Stream: send bytes, read what comes back. ``receive``
    skips the collector's challenge (kept in ``nonce``); ``prove`` answers it."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.nonce: bytes | None = None
        self.channel = (
            grpc.aio.insecure_channel(address)
            if credentials is None
            else grpc.aio.secure_channel(address, credentials)
        )
        self.stub = telemetry_pb2_grpc.TelemetryStub(self.channel)
        self._queue: asyncio.Queue[telemetry_pb2.AgentMessage | None] = asyncio.Queue()
        self.call = self.stub.Stream(self._requests())

    async def _requests(self) -> AsyncIterator[telemetry_pb2.AgentMessage]:
        while True:
            msg = await self._queue.get()
            if msg is None:
                return
            yield msg

    async def send(self, envelope: bytes) -> None:
        await self._queue.put(telemetry_pb2.AgentMessage(envelope=envelope))

    async def send_batch(self, envelopes: Sequence[bytes]) -> None:
        """Several envelopes in one message, as an agent sends its backlog."""
        await self._queue.put(
            telemetry_pb2.AgentMessage(envelope=envelopes[0], envelopes=list(envelopes[1:]))
        )

    async def send_proof(self, proof: bytes) -> None:
        await self._queue.put(telemetry_pb2.AgentMessage(proof=proof))

    async def prove(self, node: Node, timeout: float = 10.0) -> None:
        """Bind this stream to ``node`` by signing its challenge (the first message)."""
        if self.nonce is None:
            msg = await self.receive_raw(timeout)
            assert msg.HasField("challenge"), f"expected a challenge first, got {msg}"
            self.nonce = msg.challenge.nonce
        await self.send_proof(stream_proof(node, self.nonce))

    async def receive_raw(self, timeout: float = 10.0) -> telemetry_pb2.CollectorMessage:
        msg = await asyncio.wait_for(self.call.read(), timeout)
        assert msg is not grpc.aio.EOF, "stream ended"
        assert isinstance(msg, telemetry_pb2.CollectorMessage)
        return msg

    async def receive(self, timeout: float = 10.0) -> telemetry_pb2.CollectorMessage:
        msg = await self.receive_raw(timeout)
        if msg.HasField("challenge"):  # once, first on every stream
            self.nonce = msg.challenge.nonce
            msg = await self.receive_raw(timeout)
        return msg

    async def ack_for(self, sequence: int, timeout: float = 10.0) -> telemetry_pb2.Ack:
        """Read until an ack covering ``sequence`` (acks are cumulative)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            msg = await self.receive(max(remaining, 0.01))
            if msg.HasField("ack") and msg.ack.sequence >= sequence:
                return msg.ack

    async def close(self) -> None:
        await self._queue.put(None)
        await self.channel.close()
