"""The collector's database as the ``nodes`` commands name it.

``--ledger`` takes the SQLite ledger file, as always, or a database URL
(``sqlite:///abs/path``, ``postgresql://...``: the collectors in HA share
one). ``--ledger-url-file`` reads the URL from a file instead, so a password
in it need not sit on a command line (or in ``ps``, or a shell's history).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from collector.config import read_url_file
from protos.errors import ConfigError

if TYPE_CHECKING:  # imported when used: the CLI starts without the database drivers
    from collector.store.sql import Location

    _ParamType = click.ParamType[Any, Any]  # generic from click 8.2 on
else:
    _ParamType = click.ParamType

F = TypeVar("F", bound=Callable[..., Any])


def has_password(url: str) -> bool:
    from collector.store.sql import redact

    return redact(url) != url


class LedgerLocation(_ParamType):
    """A SQLite path (a ``Path``) or a database URL (a ``str``)."""

    name = "PATH|URL"

    def __init__(self, *, exists: bool) -> None:
        self.exists = exists

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from collector.store.sql import is_postgres, sqlite_path

        if isinstance(value, Path):
            return value
        text = str(value)
        if is_postgres(text):
            return text
        try:
            path = sqlite_path(text)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)
        if self.exists and not path.exists():
            self.fail(f"File {str(path)!r} does not exist.", param, ctx)
        if path.is_dir():
            self.fail(f"File {str(path)!r} is a directory.", param, ctx)
        return path


def ledger_options(*, exists: bool, envvar: str) -> Callable[[F], F]:
    """``--ledger`` / ``--ledger-url-file`` (exactly one), passed to the
    command as one ``ledger: Location`` argument. ``exists``: a SQLite file
    must exist already (a mistyped path is an error, not a new empty ledger)."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(
            *args: Any, ledger: Location | None, ledger_url_file: Path | None, **kw: Any
        ) -> Any:
            if (ledger is None) == (ledger_url_file is None):
                raise click.UsageError("give exactly one of --ledger and --ledger-url-file")
            if ledger_url_file is not None:
                hint = "'--ledger-url-file'"
                try:
                    url = read_url_file(ledger_url_file)
                except ConfigError as exc:
                    raise click.BadParameter(str(exc), param_hint=hint) from exc
                try:
                    ledger = LedgerLocation(exists=exists).convert(url, None, None)
                except click.BadParameter as exc:
                    exc.param_hint = hint
                    raise
            elif isinstance(ledger, str) and has_password(ledger):
                click.echo(
                    "warning: the ledger URL on the command line carries a password;"
                    " put it in a file and pass --ledger-url-file",
                    err=True,
                )
            return command(*args, ledger=ledger, **kw)

        with_file = click.option(
            "--ledger-url-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            envvar=f"{envvar}_URL_FILE",
            help="A file holding the database URL (keeps a password off the command line).",
        )(wrapper)
        return cast(
            "F",
            click.option(
                "--ledger",
                type=LedgerLocation(exists=exists),
                envvar=envvar,
                help="The ledger: its SQLite file, or postgresql://... (collectors in HA).",
            )(with_file),
        )

    return decorate
