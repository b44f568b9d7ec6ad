"""TLS for the CLI's calls to a collector (``status``, ``halt``/``approve``, ``audit``).

Every client command takes ``--tls-ca`` (the CA that signed the collector's
certificate; default: the system's roots), ``--tls-cert``/``--tls-key`` (a
client certificate, for collectors that require mutual TLS) and
``--insecure-plaintext`` (no TLS: an explicit, loudly logged opt-out). The
options arrive in the command as one ``tls: ClientTls`` argument.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import grpc
import grpc.aio

from protos.tls import channel_credentials, warn_plaintext

R = TypeVar("R")
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@dataclass(frozen=True)
class ClientTls:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    plaintext: bool = False

    def credentials(self, address: str) -> grpc.ChannelCredentials | None:
        if self.plaintext:
            if self.ca or self.cert:
                raise click.UsageError("--insecure-plaintext cannot go with --tls-ca/--tls-cert")
            warn_plaintext(f"this command -> {address}")
            return None
        return channel_credentials(self.ca, self.cert, self.key)

    def channel(self, address: str) -> grpc.Channel:
        creds = self.credentials(address)
        if creds is None:
            return grpc.insecure_channel(address)
        return grpc.secure_channel(address, creds)

    def aio_channel(
        self, address: str, interceptors: Sequence[Any] | None = None
    ) -> grpc.aio.Channel:
        creds = self.credentials(address)
        if creds is None:
            return grpc.aio.insecure_channel(address, interceptors=interceptors)
        return grpc.aio.secure_channel(address, creds, interceptors=interceptors)


_OPTIONS = (
    click.option(
        "--tls-ca",
        type=_FILE,
        default=None,
        envvar="COMPUTEWATCH_TLS_CA",
        help="CA certificate that signed the collector's (default: system roots).",
    ),
    click.option(
        "--tls-cert",
        type=_FILE,
        default=None,
        envvar="COMPUTEWATCH_TLS_CERT",
        help="Client certificate, for a collector that requires mutual TLS.",
    ),
    click.option(
        "--tls-key",
        type=_FILE,
        default=None,
        envvar="COMPUTEWATCH_TLS_KEY",
        help="Key of --tls-cert.",
    ),
    click.option(
        "--insecure-plaintext",
        is_flag=True,
        default=False,
        envvar="COMPUTEWATCH_INSECURE_PLAINTEXT",
        help="Talk to the collector without TLS (loudly logged).",
    ),
)


def tls_options(fn: Callable[..., R]) -> Callable[..., R]:
    """Add the TLS options; the command receives them as ``tls``."""

    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        tls_ca: Path | None,
        tls_cert: Path | None,
        tls_key: Path | None,
        insecure_plaintext: bool,
        **kwargs: Any,
    ) -> R:
        tls = ClientTls(tls_ca, tls_cert, tls_key, insecure_plaintext)
        return fn(*args, tls=tls, **kwargs)

    out: Callable[..., R] = wrapper
    for opt in reversed(_OPTIONS):
        out = opt(out)
    return out
