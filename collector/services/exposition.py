"""The collector's ``/metrics`` server: ``prometheus_client``'s exposition,
with the per-node series written by ``collector.services.node_series`` (the same
lines, an order of magnitude faster at thousands of nodes).

What ``prometheus_client.start_http_server`` serves, served alike: GET on
any path (``/favicon.ico`` empty), OPTIONS, 405 otherwise; the format
negotiated from ``Accept`` (Prometheus text or OpenMetrics, by
``choose_encoder``), gzip when accepted, ``name[]`` filters (answered
entirely by ``prometheus_client``), TLS with the given certificate. Only the
order of families differs: the per-node ones come last.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder, gzip_accepted
from prometheus_client.registry import CollectorRegistry

from collector.services.metrics import CollectorMetrics

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
_EOF = b"# EOF\n"


class MetricsApp:
    """WSGI app of ``registry``, ``metrics``' per-node series written fast."""

    def __init__(self, registry: CollectorRegistry, metrics: CollectorMetrics | None) -> None:
        self._registry = registry
        self._metrics = metrics

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        headers: list[tuple[str, str]] = [("Allow", "OPTIONS,GET")]
        if method == "OPTIONS":
            status, output = "200 OK", b""
        elif method != "GET":
            status = "405 Method Not Allowed"
            output = f"# HTTP {status}: {method}; use OPTIONS or GET\n".encode()
        elif environ.get("PATH_INFO") == "/favicon.ico":
            status, headers, output = "200 OK", [], b""
        else:
            status = "200 OK"
            output, content_type = self.body(
                environ.get("HTTP_ACCEPT", ""), parse_qs(environ.get("QUERY_STRING", ""))
            )
            headers = [("Content-Type", content_type)]
            if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
                output = gzip.compress(output)
                headers.append(("Content-Encoding", "gzip"))
        start_response(status, headers)
        return [output]

    def body(self, accept: str, params: dict[str, list[str]]) -> tuple[bytes, str]:
        """The exposition for an ``Accept`` header: (bytes, content type)."""
        encoder, content_type = choose_encoder(accept)
        if "name[]" in params:
            return encoder(self._registry.restricted_registry(params["name[]"])), content_type
        if self._metrics is None:
            return encoder(self._registry), content_type
        with self._metrics.deferring_node_series() as box:
            output = encoder(self._registry)
        if box.series is None:
            return output, content_type
        openmetrics = content_type.startswith("application/openmetrics-text")
        tail = box.series.render(openmetrics=openmetrics).encode()
        if openmetrics and output.endswith(_EOF):
            return output[: -len(_EOF)] + tail + _EOF, content_type
        return output + tail, content_type


class _SilentHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per scrape."""


def start_metrics_server(
    port: int,
    *,
    addr: str,
    registry: CollectorRegistry,
    metrics: CollectorMetrics | None,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> tuple[ThreadingWSGIServer, threading.Thread]:
    """Serve ``/metrics`` from a daemon thread (as ``start_http_server``)."""
    family, _, _, _, sockaddr = socket.getaddrinfo(
        addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    httpd = make_server(
        str(sockaddr[0]),
        port,
        MetricsApp(registry, metrics),
        Server,
        handler_class=_SilentHandler,
    )
    if certfile and keyfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile=certfile, keyfile=keyfile)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True)
    thread.start()
    return httpd, thread


__all__ = ["MetricsApp", "start_metrics_server"]
