"""``computewatch tls``: a private CA and certificates for a small site."""

from __future__ import annotations

from pathlib import Path

import click

from computewatch.clitools import translate_errors
from computewatch.tlsca import LEAF_DAYS, init_site, issue

_DIR = click.Path(file_okay=False, path_type=Path)


@click.group()
def tls() -> None:
    """Make a private CA and short-lived TLS certificates (ECDSA P-256)."""


@tls.command()
@click.argument("directory", type=_DIR)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="Name or address agents and clients use for the collector (repeatable;"
    " loopback is always included).",
)
@click.option("--days", type=click.IntRange(min=1), default=LEAF_DAYS, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing CA.")
@translate_errors
def init(directory: Path, hosts: tuple[str, ...], days: int, force: bool) -> None:
    """Write ca.pem/ca.key, collector.pem/.key (server) and client.pem/.key into DIRECTORY."""
    issued = init_site(directory, hosts, days=days, force=force)
    for name, pair in issued.items():
        click.echo(f"{name}: {pair.cert} {pair.key}")


@tls.command("issue")
@click.argument("directory", type=_DIR)
@click.argument("name")
@click.option("--host", "hosts", multiple=True, help="Extra SAN (repeatable).")
@click.option("--server/--no-server", default=False, help="serverAuth (a listener).")
@click.option("--client/--no-client", default=True, help="clientAuth (mutual TLS).")
@click.option("--days", type=click.IntRange(min=1), default=LEAF_DAYS, show_default=True)
@translate_errors
def issue_cmd(
    directory: Path, name: str, hosts: tuple[str, ...], server: bool, client: bool, days: int
) -> None:
    """Issue NAME.pem/NAME.key from the CA in DIRECTORY (e.g. per agent or authority).

    Re-issue before expiry: the collector re-reads its files without a restart."""
    pair = issue(directory, name, hosts, server=server, client=client, days=days)
    click.echo(f"{pair.cert} {pair.key}")
