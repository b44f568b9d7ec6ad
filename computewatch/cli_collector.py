"""``computewatch collector serve`` and ``computewatch nodes``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from computewatch.cliledger import ledger_options
from computewatch.clitools import translate_errors
from protos import keys as keymod

if TYPE_CHECKING:
    from collector.store.sql import Location

log = logging.getLogger(__name__)


@click.group()
def collector() -> None:
    """Run the collector."""


def _env(name: str) -> str:
    return f"COMPUTEWATCH_COLLECTOR_{name.upper()}"


def _default(key: str) -> str:
    """`` [default: X]`` from CollectorConfig, for --help (the option itself has
    no default, so that a value from the config file is not overridden)."""
    import dataclasses

    from collector.config import CollectorConfig

    for field in dataclasses.fields(CollectorConfig):
        if field.name == key and field.default is None:
            return " [default: none]"
        if field.name == key and field.default not in (dataclasses.MISSING, ""):
            value = field.default
            shown = (", ".join(map(str, value)) or "none") if isinstance(value, tuple) else value
            return f" [default: {shown}]"
    return " [required: flag, variable or --config]"


_PATH = click.Path(dir_okay=False, path_type=Path)
# (flag, config key, click type, repeatable, help)
_SERVE_OPTIONS: list[tuple[str, str, object, bool, str]] = [
    (
        "--ledger",
        "ledger",
        str,
        False,
        "SQLite ledger file, or a postgresql:// URL (collectors in high availability).",
    ),
    (
        "--ledger-url-file",
        "ledger_url_file",
        _PATH,
        False,
        "File holding the PostgreSQL URL (a secret mount); wins over --ledger.",
    ),
    ("--key", "key", _PATH, False, "Collector private key (signs directives and checkpoints)."),
    ("--listen", "listen", str, False, "HOST:PORT for gRPC."),
    ("--metrics-address", "metrics_address", str, False, "Address /metrics listens on."),
    ("--metrics-port", "metrics_port", int, False, "Port for /metrics (0: off)."),
    ("--interval", "interval_seconds", float, False, "Expected agent report interval, seconds."),
    ("--rule-pack", "rule_packs", str, True, "Rule pack name or YAML file (repeatable)."),
    ("--authority-key", "authority_keys", _PATH, True, "Authority public key (repeatable)."),
    ("--auditor-key", "auditor_keys", _PATH, True, "Auditor public key (repeatable)."),
    ("--quorum", "quorum", int, False, "Distinct authority approvals needed to resume."),
    ("--tls-cert", "tls_cert", _PATH, False, "TLS certificate chain (PEM); re-read on change."),
    ("--tls-key", "tls_key", _PATH, False, "TLS private key (PEM)."),
    (
        "--tls-client-ca",
        "tls_client_ca",
        _PATH,
        False,
        "Require client certificates signed by this CA (mutual TLS).",
    ),
    ("--cluster", "cluster", str, False, "Cluster name stamped on directives."),
]


def _serve_options(fn: Callable[..., None]) -> Callable[..., None]:
    """One option per setting, with its environment variable and default shown."""
    for flag, key, type_, multiple, help_ in reversed(_SERVE_OPTIONS):
        fn = click.option(
            flag,
            key,
            type=type_,
            multiple=multiple,
            envvar=_env(key),
            show_envvar=True,
            help=help_ + _default(key),
        )(fn)
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="COMPUTEWATCH_CONFIG",
        show_envvar=True,
        help="TOML file with a [collector] table; flags and variables override it.",
    )(fn)


@collector.command()
@_serve_options
@click.option(
    "--insecure-plaintext",
    is_flag=True,
    default=None,
    envvar=_env("insecure_plaintext"),
    show_envvar=True,
    help="Serve gRPC and /metrics without TLS (loudly logged).",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    default=False,
    envvar=_env("insecure_no_auth"),
    show_envvar=True,
    help="Serve Audit, Status and Control without tokens (loudly logged).",
)
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
@ledger_options(exists=False, envvar=_env("ledger"))
@click.option("--node-id", required=True)
@click.option(
    "--public-key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The node's public key file (from `keys generate`).",
)
@click.option("--replace", is_flag=True, help="Re-key a node that is already enrolled.")
@translate_errors
def enroll(ledger: Location, node_id: str, public_key: Path, replace: bool) -> None:
    """Trust PUBLIC_KEY as NODE_ID's signing key."""
    from collector.nodes.registry import enroll as do_enroll

    node = do_enroll(ledger, node_id, keymod.load_public_key(public_key), replace=replace)
    click.echo(f"enrolled {node.node_id} key {node.key.keyid}")


# Revocations and handovers change an existing ledger: a mistyped path is an
# error, not a new empty ledger created beside the real one.
_LEDGER = ledger_options(exists=True, envvar=_env("ledger"))


@nodes.command()
@_LEDGER
@click.option("--node-id", required=True)
@click.option("--reason", default="", help="Why (logged in the revocation entry).")
@translate_errors
def revoke(ledger: Location, node_id: str, reason: str) -> None:
    """Revoke NODE_ID's key (lost or stolen): refused by ingest from the next
    poll on, and logged; re-enrol the node with a new key afterwards."""
    from collector.nodes.keyadmin import revoke_node

    key = revoke_node(ledger, node_id, reason)
    click.echo(f"revoked {node_id} key {key.keyid}")


@nodes.command("revoke-authority")
@_LEDGER
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The authority's public key file.",
)
@click.option("--reason", default="", help="Why (logged in the revocation entry).")
@translate_errors
def revoke_authority(ledger: Location, key_path: Path, reason: str) -> None:
    """Revoke an authority key: its approvals stop counting at once, and it is logged."""
    from collector.nodes.keyadmin import revoke_authority as do_revoke

    key = keymod.load_public_key(key_path)
    do_revoke(ledger, key, reason)
    click.echo(f"revoked authority key {key.keyid}")


@nodes.command()
@_LEDGER
@click.argument("envelope", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@translate_errors
def handover(ledger: Location, envelope: Path) -> None:
    """Re-key a node with ENVELOPE from `keys handover` (signed by its old and new key)."""
    from collector.nodes.keyadmin import handover as do_handover

    node_id, key = do_handover(ledger, envelope.read_bytes())
    click.echo(f"{node_id} handed over to key {key.keyid}")


@nodes.command("list")
@ledger_options(exists=False, envvar=_env("ledger"))
@translate_errors
def list_cmd(ledger: Location) -> None:
    """List enrolled nodes and their key ids."""
    from collector.nodes.registry import list_nodes

    for node in list_nodes(ledger):
        click.echo(f"{node.node_id}\t{node.key.keyid}")
