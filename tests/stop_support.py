"""Helpers for stop-protocol tests: authority keys, signed submissions, directives.

Real keys, real envelopes, a real Control stub; nothing of ours is replaced.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from protos import dsse
from protos.auth import client_interceptors
from protos.computewatch.v1 import control_pb2, control_pb2_grpc, telemetry_pb2
from protos.keys import PrivateKey, PublicKey, load_private_key, write_public_key
from tests.support import Node, StreamClient, stream_proof

JOB_HALT_PACK = """
pack: test-stop
version: "1"
description: Test pack.
rules:
  - id: big-job
    description: A job above 1e15 FLOP halts.
    metric: cumulative_flop
    bound: estimate
    scope: job
    comparison: ">"
    threshold: 1e15
    unit: FLOP
    action: halt
  - id: cyber
    description: Cyber-offense score at or above 0.5 halts the lineage.
    metric: capability:cyber-offense
    scope: job
    comparison: ">="
    threshold: 0.5
    unit: score
    lineage: descendants
    action: halt
  - id: busy-cluster
    description: Alert when the cluster is busy.
    metric: achieved_flops
    bound: estimate
    scope: cluster
    comparison: ">"
    threshold: 1
    unit: FLOP/s
    action: alert
"""


def write_pack(tmp: Path, text: str = JOB_HALT_PACK, name: str = "stop.yaml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def authorities(tmp: Path, count: int) -> tuple[list[PrivateKey], list[Path]]:
    """``count`` authority keys and the public key files a collector is configured with."""
    keys, paths = [], []
    for i in range(count):
        key = PrivateKey.generate()
        path = tmp / f"authority-{i}.pub"
        write_public_key(key.public, path)
        keys.append(key)
        paths.append(path)
    return keys, paths


def collector_public(key_path: Path) -> PublicKey:
    return load_private_key(key_path).public


def approval(key: PrivateKey, directive_id: str, *, when_ns: int | None = None) -> bytes:
    return dsse.seal(
        control_pb2.Approval(
            directive_id=directive_id,
            approved_unix_nanos=time.time_ns() if when_ns is None else when_ns,
            authority=key.keyid[:8],
            comment="checked",
        ),
        key,
    )


def manual_halt(
    key: PrivateKey,
    scope: control_pb2.Scope,
    *,
    reason: str = "suspected runaway training",
    when_ns: int | None = None,
    nonce: str | None = None,
) -> bytes:
    return dsse.seal(
        control_pb2.ManualHalt(
            scope=scope,
            reason=reason,
            requested_unix_nanos=time.time_ns() if when_ns is None else when_ns,
            nonce=secrets.token_hex(8) if nonce is None else nonce,
        ),
        key,
    )


def evaluation(
    key: PrivateKey, job_id: str, name: str, score: float, *, when_ns: int | None = None
) -> bytes:
    return dsse.seal(
        control_pb2.Evaluation(
            model_id="model-x",
            job_id=job_id,
            evaluation=name,
            score=score,
            evaluated_unix_nanos=time.time_ns() if when_ns is None else when_ns,
            evaluator="lab",
        ),
        key,
    )


def node_scope(*nodes: str) -> control_pb2.Scope:
    return control_pb2.Scope(kind=control_pb2.SCOPE_KIND_NODE, node_ids=list(nodes))


class Control:
    """A Control client over a real channel; with ``token_key``, every call
    carries a token signed by it (for a collector with ``require_auth``)."""

    def __init__(self, address: str, token_key: PrivateKey | None = None) -> None:
        interceptors = None if token_key is None else client_interceptors(token_key)
        self.channel = grpc.aio.insecure_channel(address, interceptors=interceptors)
        self.stub = control_pb2_grpc.ControlStub(self.channel)

    async def halt(self, envelope: bytes) -> control_pb2.SubmitResponse:
        return await self.stub.SubmitManualHalt(control_pb2.SubmitRequest(envelope=envelope))

    async def approve(self, envelope: bytes) -> control_pb2.SubmitResponse:
        return await self.stub.SubmitApproval(control_pb2.SubmitRequest(envelope=envelope))

    async def evaluate(self, envelope: bytes) -> control_pb2.SubmitResponse:
        return await self.stub.SubmitEvaluation(control_pb2.SubmitRequest(envelope=envelope))

    async def list(self, *, in_force_only: bool = False) -> list[control_pb2.DirectiveRecord]:
        reply = await self.stub.ListDirectives(
            control_pb2.ListDirectivesRequest(in_force_only=in_force_only)
        )
        return list(reply.directives)

    async def close(self) -> None:
        await self.channel.close()


class Link:
    """An agent's stream with a reader task, so waiting with a timeout never
    cancels the call (``StreamClient.receive`` under ``wait_for`` would)."""

    def __init__(self, address: str) -> None:
        self.client = StreamClient(address)
        self._queue: asyncio.Queue[telemetry_pb2.CollectorMessage | None] = asyncio.Queue()
        self._challenge: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._pump())

    async def prove(self, node: Node, timeout: float = 10.0) -> None:
        """Bind the stream to ``node`` (the collector sends it directives from then on)."""
        nonce = await asyncio.wait_for(asyncio.shield(self._challenge), timeout)
        await self.client.send_proof(stream_proof(node, nonce))

    async def _pump(self) -> None:
        try:
            while True:
                msg = await self.client.call.read()
                if msg is grpc.aio.EOF:
                    break
                assert isinstance(msg, telemetry_pb2.CollectorMessage)
                if msg.HasField("challenge"):
                    if not self._challenge.done():
                        self._challenge.set_result(msg.challenge.nonce)
                    continue
                await self._queue.put(msg)
        except grpc.aio.AioRpcError:
            pass
        await self._queue.put(None)

    async def send(self, envelope: bytes) -> None:
        await self.client.send(envelope)

    async def receive(self, timeout: float = 10.0) -> telemetry_pb2.CollectorMessage:
        msg = await asyncio.wait_for(self._queue.get(), timeout)
        assert msg is not None, "stream ended"
        return msg

    async def ack_for(self, sequence: int, timeout: float = 10.0) -> telemetry_pb2.Ack:
        """Read until an ack covering ``sequence``; directives read meanwhile are kept."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        kept: list[telemetry_pb2.CollectorMessage] = []
        try:
            while True:
                msg = await self.receive(max(deadline - loop.time(), 0.01))
                if msg.HasField("ack") and msg.ack.sequence >= sequence:
                    return msg.ack
                if not msg.HasField("ack"):
                    kept.append(msg)
        finally:
            self._requeue(kept)

    def _requeue(self, kept: list[telemetry_pb2.CollectorMessage]) -> None:
        if not kept:
            return
        rest: list[telemetry_pb2.CollectorMessage | None] = []
        while not self._queue.empty():
            rest.append(self._queue.get_nowait())
        for msg in (*kept, *rest):
            self._queue.put_nowait(msg)

    async def close(self) -> None:
        await self.client.close()
        self._task.cancel()


