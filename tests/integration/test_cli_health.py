"""`computewatch collector health` (the pod probe) against a real collector over TLS."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2

from collector.config import CollectorConfig
from computewatch.cli import cli
from computewatch.cli_health import certificate_name, probe_address
from computewatch.tlsca import Issued
from tests.support import collector_config, running_collector
from tests.tls_support import make_site

SERVICE_NAME = "cw-computewatch-collector.computewatch.svc"
STATUS = "computewatch.v1.Status"


def service_certificate(site_dir: Path) -> Issued:
    """A server certificate as cert-manager issues one for a Service: its DNS
    names only, no loopback (``computewatch tls`` always adds loopback)."""
    ca_cert = x509.load_pem_x509_certificate((site_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((site_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collector")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("*.svc.example.org"), x509.DNSName(SERVICE_NAME)]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    out = Issued(site_dir / "svc.pem", site_dir / "svc.key")
    out.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    out.key.chmod(0o600)
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


def write_config(path: Path, config: CollectorConfig, port: int) -> Path:
    """The collector's TOML as the chart writes it: listening on every address."""
    lines = [
        "[collector]",
        f'ledger = "{config.ledger}"',
        f'key = "{config.key}"',
        f'listen = "0.0.0.0:{port}"',
        "require_auth = false",
    ]
    if config.insecure_plaintext:
        lines.append("insecure_plaintext = true")
    else:
        lines += [f'tls_cert = "{config.tls_cert}"', f'tls_key = "{config.tls_key}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def probe(*args: str) -> Result:
    return CliRunner().invoke(cli, ["collector", "health", *args])


def test_probe_address_dials_loopback_for_a_wildcard_listener() -> None:
    assert probe_address("0.0.0.0:7443") == "127.0.0.1:7443"
    assert probe_address("[::]:7443") == "[::1]:7443"
    assert probe_address("10.1.2.3:7443") == "10.1.2.3:7443"


def test_health_answers_per_service_over_tls(tmp_path: Path) -> None:
    site = make_site(tmp_path / "tls")
    config = collector_config(tmp_path, **site.collector())
    assert certificate_name(site.server.cert) == "localhost"

    async def scenario() -> None:
        async with running_collector(config) as service:
            toml = write_config(tmp_path / "collector.toml", config, service.port)
            base = ["--config", str(toml), "--tls-ca", str(site.ca.cert)]

            async def run(*args: str) -> Result:
                return await asyncio.to_thread(probe, *base, *args)

            for name in ("", "computewatch.v1.Status", "computewatch.v1.Telemetry"):
                ok = await run("--service", name)
                assert ok.exit_code == 0, ok.output
                assert ok.output.endswith(": SERVING\n")
            unknown = await run("--service", "no.such.Service")
            assert unknown.exit_code == 1
            assert "NOT_FOUND" in unknown.output
            # What a standby reports for the leader's services.
            await service.health.set(
                "computewatch.v1.Telemetry", health_pb2.HealthCheckResponse.NOT_SERVING
            )
            standby = await run("--service", "computewatch.v1.Telemetry")
            assert standby.exit_code == 1
            assert "computewatch.v1.Telemetry: NOT_SERVING" in standby.output
            assert (await run("--service", "computewatch.v1.Status")).exit_code == 0
            # TLS is really spoken: without the site's CA the handshake fails.
            untrusted = await asyncio.to_thread(probe, "--config", str(toml))
            assert untrusted.exit_code == 1
            assert "UNAVAILABLE" in untrusted.output
            # The light entry point the chart's probes run: the same command.
            module = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "computewatch.cli_health", *base, "--service", STATUS],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert module.returncode == 0, module.stderr
            assert module.stdout == f"{STATUS}: SERVING\n"
            # An explicit address and no config: the same answer.
            direct = await asyncio.to_thread(
                probe, "--address", service.address, "--tls-ca", str(site.ca.cert)
            )
            assert direct.exit_code == 0, direct.output
        # The collector is gone: the probe fails, it does not hang.
        gone = await asyncio.to_thread(probe, *base, "--timeout", "1")
        assert gone.exit_code == 1

    asyncio.run(scenario())


def test_health_checks_a_service_certificate_that_does_not_name_loopback(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path / "tls")
    issued = service_certificate(tmp_path / "tls")
    assert certificate_name(issued.cert) == SERVICE_NAME  # the wildcard is skipped
    config = collector_config(
        tmp_path, insecure_plaintext=False, tls_cert=issued.cert, tls_key=issued.key
    )

    async def scenario() -> None:
        async with running_collector(config) as service:
            toml = write_config(tmp_path / "collector.toml", config, service.port)
            base = ["--config", str(toml), "--tls-ca", str(site.ca.cert)]
            ok = await asyncio.to_thread(probe, *base, "--service", "computewatch.v1.Status")
            assert ok.exit_code == 0, ok.output
            # Checked against another name, the certificate does not match.
            wrong = await asyncio.to_thread(probe, *base, "--tls-server-name", "other.example.org")
            assert wrong.exit_code == 1, wrong.output

    asyncio.run(scenario())


def test_health_follows_a_plain_text_config(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    assert config.insecure_plaintext

    async def scenario() -> None:
        async with running_collector(config) as service:
            toml = write_config(tmp_path / "collector.toml", config, service.port)
            ok = await asyncio.to_thread(probe, "--config", str(toml))
            assert ok.exit_code == 0, ok.output
            assert ok.output.endswith('"": SERVING\n')

    asyncio.run(scenario())


def test_health_needs_an_address() -> None:
    res = probe("--service", "computewatch.v1.Status")
    assert res.exit_code == 2
    assert "--address or --config" in res.output
