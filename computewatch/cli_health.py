"""``computewatch collector health``: one grpc.health.v1 check, for probes.

Kubernetes' native gRPC probes speak plain text only, so a collector serving
TLS is probed with this command instead (an ``exec`` probe): it asks the
collector's standard health service about one service name over the same TLS
the collector serves, and exits 0 when that service is SERVING, 1 otherwise
(NOT_SERVING, unknown service, unreachable, timed out).

What each name means on a collector: ``""`` SERVING while the process runs
(liveness); ``computewatch.v1.Status`` on every candidate (readiness);
``computewatch.v1.Telemetry`` and ``computewatch.v1.Control`` only on the
leader (in high availability) or while the ledger can write (single node).

With ``--config`` the address comes from the collector's ``listen`` (a
wildcard host is probed on loopback), plain text from its
``insecure_plaintext``, and the TLS name checked from its own certificate
(``tls_cert``): ``localhost`` when the certificate names it, else its first
DNS name, since a probe dials loopback while certificates name the Service.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from computewatch.clitls import ClientTls, tls_options
from computewatch.clitools import translate_errors
from protos.errors import ConfigError

# A listener on every address is probed on loopback (nothing binds here).
_WILDCARDS = {
    "0.0.0.0": "127.0.0.1",  # noqa: S104
    "::": "::1",
    "[::]": "[::1]",
    "": "127.0.0.1",
}


def probe_address(listen: str) -> str:
    """The address a local probe dials for a collector listening on ``listen``."""
    host, _, port = listen.rpartition(":")
    host = _WILDCARDS.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def certificate_name(cert: Path) -> str | None:
    """The name a loopback probe checks ``cert`` against: ``localhost`` when it
    is one of its names, else its first DNS name; None when it names none."""
    from cryptography import x509

    try:
        leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the collector certificate {cert}: {exc}") from exc
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    names = [n for n in san.get_values_for_type(x509.DNSName) if not n.startswith("*")]
    if "localhost" in names:
        return "localhost"
    return names[0] if names else None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def check(
    address: str,
    service: str,
    tls: ClientTls,
    *,
    server_name: str | None = None,
    timeout: float = 5.0,
) -> tuple[bool, str]:
    """(SERVING?, one line saying what the collector answered)."""
    creds = tls.credentials(address)
    options: list[tuple[str, str]] = []
    if creds is not None and server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    channel = (
        grpc.insecure_channel(address)
        if creds is None
        else grpc.secure_channel(address, creds, options=options)
    )
    shown = service or '""'
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code().name if isinstance(exc, grpc.Call) else "ERROR"
        details = " ".join(((exc.details() if isinstance(exc, grpc.Call) else "") or "").split())
        return False, f"{shown}: {code} at {address}" + (f": {details}" if details else "")
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return answer.status == health_pb2.HealthCheckResponse.SERVING, f"{shown}: {status}"


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="COMPUTEWATCH_CONFIG",
    help="The collector's TOML file: address, TLS and certificate name from it.",
)
@click.option("--address", default=None, help="HOST:PORT to probe (default: from --config).")
@click.option(
    "--service",
    default="",
    show_default=True,
    help='Service name: "" (process up), computewatch.v1.Status (every candidate),'
    " computewatch.v1.Telemetry (the leader).",
)
@click.option(
    "--tls-server-name",
    default=None,
    help="Name to check the certificate against (default: from the collector's tls_cert).",
)
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds.")
@tls_options
@translate_errors
def health(
    config_file: Path | None,
    address: str | None,
    service: str,
    tls_server_name: str | None,
    timeout: float,
    tls: ClientTls,
) -> None:
    """Exit 0 if the collector's SERVICE is SERVING (grpc.health.v1), else 1."""
    if config_file is not None:
        from collector.config import load_collector_config

        config = load_collector_config(config_file)
        address = address or probe_address(config.listen)
        if config.insecure_plaintext:
            tls = ClientTls(plaintext=True)
        elif tls_server_name is None and config.tls_cert is not None:
            host = address.rpartition(":")[0]
            tls_server_name = certificate_name(config.tls_cert) if _is_ip(host) else None
    if address is None:
        raise click.UsageError("give --address or --config")
    ok, line = check(address, service, tls, server_name=tls_server_name, timeout=timeout)
    click.echo(line)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    # ``python -m computewatch.cli_health``: the probe without importing every
    # other command group (what the chart's exec probes run, every few seconds).
    health(prog_name="computewatch collector health")
