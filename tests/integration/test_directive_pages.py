"""Control.ListDirectives is paginated (in log order) and `directives list`
follows the pages: the response no longer grows with every directive."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from computewatch.cli import cli
from protos.computewatch.v1 import control_pb2
from tests.stop_support import Control, authorities, manual_halt, node_scope
from tests.support import collector_config, enroll_nodes, running_collector


def test_directives_come_in_pages_and_the_cli_follows_them(tmp_path: Path) -> None:
    keys, paths = authorities(tmp_path, 1)
    config = collector_config(tmp_path, authority_keys=tuple(paths), quorum=1)
    names = [f"node-{i}" for i in range(5)]
    enroll_nodes(config.ledger, names)
    runner = CliRunner()

    async def scenario() -> None:
        async with running_collector(config) as service:
            control = Control(service.address)
            issued = []
            for name in names:
                reply = await control.halt(manual_halt(keys[0], node_scope(name)))
                issued.extend(reply.directive_ids)
            assert len(issued) == 5
            stub = control.stub
            first = await stub.ListDirectives(control_pb2.ListDirectivesRequest(page_size=2))
            assert len(first.directives) == 2
            assert first.next_page_token
            second = await stub.ListDirectives(
                control_pb2.ListDirectivesRequest(page_size=2, page_token=first.next_page_token)
            )
            assert len(second.directives) == 2
            indices = [d.log_index for d in (*first.directives, *second.directives)]
            assert indices == sorted(set(indices))
            huge = await stub.ListDirectives(control_pb2.ListDirectivesRequest(page_size=10**6))
            assert len(huge.directives) == 5
            assert not huge.next_page_token
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListDirectives(control_pb2.ListDirectivesRequest(page_token="x"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            args = ["directives", "list", "--collector", service.address, "--insecure-plaintext"]
            listed = await asyncio.to_thread(
                runner.invoke, cli, [*args, "--page-size", "2", "--json"]
            )
            assert listed.exit_code == 0, listed.output
            docs = json.loads(listed.stdout)  # the plain-text warning goes to stderr
            assert [d["id"] for d in docs] == issued
            await control.close()

    asyncio.run(scenario())
