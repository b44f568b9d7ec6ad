"""Signed-token access to the read API: who gets in, who is refused, and why."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from collector.services.auth import AuthInterceptor, AuthPolicy
from protos import auth as authmod
from protos.computewatch.v1 import audit_pb2, audit_pb2_grpc
from protos.errors import AuthError
from protos.keys import PrivateKey, write_public_key
from tests.integration.audit_support import Keys, audit_server

CHECKPOINT = "/computewatch.v1.Audit/GetCheckpoint"
HALT = "/computewatch.v1.Control/SubmitManualHalt"


def _raw(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(
        method,
        request_serializer=audit_pb2.GetCheckpointRequest.SerializeToString,
        response_deserializer=audit_pb2.Checkpoint.FromString,
    )


async def _code(channel: grpc.aio.Channel, method: str, metadata: Any = None) -> grpc.StatusCode:
    try:
        await _raw(channel, method)(audit_pb2.GetCheckpointRequest(), metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_tokens_over_grpc(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    node = keys.add_node("node-a")
    authority = PrivateKey.generate()
    write_public_key(authority.public, tmp_path / "authority.pub")

    async def run() -> None:
        async with audit_server(tmp_path, keys, authorities=[tmp_path / "authority.pub"]) as srv:
            async with grpc.aio.insecure_channel(srv.address) as bare:
                assert await _code(bare, CHECKPOINT) == grpc.StatusCode.UNAUTHENTICATED
                token = authmod.call_metadata(keys.auditor, CHECKPOINT)
                assert await _code(bare, CHECKPOINT, token) == grpc.StatusCode.OK
                # The same token again: the nonce was used.
                assert await _code(bare, CHECKPOINT, token) == grpc.StatusCode.UNAUTHENTICATED
                # A token for another method does not carry over.
                other = authmod.call_metadata(keys.auditor, "/computewatch.v1.Audit/GetEntries")
                assert await _code(bare, CHECKPOINT, other) == grpc.StatusCode.UNAUTHENTICATED
                garbage = (("authorization", "Bearer abc"),)
                assert await _code(bare, CHECKPOINT, garbage) == grpc.StatusCode.UNAUTHENTICATED
            # A node's key is not an auditor key: it cannot read the stream of other nodes.
            async with srv.channel(node.key) as ch:
                assert await _code(ch, CHECKPOINT) == grpc.StatusCode.UNAUTHENTICATED
                call = audit_pb2_grpc.AuditStub(ch).Subscribe(audit_pb2.SubscribeRequest())
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call.read()
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # An auditor reads, never writes.
            async with srv.channel() as ch:
                assert await _code(ch, CHECKPOINT) == grpc.StatusCode.OK
                assert await _code(ch, HALT) == grpc.StatusCode.PERMISSION_DENIED
            # An authority passes the token check for Control (no Control service here).
            async with srv.channel(authority) as ch:
                assert await _code(ch, HALT) == grpc.StatusCode.UNIMPLEMENTED
                assert await _code(ch, CHECKPOINT) == grpc.StatusCode.OK

    asyncio.run(run())


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


S = 1_000_000_000


@pytest.fixture
def checker_parts() -> tuple[AuthInterceptor, PrivateKey, Clock, CollectorRegistry]:
    auditor = PrivateKey.generate()
    clock = Clock(1_700_000_000 * S)
    registry = CollectorRegistry()
    policy = AuthPolicy.from_keys([auditor.public], max_skew_seconds=60, max_nonces=3)
    return AuthInterceptor(policy, clock, registry), auditor, clock, registry


def test_skew_window_and_replay_cache(
    checker_parts: tuple[AuthInterceptor, PrivateKey, Clock, CollectorRegistry],
) -> None:
    interceptor, auditor, clock, registry = checker_parts
    checker = interceptor.checker

    def token(at: int) -> str:
        return authmod.make_token(auditor, CHECKPOINT, now_ns=at)

    checker.check(CHECKPOINT, token(clock.now - 59 * S))
    with pytest.raises(AuthError, match="window is 60 s"):
        checker.check(CHECKPOINT, token(clock.now - 61 * S))
    with pytest.raises(AuthError, match="window is 60 s"):
        checker.check(CHECKPOINT, token(clock.now + 61 * S))
    checker.check(CHECKPOINT, token(clock.now))
    checker.check(CHECKPOINT, token(clock.now))
    with pytest.raises(AuthError, match="too many calls"):
        checker.check(CHECKPOINT, token(clock.now))  # 3 nonces remembered: the cap
    clock.now += 121 * S  # every remembered nonce has expired (2 x skew)
    replayed = token(clock.now)
    checker.check(CHECKPOINT, replayed)
    with pytest.raises(AuthError, match="already used"):
        checker.check(CHECKPOINT, replayed)
    assert checker.rejected == {"skew": 2, "nonce_cache_full": 1, "replay": 1}
    value = registry.get_sample_value(
        "computewatch_collector_auth_rejected_total", {"reason": "skew"}
    )
    assert value == 2
    assert registry.get_sample_value("computewatch_collector_auth_accepted_total") == 4


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (None, "needs an 'authorization' token"),
        ("CW1 abc 1 nonce-nonce-nonce sig", "key id"),
        ("CW1 " + "a" * 64 + " x1 nonce-nonce-nonce c2ln", "timestamp"),
        ("CW1 " + "a" * 64 + " 1 short c2ln", "nonce"),
        ("CW1 " + "a" * 64 + " 1 nonce-nonce-nonce ****", "not base64"),
        ("CW1 " + "a" * 64 + " 1 nonce-nonce-nonce c2ln", "expected 64"),
        ("CW2 x", "expected 'CW1"),
    ],
)
def test_malformed_tokens_are_named(
    checker_parts: tuple[AuthInterceptor, PrivateKey, Clock, CollectorRegistry],
    value: str | None,
    match: str,
) -> None:
    with pytest.raises(AuthError, match=match):
        checker_parts[0].checker.check(CHECKPOINT, value)


def test_public_methods_need_no_token() -> None:
    policy = AuthPolicy.from_keys([])
    assert policy.is_public("/computewatch.v1.Telemetry/Stream")
    assert policy.is_public("/grpc.health.v1.Health/Check")
    assert not policy.is_public("/computewatch.v1.Audit/Subscribe")
    assert not policy.allows({"auditor"}, "/computewatch.v1.Control/SubmitApproval")
    assert policy.allows({"authority"}, "/computewatch.v1.Control/SubmitApproval")
    assert policy.allows({"auditor"}, "/computewatch.v1.Status/GetStatus")
