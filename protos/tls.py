"""TLS for every gRPC listener and channel, with certificates re-read on change.

Server side: ``ServerTls`` gives ``grpc.dynamic_ssl_server_credentials`` a
fetcher that gRPC calls on each new handshake; when the certificate, key or
client CA file changed on disk (mtime, size) it returns the new configuration,
so a renewed certificate is served without a restart (connections already
open keep theirs). A file that cannot be read or parsed keeps the previous
configuration and is logged and counted. Client side: ``channel_credentials``
(the CA to trust, optionally a client certificate for mutual TLS).

Plain text is an explicit opt-out (``insecure_plaintext``), logged loudly by
``warn_plaintext`` wherever it is chosen.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from protos.errors import ConfigError

log = logging.getLogger(__name__)

_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_KEY = b"PRIVATE KEY-----"


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from exc
    marker = _PEM_KEY if what == "key" else _PEM_CERT
    if marker not in data:
        raise ConfigError(f"the TLS {what} {path} is not PEM (no {marker.decode()!r} block)")
    return data


def _stamp(paths: tuple[Path | None, ...]) -> tuple[tuple[int, int], ...]:
    out = []
    for p in paths:
        if p is None:
            out.append((0, 0))
            continue
        try:
            st = p.stat()
        except OSError:
            out.append((-1, -1))
            continue
        out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


@dataclass
class TlsStats:
    reloads: int = 0
    reload_errors: int = 0


class ServerTls:
    """Server credentials that follow the files on disk."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert = cert
        self.key = key
        self.client_ca = client_ca
        self.stats = TlsStats()
        self._lock = threading.Lock()
        self._stamp = _stamp(self._paths())
        self._initial = self._configuration()  # raises ConfigError at start-up

    def _paths(self) -> tuple[Path | None, ...]:
        return (self.cert, self.key, self.client_ca)

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        pair = (_read(self.key, "key"), _read(self.cert, "certificate"))
        roots = None if self.client_ca is None else _read(self.client_ca, "client CA")
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=roots)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher: a new configuration when the files changed, else None."""
        with self._lock:
            stamp = _stamp(self._paths())
            if stamp == self._stamp:
                return None
            self._stamp = stamp
            try:
                config = self._configuration()
            except ConfigError as exc:
                self.stats.reload_errors += 1
                log.error("TLS certificate not reloaded, the previous one stays: %s", exc)  # noqa: TRY400
                return None
            self.stats.reloads += 1
            log.info("TLS certificate reloaded from %s", self.cert)
            return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self.fetch,  # type: ignore[arg-type]  # gRPC takes None: "no change"
            require_client_authentication=self.client_ca is not None,
        )


def channel_credentials(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """Trust ``ca`` (None: the system roots); present ``cert``/``key`` for mutual TLS."""
    if (cert is None) != (key is None):
        raise ConfigError("a TLS client certificate needs its key, and the key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=None if ca is None else _read(ca, "CA certificate"),
        private_key=None if key is None else _read(key, "key"),
        certificate_chain=None if cert is None else _read(cert, "certificate"),
    )


def warn_plaintext(what: str) -> None:
    """The loud line every plain-text opt-out logs."""
    log.warning(
        "INSECURE: %s uses plain text (insecure_plaintext): tokens, directives and the"
        " fleet's shape cross the network unencrypted and can be delayed or dropped unseen",
        what,
    )
