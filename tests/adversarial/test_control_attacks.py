"""Every way a Control submission can be bad, over real gRPC: a specific status,
a counter labelled by the reason, a log line, and no directive issued."""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client import generate_latest

from protos import dsse
from protos.computewatch.v1 import control_pb2, envelope_pb2
from protos.keys import PrivateKey
from tests.stop_support import (
    Control,
    Link,
    approval,
    authorities,
    evaluation,
    manual_halt,
    node_scope,
)
from tests.support import Node, collector_config, enroll_nodes, gpu, running_collector


@dataclass
class World:
    """What the setup created: three authorities, one halt approved once."""

    keys: list[PrivateKey]
    node: Node
    halt_id: str
    halt_envelope: bytes
    evaluation_envelope: bytes
    evaluated_ns: int


Attack = Callable[[World], tuple[str, bytes]]


def flip_signature(data: bytes) -> bytes:
    env = envelope_pb2.Envelope.FromString(data)
    sig = bytearray(env.signatures[0].sig)
    sig[5] ^= 0x40
    env.signatures[0].sig = bytes(sig)
    return env.SerializeToString()


def forged_approval(w: World) -> tuple[str, bytes]:
    return "approval", flip_signature(approval(w.keys[1], w.halt_id))


def approval_retargeted(w: World) -> tuple[str, bytes]:
    # A real approval of one directive, its payload edited to name another.
    env = envelope_pb2.Envelope.FromString(approval(w.keys[1], "another-directive"))
    inner = control_pb2.Approval.FromString(env.payload)
    inner.directive_id = w.halt_id
    env.payload = inner.SerializeToString()
    return "approval", env.SerializeToString()


def same_key_twice(w: World) -> tuple[str, bytes]:
    # keys[0] approved in the setup; it is also configured under a second file name.
    return "approval", approval(w.keys[0], w.halt_id)


def non_authority_approval(w: World) -> tuple[str, bytes]:
    return "approval", approval(w.node.key, w.halt_id)


def unknown_directive_approval(w: World) -> tuple[str, bytes]:
    return "approval", approval(w.keys[1], "0" * 32)


def approval_from_the_future(w: World) -> tuple[str, bytes]:
    return "approval", approval(w.keys[1], w.halt_id, when_ns=time.time_ns() + 3600 * 10**9)


def replayed_manual_halt(w: World) -> tuple[str, bytes]:
    return "manual_halt", w.halt_envelope


def stale_manual_halt(w: World) -> tuple[str, bytes]:
    old = time.time_ns() - 3600 * 10**9
    return "manual_halt", manual_halt(w.keys[1], node_scope("node-a"), when_ns=old)


def non_authority_manual_halt(w: World) -> tuple[str, bytes]:
    return "manual_halt", manual_halt(w.node.key, node_scope("node-a"))


def manual_halt_unknown_node(w: World) -> tuple[str, bytes]:
    return "manual_halt", manual_halt(w.keys[1], node_scope("node-zz"))


def manual_halt_without_scope(w: World) -> tuple[str, bytes]:
    return "manual_halt", manual_halt(w.keys[1], control_pb2.Scope())


def approval_sent_as_manual_halt(w: World) -> tuple[str, bytes]:
    return "manual_halt", approval(w.keys[1], w.halt_id)


def unsigned_envelope(w: World) -> tuple[str, bytes]:
    env = envelope_pb2.Envelope.FromString(approval(w.keys[1], w.halt_id))
    del env.signatures[:]
    return "approval", env.SerializeToString()


def garbage_approval(w: World) -> tuple[str, bytes]:
    return "approval", b"\xff\xfe not protobuf \x00"


def garbage_manual_halt(w: World) -> tuple[str, bytes]:
    return "manual_halt", b"\x0a\xff\xff\xff\xff\x0f"


def garbage_evaluation(w: World) -> tuple[str, bytes]:
    return "evaluation", b"\x12"


def oversize_approval(w: World) -> tuple[str, bytes]:
    env = control_pb2.Approval(directive_id=w.halt_id, comment="x" * 70_000)
    return "approval", dsse.seal(env, w.keys[1])


def non_authority_evaluation(w: World) -> tuple[str, bytes]:
    return "evaluation", evaluation(w.node.key, "job-1", "cyber-offense", 0.9)


def replayed_evaluation(w: World) -> tuple[str, bytes]:
    return "evaluation", w.evaluation_envelope


def older_evaluation(w: World) -> tuple[str, bytes]:
    # A validly signed but older result must not roll a score back.
    return "evaluation", evaluation(
        w.keys[0], "job-1", "cyber-offense", 0.0, when_ns=w.evaluated_ns - 10**9
    )


def nan_score_evaluation(w: World) -> tuple[str, bytes]:
    return "evaluation", evaluation(w.keys[0], "job-1", "cyber-offense", math.nan)


def bad_evaluation_name(w: World) -> tuple[str, bytes]:
    return "evaluation", evaluation(w.keys[0], "job-1", "Not A Name!", 0.1)