def open_directive(envelope: bytes, collector_key: PublicKey) -> control_pb2.Directive:
    """Verify a directive envelope against the collector key, then parse it."""
    verified = dsse.verify(
        envelope, {collector_key.keyid: collector_key}, expected_type=dsse.DIRECTIVE_TYPE
    )
    return verified.parse(control_pb2.Directive)


async def next_directive(
    client: Link,
    collector_key: PublicKey,
    *,
    actions: Sequence[int] = (
        control_pb2.ACTION_HALT,
        control_pb2.ACTION_RESUME,
        control_pb2.ACTION_THROTTLE,
        control_pb2.ACTION_TERMINATE,
    ),
    timeout: float = 10.0,
) -> control_pb2.Directive:
    """Read the stream until a verified directive with one of ``actions``."""
    for _ in range(10_000):
        msg = await client.receive(timeout)
        if msg.HasField("directive"):
            directive = open_directive(msg.directive, collector_key)
            if directive.action in actions:
                return directive
    raise AssertionError("no directive among 10,000 messages")


async def drain(client: Link, seconds: float) -> list[telemetry_pb2.CollectorMessage]:
    """Every message that arrives within the next ``seconds`` (at most 10,000)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    out: list[telemetry_pb2.CollectorMessage] = []
    while len(out) < 10_000:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            out.append(await client.receive(remaining))
        except TimeoutError:
            break
    return out


def receipt_report_gpus(
    gpus: Sequence[telemetry_pb2.GpuSample], *, prohibited: bool, util: float
) -> list[telemetry_pb2.GpuSample]:
    """Copies of ``gpus`` as an agent that enforced (or not) a halt reports them."""
    out = []
    for g in gpus:
        copy = telemetry_pb2.GpuSample()
        copy.CopyFrom(g)
        copy.utilization_gpu_percent = util
        if prohibited:
            copy.compute_mode = telemetry_pb2.COMPUTE_MODE_PROHIBITED
        out.append(copy)
    return out
