"""Collector start-up: reflection lists our services; a failed start closes
everything it opened; a restart replays the ledger."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from collector.server import create_server
from protos.errors import ConfigError, RuleError
from tests.support import collector_config, running_collector


def _threads(prefix: str) -> int:
    return sum(t.name.startswith(prefix) for t in threading.enumerate())


def test_reflection_lists_every_service(tmp_path: Path) -> None:
    config = collector_config(tmp_path)

    async def scenario() -> set[str]:
        async with (
            running_collector(config) as service,
            grpc.aio.insecure_channel(service.address) as channel,
        ):
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            async for response in call:
                return {s.name for s in response.list_services_response.service}
        return set()

    names = asyncio.run(scenario())
    assert {
        "computewatch.v1.Telemetry",
        "computewatch.v1.Status",
        "computewatch.v1.Control",
        "computewatch.v1.Audit",
        "grpc.health.v1.Health",
    } <= names


def test_a_failed_start_closes_what_it_opened(tmp_path: Path) -> None:
    for name in "abc":
        (tmp_path / name).mkdir()
    first = collector_config(tmp_path / "a")

    async def scenario() -> None:
        async with running_collector(first) as service:
            before = (_threads("ledger-writer"), _threads("verify"))
            taken = collector_config(tmp_path / "b", listen=service.address)
            with pytest.raises(ConfigError, match="cannot listen"):
                await create_server(taken)
            bad_pack = tmp_path / "bad.yaml"
            bad_pack.write_text("pack: x\nrules: [{id: 1}]\n")
            broken = collector_config(tmp_path / "c", rule_packs=(str(bad_pack),))
            with pytest.raises(RuleError):
                await create_server(broken)
            await asyncio.sleep(0.1)
            assert (_threads("ledger-writer"), _threads("verify")) == before

    asyncio.run(scenario())
