"""Hardened by default: tokens required, TLS on every listener, opt-outs explicit.

Real collectors on loopback with a private CA made in a tmp dir
(``tests/tls_support.py``); nothing of ours is replaced.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import generate_latest

from collector.config import CollectorConfig
from collector.nodes.registry import enroll
from collector.store.ledger import iter_entries
from computewatch.cli import cli
from computewatch.tlsca import issue
from protos import auth as authmod
from protos import dsse
from protos.computewatch.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    control_pb2,
    control_pb2_grpc,
    status_pb2,
    status_pb2_grpc,
)
from protos.errors import ConfigError
from protos.keys import PrivateKey, write_private_key, write_public_key
from tests.agent_support import SimNode, scenario_doc
from tests.support import StreamClient, enroll_nodes, gpu, new_key, running_collector
from tests.tls_support import Site, make_site

STATUS = "/computewatch.v1.Status/GetStatus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def secure_config(tmp: Path, site: Site, **overrides: Any) -> CollectorConfig:
    """The shipped defaults (no opt-out) plus what a site must name."""
    key = tmp / "collector.key"
    if not key.exists():
        new_key(key)
    base: dict[str, Any] = {
        "ledger": tmp / "ledger.db",
        "key": key,
        "listen": "127.0.0.1:0",
        "tick_seconds": 0.05,
        "tls_cert": site.server.cert,
        "tls_key": site.server.key,
    }
    return CollectorConfig(**{**base, **overrides})


def _reports(ledger: Path) -> int:
    """Node reports in the log (which also holds key events such as enrolments)."""
    return sum(e.payload_type == dsse.REPORT_TYPE for e in iter_entries(ledger))


async def _code(call: Any, request: Any, metadata: Any = None) -> grpc.StatusCode:
    try:
        await call(request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_the_defaults_refuse_every_read_without_a_token(tmp_path: Path) -> None:
    site = make_site(tmp_path / "tls")
    auditor = PrivateKey.generate()
    write_public_key(auditor.public, tmp_path / "auditor.pub")
    config = secure_config(tmp_path, site, auditor_keys=(tmp_path / "auditor.pub",))
    assert config.require_auth is True

    async def scenario() -> None:
        async with (
            running_collector(config) as service,
            grpc.aio.secure_channel(service.address, site.credentials()) as channel,
        ):
            status = status_pb2_grpc.StatusStub(channel).GetStatus
            audit = audit_pb2_grpc.AuditStub(channel).GetCheckpoint
            listing = control_pb2_grpc.ControlStub(channel).ListDirectives
            unauthenticated = grpc.StatusCode.UNAUTHENTICATED
            assert await _code(status, status_pb2.StatusRequest()) == unauthenticated
            assert await _code(audit, audit_pb2.GetCheckpointRequest()) == unauthenticated
            assert await _code(listing, control_pb2.ListDirectivesRequest()) == unauthenticated
            # A token by a key nobody configured is refused, not ignored.
            stranger = authmod.call_metadata(PrivateKey.generate(), STATUS)
            assert await _code(status, status_pb2.StatusRequest(), stranger) == unauthenticated
            token = authmod.call_metadata(auditor, STATUS)
            assert await _code(status, status_pb2.StatusRequest(), token) == grpc.StatusCode.OK
            # Two authorization headers: refused, whichever one is valid.
            twice = (*authmod.call_metadata(auditor, STATUS), *token)
            assert await _code(status, status_pb2.StatusRequest(), twice) == unauthenticated
            text = generate_latest(service.metrics_registry).decode()
            assert 'computewatch_collector_auth_rejected_total{reason="duplicate"} 1.0' in text
            assert 'computewatch_collector_auth_rejected_total{reason="unknown_key"} 1.0' in text

    asyncio.run(scenario())


def test_unsafe_configurations_are_refused(tmp_path: Path) -> None:
    site = make_site(tmp_path / "tls")
    (tmp_path / "auditor.pub").write_bytes(b"unused")
    with pytest.raises(ConfigError, match="require_auth = false with auditor_keys"):
        secure_config(tmp_path, site, require_auth=False, auditor_keys=(tmp_path / "auditor.pub",))
    with pytest.raises(ConfigError, match="no TLS certificate"):
        secure_config(tmp_path, site, tls_cert=None, tls_key=None)
    with pytest.raises(ConfigError, match="choose one"):
        secure_config(tmp_path, site, insecure_plaintext=True)
    with pytest.raises(ConfigError, match="give both"):
        secure_config(tmp_path, site, tls_key=None)


def test_opting_out_is_loud(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    site = make_site(tmp_path / "tls")
    config = secure_config(
        tmp_path, site, tls_cert=None, tls_key=None, insecure_plaintext=True, require_auth=False
    )

    async def scenario() -> None:
        async with running_collector(config):
            pass

    with caplog.at_level("WARNING"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(line.startswith("INSECURE: require_auth = false") for line in lines), lines
    assert any("INSECURE: the collector" in line and "plain text" in line for line in lines)


def test_a_plaintext_client_gets_nothing_from_a_tls_collector(tmp_path: Path) -> None:
    site = make_site(tmp_path / "tls")
    config = secure_config(tmp_path, site)

    async def scenario() -> None:
        async with (
            running_collector(config) as service,
            grpc.aio.insecure_channel(service.address) as channel,
        ):
            status = status_pb2_grpc.StatusStub(channel).GetStatus
            assert await _code(status, status_pb2.StatusRequest()) == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_mutual_tls_admits_only_agents_with_a_certificate(tmp_path: Path) -> None:
    site = make_site(tmp_path / "tls")
    config = secure_config(tmp_path, site, tls_client_ca=site.ca.cert)
    (node,) = enroll_nodes(config.ledger, ["node-a"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            agent = StreamClient(service.address, site.credentials(client_cert=True))
            await agent.prove(node)
            await agent.send(node.next([gpu(0)]))
            assert (await agent.ack_for(1)).sequence == 1
            await agent.close()
            anonymous = StreamClient(service.address, site.credentials())
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await anonymous.receive()
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            await anonymous.close()
            assert _reports(config.ledger) == 1  # the log also holds node-a's enrolment

    asyncio.run(scenario())


def _served_certificate(port: int, ca: Path) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_a_renewed_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    site = make_site(tmp_path / "tls")
    config = secure_config(tmp_path, site)

    def der(path: Path) -> bytes:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        return cert.public_bytes(Encoding.DER)

    async def scenario() -> None:
        async with running_collector(config) as service:
            first = der(site.server.cert)
            assert await asyncio.to_thread(_served_certificate, service.port, site.ca.cert) == first
            issue(site.ca.cert.parent, "collector", days=2)  # the same paths, a new certificate
            renewed = der(site.server.cert)
            assert renewed != first
            served = await asyncio.to_thread(_served_certificate, service.port, site.ca.cert)
            assert served == renewed
            text = generate_latest(service.metrics_registry).decode()
            assert 'computewatch_collector_tls_reloads_total{result="ok"} 1.0' in text
            # A broken file keeps the certificate that works, and is counted.
            site.server.cert.write_text("not a certificate\n")
            served = await asyncio.to_thread(_served_certificate, service.port, site.ca.cert)
            assert served == renewed
            text = generate_latest(service.metrics_registry).decode()
            assert 'computewatch_collector_tls_reloads_total{result="error"} 1.0' in text

    asyncio.run(scenario())


def _get(url: str, ctx: ssl.SSLContext | None) -> bytes:
    with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
        return bytes(resp.read())


def test_metrics_are_served_over_tls(tmp_path: Path) -> None:
    site = make_site(tmp_path / "tls")
    port = free_port()
    config = secure_config(tmp_path, site, metrics_port=port)

    async def scenario() -> None:
        async with running_collector(config):
            ctx = ssl.create_default_context(cafile=str(site.ca.cert))
            url = f"https://127.0.0.1:{port}/metrics"
            body = await asyncio.to_thread(_get, url, ctx)
            assert b"computewatch_collector_tls_reloads_total" in body
            with pytest.raises((urllib.error.URLError, ConnectionError)):
                await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics", None)

    asyncio.run(scenario())


def test_an_authority_cli_presents_its_certificate_under_mutual_tls(tmp_path: Path) -> None:
    site = make_site(tmp_path / "tls")
    auditor = PrivateKey.generate()
    write_private_key(auditor, tmp_path / "auditor.key")
    write_public_key(auditor.public, tmp_path / "auditor.pub")
    config = secure_config(
        tmp_path, site, tls_client_ca=site.ca.cert, auditor_keys=(tmp_path / "auditor.pub",)
    )
    runner = CliRunner()

    async def scenario() -> None:
        async with running_collector(config) as service:
            base = [
                "status", "--collector", service.address, "--json",
                "--key", str(tmp_path / "auditor.key"), "--tls-ca", str(site.ca.cert),
            ]  # fmt: skip
            cert = ["--tls-cert", str(site.client.cert), "--tls-key", str(site.client.key)]
            ok = await asyncio.to_thread(runner.invoke, cli, [*base, *cert])
            assert ok.exit_code == 0, ok.output
            assert int(json.loads(ok.stdout)["generated_unix_nanos"]) > 0
            refused = await asyncio.to_thread(runner.invoke, cli, base)
            assert refused.exit_code == 1
            assert "UNAVAILABLE" in refused.output

    asyncio.run(scenario())


async def _until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_a_real_agent_under_mutual_tls_uses_a_renewed_certificate_without_a_restart(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path / "tls")
    stranger = make_site(tmp_path / "stranger")  # a CA the collector does not trust
    config = secure_config(tmp_path, site, tls_client_ca=site.ca.cert)
    sim = SimNode("node-a", tmp_path, scenario_doc(["node-a"]))
    enroll(config.ledger, sim.node_id, sim.key.public)
    cert, key = tmp_path / "agent.pem", tmp_path / "agent.key"
    shutil.copyfile(stranger.client.cert, cert)
    shutil.copyfile(stranger.client.key, key)

    async def scenario() -> None:
        async with running_collector(config) as service:
            agent = sim.agent(
                service.address,
                insecure_plaintext=False,
                tls_ca=site.ca.cert,
                tls_cert=cert,
                tls_key=key,
            )
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            await _until(lambda: agent.stats.stream_reconnects >= 2)
            assert agent.stats.acked_sequence == 0  # refused at the handshake
            assert _reports(config.ledger) == 0  # the log holds only node-a's enrolment
            shutil.copyfile(site.client.cert, cert)  # renewed in place
            shutil.copyfile(site.client.key, key)
            await _until(lambda: agent.stats.acked_sequence >= 3)
            await _until(lambda: bool(list(service.sessions.for_node("node-a"))))
            stop.set()
            await asyncio.wait_for(task, 15)

    asyncio.run(scenario())