CASES: list[tuple[Attack, grpc.StatusCode, str]] = [
    (forged_approval, grpc.StatusCode.PERMISSION_DENIED, "bad_signature"),
    (approval_retargeted, grpc.StatusCode.PERMISSION_DENIED, "bad_signature"),
    (same_key_twice, grpc.StatusCode.ALREADY_EXISTS, "duplicate_approval"),
    (non_authority_approval, grpc.StatusCode.PERMISSION_DENIED, "unknown_key"),
    (unknown_directive_approval, grpc.StatusCode.NOT_FOUND, "unknown_directive"),
    (approval_from_the_future, grpc.StatusCode.INVALID_ARGUMENT, "stale"),
    (replayed_manual_halt, grpc.StatusCode.ALREADY_EXISTS, "replay"),
    (stale_manual_halt, grpc.StatusCode.INVALID_ARGUMENT, "stale"),
    (non_authority_manual_halt, grpc.StatusCode.PERMISSION_DENIED, "unknown_key"),
    (manual_halt_unknown_node, grpc.StatusCode.INVALID_ARGUMENT, "out_of_scope"),
    (manual_halt_without_scope, grpc.StatusCode.INVALID_ARGUMENT, "out_of_scope"),
    (approval_sent_as_manual_halt, grpc.StatusCode.INVALID_ARGUMENT, "payload_type"),
    (unsigned_envelope, grpc.StatusCode.PERMISSION_DENIED, "bad_signature"),
    (garbage_approval, grpc.StatusCode.INVALID_ARGUMENT, "decode"),
    (garbage_manual_halt, grpc.StatusCode.INVALID_ARGUMENT, "decode"),
    (garbage_evaluation, grpc.StatusCode.INVALID_ARGUMENT, "decode"),
    (oversize_approval, grpc.StatusCode.INVALID_ARGUMENT, "oversize"),
    (non_authority_evaluation, grpc.StatusCode.PERMISSION_DENIED, "unknown_key"),
    (replayed_evaluation, grpc.StatusCode.ALREADY_EXISTS, "replay"),
    (older_evaluation, grpc.StatusCode.FAILED_PRECONDITION, "stale"),
    (nan_score_evaluation, grpc.StatusCode.INVALID_ARGUMENT, "invalid"),
    (bad_evaluation_name, grpc.StatusCode.INVALID_ARGUMENT, "invalid"),
]


def counts(ledger: Path) -> dict[str, int]:
    conn = sqlite3.connect(ledger)
    rows = conn.execute("SELECT payload_type, COUNT(*) FROM log GROUP BY payload_type").fetchall()
    conn.close()
    return dict(rows)


@pytest.mark.parametrize(("attack", "code", "reason"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_submission_is_refused_counted_logged_and_has_no_effect(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    attack: Attack,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    keys, paths = authorities(tmp_path, 3)
    alias = tmp_path / "authority-0-again.pub"
    alias.write_bytes(paths[0].read_bytes())
    config = collector_config(
        tmp_path,
        authority_keys=(*paths, alias),
        quorum=2,
        interval_seconds=60.0,
        max_envelope_bytes=64 * 1024,
    )
    (node,) = enroll_nodes(config.ledger, ["node-a"])
    methods: list[str] = []

    async def scenario() -> None:
        async with running_collector(config) as service:
            link = Link(service.address)
            await link.prove(node)
            await link.send(node.next([gpu(0)]))
            await link.ack_for(1)
            control = Control(service.address)
            halt_env = manual_halt(keys[2], node_scope("node-a"))
            halted = await control.halt(halt_env)
            await control.approve(approval(keys[0], halted.directive_ids[0]))
            evaluated_ns = time.time_ns()
            eval_env = evaluation(keys[0], "job-1", "cyber-offense", 0.1, when_ns=evaluated_ns)
            await control.evaluate(eval_env)
            world = World(keys, node, halted.directive_ids[0], halt_env, eval_env, evaluated_ns)
            before = counts(config.ledger)
            method, envelope = attack(world)
            methods.append(method)
            call = {
                "approval": control.approve,
                "manual_halt": control.halt,
                "evaluation": control.evaluate,
            }[method]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(envelope)
            assert refused.value.code() == code
            assert (refused.value.details() or "").startswith(f"{reason}: ")
            await asyncio.sleep(0.1)
            # Nothing logged for it, no new directive, the halt still in force.
            after = counts(config.ledger)
            assert {k: v for k, v in after.items() if k != dsse.REPORT_TYPE} == {
                k: v for k, v in before.items() if k != dsse.REPORT_TYPE
            }
            in_force = await control.list(in_force_only=True)
            assert len(in_force) == 1
            text = generate_latest(service.metrics_registry).decode()
            assert (
                f'computewatch_control_submissions_total{{method="{method}",result="{reason}"}} 1.0'
                in text
            )
            await control.close()
            await link.close()

    with caplog.at_level(logging.WARNING, logger="collector.stop.control"):
        asyncio.run(scenario())
    assert any(
        r.getMessage().startswith(f"refused {methods[0]} ") and reason in r.getMessage()
        for r in caplog.records
    )
