"""Helpers every CLI module shares: logging setup and error translation."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import click
import grpc

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


def rpc_failure(address: str, exc: grpc.RpcError, what: str = "") -> click.ClickException:
    """A failed call as one line: ``collector at ADDR[ what]: CODE: details``.

    ``str()`` of grpc's ``_InactiveRpcError`` spans several lines (status,
    details, debug string); users need the code and the details only.
    """
    if isinstance(exc, grpc.Call):
        code = exc.code().name
        details = exc.details() or ""
    else:
        code, details = "ERROR", str(exc)
    details = " ".join(details.split())  # one line, whatever the transport said
    suffix = f" {what}" if what else ""
    return click.ClickException(f"collector at {address}{suffix}: {code}: {details}")
