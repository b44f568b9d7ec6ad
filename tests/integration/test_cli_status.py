"""`computewatch status` against a real collector that requires signed tokens."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner

from computewatch.cli import cli
from protos.keys import PrivateKey, write_private_key, write_public_key
from tests.support import StreamClient, collector_config, enroll_nodes, gpu, running_collector
from tests.tls_support import make_site


def test_status_table_json_and_refusal_without_a_token(tmp_path: Path) -> None:
    auditor = PrivateKey.generate()
    write_private_key(auditor, tmp_path / "auditor.key")
    write_public_key(auditor.public, tmp_path / "auditor.pub")
    site = make_site(tmp_path / "tls")
    config = collector_config(
        tmp_path,
        require_auth=True,
        auditor_keys=(tmp_path / "auditor.pub",),
        **site.collector(),
    )
    (node,) = enroll_nodes(config.ledger, ["gpu-017"])
    runner = CliRunner()

    async def scenario() -> None:
        async with running_collector(config) as service:
            client = StreamClient(service.address, site.credentials())
            for _ in range(3):
                await client.send(node.next([gpu(0, job="4242"), gpu(1, job="4242")]))
            await client.ack_for(3)
            # Over TLS: the CLI trusts the site's CA.
            base = ["status", "--collector", service.address, "--tls-ca", str(site.ca.cert)]
            key = ["--key", str(tmp_path / "auditor.key")]
            table = await asyncio.to_thread(runner.invoke, cli, [*base, *key])
            assert table.exit_code == 0, table.output
            assert "gpu-017" in table.output
            assert "4242" in table.output
            assert "reports accepted 3" in table.output
            doc = await asyncio.to_thread(runner.invoke, cli, [*base, *key, "--json"])
            assert doc.exit_code == 0, doc.output
            parsed = json.loads(doc.output)
            assert parsed["reports_accepted"] == 3  # a plain number, not proto3's string
            assert {n["state"] for n in parsed["nodes"]} == {"OK"}  # not NODE_STATE_OK
            assert parsed["nodes"][0]["node_id"] == "gpu-017"
            refused = await asyncio.to_thread(runner.invoke, cli, base)
            assert refused.exit_code != 0
            assert "UNAUTHENTICATED" in refused.output
            await client.close()

    asyncio.run(scenario())
