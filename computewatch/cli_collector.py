"""``computewatch collector serve`` and ``computewatch nodes``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import click

from computewatch.clitools import translate_errors
from protos import keys as keymod

log = logging.getLogger(__name__)


@click.group()
def collector() -> None:
    """Run the collector."""


def _env(name: str) -> str:
    return f"COMPUTEWATCH_COLLECTOR_{name.upper()}"


@collector.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="COMPUTEWATCH_CONFIG",
    help="TOML file with a [collector] table.",
)
@click.option(
    "--ledger",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=_env("ledger"),
    help="SQLite ledger file.",
)
@click.option(
    "--key",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=_env("key"),
    help="Collector private key (signs directives and checkpoints).",
)
@click.option("--listen", envvar=_env("listen"), help="HOST:PORT for gRPC.")
@click.option(
    "--metrics-port", type=int, envvar=_env("metrics_port"), help="Port for /metrics (0: off)."
)
@click.option("--metrics-address", envvar=_env("metrics_address"))
@click.option(
    "--interval",
    "interval_seconds",
    type=float,
    envvar=_env("interval_seconds"),
    help="Expected agent report interval, seconds.",
)
@click.option(
    "--rule-pack",
    "rule_packs",
    multiple=True,
    envvar=_env("rule_packs"),
    help="Rule pack name or YAML file (repeatable).",
)
@click.option(
    "--authority-key",
    "authority_keys",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=_env("authority_keys"),
    help="Authority public key (repeatable).",
)
@click.option(
    "--auditor-key",
    "auditor_keys",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=_env("auditor_keys"),
    help="Auditor public key (repeatable).",
)
@click.option(
    "--quorum",
    type=int,
    envvar=_env("quorum"),
    help="Distinct authority approvals needed to resume.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=_env("tls_cert"),
    help="TLS certificate chain (PEM); re-read when it changes.",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=_env("tls_key"),
    help="TLS private key (PEM).",
)
@click.option(
    "--tls-client-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=_env("tls_client_ca"),
    help="Require client certificates signed by this CA (mutual TLS).",
)
@click.option(
    "--insecure-plaintext",
    is_flag=True,
    default=None,
    envvar=_env("insecure_plaintext"),
    help="Serve gRPC and /metrics without TLS (loudly logged).",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    default=False,
    envvar=_env("insecure_no_auth"),
    help="Serve Audit, Status and Control without tokens (loudly logged).",
)
@click.option("--cluster", envvar=_env("cluster"), help="Cluster name stamped on directives.")
@translate_errors
def serve(config_file: Path | None, insecure_no_auth: bool, **flags: object) -> None:
    """Serve Telemetry, Status, Control and Audit until SIGINT/SIGTERM."""
    from collector.config import load_collector_config

    overrides = {k: (v or None) if isinstance(v, tuple) else v for k, v in flags.items()}
    overrides["insecure_plaintext"] = overrides["insecure_plaintext"] or None
    if insecure_no_auth:
        overrides["require_auth"] = False
    config = load_collector_config(config_file, overrides)
    asyncio.run(_serve(config))


async def _serve(config: object) -> None:
    from collector.config import CollectorConfig
    from collector.runtime import tune_gc
    from collector.server import create_server

    assert isinstance(config, CollectorConfig)
    service, _ = await create_server(config)
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    click.echo(f"collector listening on {service.address}", err=True)
    await stop.wait()
    log.info("shutting down")
    await service.stop()


@click.group()
def nodes() -> None:
    """Enrol nodes and list them."""


@nodes.command()
@click.option(
    "--ledger",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=_env("ledger"),
)
@click.option("--node-id", required=True)
@click.option(
    "--public-key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The node's public key file (from `keys generate`).",
)
@click.option("--replace", is_flag=True, help="Re-key a node that is already enrolled.")
@translate_errors
def enroll(ledger: Path, node_id: str, public_key: Path, replace: bool) -> None:
    """Trust PUBLIC_KEY as NODE_ID's signing key."""
    from collector.registry import enroll as do_enroll

    node = do_enroll(ledger, node_id, keymod.load_public_key(public_key), replace=replace)
    click.echo(f"enrolled {node.node_id} key {node.key.keyid}")


@nodes.command("list")
@click.option(
    "--ledger",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=_env("ledger"),
)
@translate_errors
def list_cmd(ledger: Path) -> None:
    """List enrolled nodes and their key ids."""
    from collector.registry import list_nodes

    for node in list_nodes(ledger):
        click.echo(f"{node.node_id}\t{node.key.keyid}")
