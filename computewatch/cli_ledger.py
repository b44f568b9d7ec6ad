"""``computewatch ledger``: move a ledger to PostgreSQL, and see who leads it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from collector.config import read_url_file
from computewatch.clitools import translate_errors

_URL_ENV = "COMPUTEWATCH_LEDGER_URL"
T = TypeVar("T")


@click.group()
def ledger() -> None:
    """The ledger's database: copy to PostgreSQL, leadership."""


@ledger.command("copy")
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The single-node SQLite ledger (stop its collector first).",
)
@click.option(
    "--to",
    "url",
    envvar=_URL_ENV,
    help=f"postgresql://... of an empty database (or ${_URL_ENV}).",
)
@click.option(
    "--to-file",
    "url_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar=f"{_URL_ENV}_FILE",
    help="A file holding that URL (keeps a password off the command line).",
)
@translate_errors
def copy(source: Path, url: str | None, url_file: Path | None) -> None:
    """Copy every row of a SQLite ledger into PostgreSQL and check the Merkle root."""
    from collector.store.copy import copy_ledger

    url = _one_url(url, url_file, "--to")

    result = _pg(lambda: copy_ledger(source, url))
    rows = ", ".join(f"{table} {n}" for table, n in result.rows.items())
    click.echo(f"copied {result.entries} entries, root {result.root.hex()} ({rows})")


@ledger.command("leader")
@click.option("--url", envvar=_URL_ENV, help=f"postgresql://... (or ${_URL_ENV}).")
@click.option(
    "--url-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar=f"{_URL_ENV}_FILE",
    help="A file holding the URL (keeps a password off the command line).",
)
@translate_errors
def leader(url: str | None, url_file: Path | None) -> None:
    """Which collector holds the leader lease, with which fencing term."""
    from collector.ha.leader import LeaderLease

    url = _one_url(url, url_file, "--url")

    def read() -> str:
        lease = LeaderLease(url, "computewatch-cli", lease_seconds=1)
        try:
            state = lease.current()
        finally:
            lease.close()
        if state is None:
            return "no collector has led this ledger yet"
        return (
            f"leader {state.holder} term {state.term}"
            f" lease until {state.expires_unix_nanos} (unix ns, database clock)"
        )

    click.echo(_pg(read))


def _one_url(url: str | None, url_file: Path | None, flag: str) -> str:
    """The database URL from ``flag`` or from its ``-file`` twin (exactly one)."""
    if (url is None) == (url_file is None):
        raise click.UsageError(f"give exactly one of {flag} and {flag}-file")
    if url_file is not None:
        return read_url_file(url_file)
    assert url is not None
    return url


def _pg(call: Callable[[], T]) -> T:
    """psycopg's connection errors as one line, like our own errors."""
    import psycopg

    try:
        return call()
    except psycopg.Error as exc:
        raise click.ClickException(f"postgresql: {exc}".splitlines()[0]) from exc
