"""``computewatch keys``: make and inspect Ed25519 key pairs."""

from __future__ import annotations

import time
from pathlib import Path

import click

from computewatch.clitools import translate_errors
from protos import keylog
from protos import keys as keymod


@click.group()
def keys() -> None:
    """Generate and inspect Ed25519 keys."""


@keys.command()
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key file to write (mode 0600); the public key goes to OUT.pub.",
)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@translate_errors
def generate(out: Path, force: bool) -> None:
    """Write a new key pair and print its key id."""
    key = keymod.PrivateKey.generate()
    keymod.write_private_key(key, out, overwrite=force)
    pub = out.with_name(out.name + ".pub")
    keymod.write_public_key(key.public, pub)
    click.echo(key.keyid)


@keys.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@translate_errors
def show(path: Path) -> None:
    """Print the key id of a public or private key file."""
    click.echo(keymod.load_public_key(path).keyid)


@keys.command()
@click.option("--node-id", required=True)
@click.option(
    "--old",
    "old_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The node's current private key.",
)
@click.option(
    "--new",
    "new_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The node's new private key.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@translate_errors
def handover(node_id: str, old_path: Path, new_path: Path, out: Path) -> None:
    """Write a KeyHandover envelope signed by the OLD and the NEW key, for
    `nodes handover` on the collector host."""
    old = keymod.load_private_key(old_path)
    new = keymod.load_private_key(new_path)
    out.write_bytes(keylog.handover(node_id, old, new, time.time_ns()))
    click.echo(f"{old.keyid} -> {new.keyid}")
