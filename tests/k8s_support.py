"""A fake kubelet and a fake API server for Kubernetes attribution tests.

The fake kubelet is a real gRPC server speaking ``v1.PodResourcesLister`` on
a unix socket in a temporary directory; the fake API server is a real HTTP
server on 127.0.0.1 answering ``GET /api/v1/namespaces/<ns>/pods/<name>``
with pod JSON (the shape ``kubectl get pod -o json`` prints), so the official
``kubernetes`` client runs unchanged against it. Both are imitations of real
components (a kubelet and an API server cannot run here): a last resort.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc

from protos.k8s.podresources.v1 import api_pb2, api_pb2_grpc

PODS = Path(__file__).resolve().parent / "data" / "k8s" / "pods.json"


def pod_items() -> list[dict[str, object]]:
    return list(json.loads(PODS.read_text())["items"])


@dataclass
class FakeKubelet(api_pb2_grpc.PodResourcesListerServicer):
    """Serves ``List`` from ``pods``: (namespace, name) -> {resource: [device ids]}."""

    pods: dict[tuple[str, str], dict[str, list[str]]] = field(default_factory=dict)
    calls: int = 0
    fail: bool = False

    def List(
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        self.calls += 1
        if self.fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "kubelet restarting")
        response = api_pb2.ListPodResourcesResponse()
        for (namespace, name), resources in self.pods.items():
            pod = response.pod_resources.add(name=name, namespace=namespace)
            container = pod.containers.add(name="trainer")
            for resource, ids in resources.items():
                container.devices.add(resource_name=resource, device_ids=ids)
        return response


@contextmanager
def fake_kubelet(kubelet: FakeKubelet) -> Iterator[Path]:
    """Serve ``kubelet`` on a unix socket; yields the socket's path."""
    # A short directory: unix socket paths are limited to 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="kubelet-"))
    socket = directory / "kubelet.sock"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_PodResourcesListerServicer_to_server(kubelet, server)
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    try:
        yield socket
    finally:
        server.stop(grace=None).wait(5)
        shutil.rmtree(directory, ignore_errors=True)


_POD_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/?]+)")


@contextmanager
def fake_api_server(pods: list[dict[str, object]], *, status: int = 200) -> Iterator[str]:
    """Serve ``pods`` by namespace and name; yields the server's base URL."""
    by_key = {
        (p["metadata"]["namespace"], p["metadata"]["name"]): p  # type: ignore[index]
        for p in pods
    }
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            match = _POD_PATH.match(self.path)
            pod = by_key.get((match.group(1), match.group(2))) if match else None
            code = status if status != 200 else (200 if pod is not None else 404)
            body = json.dumps(pod if code == 200 else {"kind": "Status", "code": code}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
