"""Helpers every CLI module shares: logging setup and error translation."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import click

from protos.errors import Error

P = ParamSpec("P")
R = TypeVar("R")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure_logging(level: int, *, json_lines: bool = False) -> None:
    """Install one stderr handler on the root logger (CLI only)."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def translate_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn our ``Error`` into a one-line message and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Error as exc:
            raise click.ClickException(f"{exc.reason}: {exc}") from exc

    return wrapper
