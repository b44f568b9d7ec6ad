"""A private CA and certificates in a tmp dir (``computewatch.tlsca``), and the
settings that put a test collector, agent or client on TLS with them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from computewatch.tlsca import Issued, init_site
from protos.tls import channel_credentials


@dataclass(frozen=True)
class Site:
    ca: Issued
    server: Issued
    client: Issued

    def collector(self, *, mutual: bool = False) -> dict[str, object]:
        """``collector_config`` overrides: serve TLS (and require client certs)."""
        return {
            "insecure_plaintext": False,
            "tls_cert": self.server.cert,
            "tls_key": self.server.key,
            "tls_client_ca": self.ca.cert if mutual else None,
        }

    def credentials(self, *, client_cert: bool = False) -> grpc.ChannelCredentials:
        if client_cert:
            return channel_credentials(self.ca.cert, self.client.cert, self.client.key)
        return channel_credentials(self.ca.cert)


def make_site(directory: Path) -> Site:
    issued = init_site(directory)
    return Site(issued["ca"], issued["collector"], issued["client"])
