"""A regulator's workflow with the ``computewatch audit`` CLI against a live Audit service."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner, Result

from computewatch.cli import cli
from protos import checkpoint as cpmod
from tests.integration.audit_support import ORIGIN, AuditServer, Keys, audit_server, directive


async def invoke(*args: str) -> Result:
    # The CLI runs its own event loop: give it a thread, as a separate process would.
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


async def settle(srv: AuditServer) -> None:
    for _ in range(500):
        latest = srv.handle.checkpointer.latest()
        if latest is not None and latest.size == srv.writer.size:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no checkpoint covers the log")


def append_reports(srv: AuditServer, keys: Keys, rounds: int, counter: list[int]) -> int:
    datas = []
    for _ in range(rounds):
        datas.extend(n.report() for n in keys.nodes)
        counter[0] += 1
        datas.append(directive(keys.collector, counter[0]))
    srv.writer.append(datas)
    return len(datas)


def test_subscribe_verify_prove(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    keys.add_node("node-a")
    keys.add_node("node-b")
    out = tmp_path / "copy"
    trust = keys.cli_trust_args()
    counter = [0]

    async def run() -> None:
        async with audit_server(tmp_path, keys) as srv:
            n1 = append_reports(srv, keys, 20, counter)
            await settle(srv)
            conn = [
                "--collector", srv.address, "--key", str(keys.auditor_key), "--insecure-plaintext",
            ]  # fmt: skip
            res = await invoke("audit", "subscribe", *conn, "--out", str(out), *trust, "--once")
            assert res.exit_code == 0, res.output
            assert f"ok: {n1} new entries" in res.stdout

            n2 = append_reports(srv, keys, 7, counter)
            await settle(srv)
            res = await invoke("audit", "subscribe", *conn, "--out", str(out), *trust)
            assert res.exit_code == 0, res.output
            assert f"ok: {n2} new entries" in res.stdout  # resumed where it stopped

            res = await invoke("audit", "verify", str(out), *trust, "--max-age", "60")
            assert res.exit_code == 0, res.output
            assert f"ok: {n1 + n2} entries from 3 signers" in res.stdout

            res = await invoke("audit", "prove", "--index", "4", "--dir", str(out), *trust)
            assert res.exit_code == 0, res.output
            assert "ok: entry 4 (NodeReport, signed by" in res.stdout

            bundle = tmp_path / "proof.json"
            res = await invoke(
                "audit", "prove", "--index", "2", *conn, "--dir", str(out), *trust,
                "--save", str(bundle),
            )  # fmt: skip
            assert res.exit_code == 0, res.output
            assert "ok: entry 2 (Directive, signed by" in res.stdout

        # Offline, with the collector gone: the bundle alone convinces.
        res = await invoke("audit", "prove", "--index", "2", "--bundle", str(bundle), *trust)
        assert res.exit_code == 0, res.output
        doc = json.loads(bundle.read_text())
        doc["index"] = 3
        bundle.write_text(json.dumps(doc))
        res = await invoke("audit", "prove", "--index", "3", "--bundle", str(bundle), *trust)
        assert res.exit_code == 1
        assert "proof:" in res.output

        res = await invoke("audit", "verify", str(out), *trust, "--max-age", "0.001")
        assert res.exit_code == 1
        assert "stale_checkpoint:" in res.output

    asyncio.run(run())


def test_cli_refuses_without_keys_or_copy(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    keys.add_node("node-a")
    res = CliRunner().invoke(cli, ["audit", "verify", str(tmp_path), *keys.cli_trust_args()])
    assert res.exit_code == 1
    assert "no audit.db" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(
        cli, ["audit", "verify", str(tmp_path), "--collector-key", str(keys.collector_pub),
              "--node-keys", str(empty)],
    )  # fmt: skip
    assert res.exit_code == 1
    assert "no *.pub or *.pem" in res.output


def test_verifier_key_is_the_c2sp_form(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    res = CliRunner().invoke(
        cli,
        ["audit", "verifier-key", "--collector-key", str(keys.collector_pub), "--origin", ORIGIN],
    )
    assert res.exit_code == 0, res.output
    verifier = cpmod.parse_verifier_key(res.stdout.strip())
    assert verifier.name == ORIGIN
    assert verifier.key.keyid == keys.collector.keyid
