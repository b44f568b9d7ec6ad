"""Which pod holds which GPU: the kubelet's PodResources API (``v1.PodResourcesLister``).

The kubelet serves it on a unix socket (``/var/lib/kubelet/pod-resources/
kubelet.sock``); ``List`` returns every pod's containers with the device ids
each device plugin assigned. The NVIDIA device plugin names a GPU by its UUID
(``GPU-...``) or a MIG device by its MIG UUID (``MIG-...``), under resource
``nvidia.com/gpu`` (or ``nvidia.com/mig-<profile>`` with the mixed MIG
strategy), and appends ``::<replica>`` when a GPU is time-sliced
(k8s-device-plugin ``internal/rm/devices.go``: ``NewAnnotatedID`` formats
``"%s::%d"``); with ``DEVICE_ID_STRATEGY=index`` a whole GPU is its index.
The wire contract is our copy of the upstream proto:
``protos/k8s/podresources/v1/api.proto``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from protos.errors import BackendError
from protos.k8s.podresources.v1 import api_pb2, api_pb2_grpc

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
# A resource name ending in "*" matches by prefix.
DEFAULT_RESOURCES = ("nvidia.com/gpu", "nvidia.com/mig-*")
MAX_PODS = 4096
MAX_DEVICES_PER_CONTAINER = 256
_MAX_RESPONSE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, order=True)
class PodRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def device_id(raw: str) -> str:
    """The GPU or MIG UUID of a device plugin id (a time-slice replica suffix removed)."""
    return raw.split("::", 1)[0]


def resource_matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


def gpu_pods(
    response: api_pb2.ListPodResourcesResponse, resources: tuple[str, ...] = DEFAULT_RESOURCES
) -> dict[str, tuple[PodRef, ...]]:
    """Device id -> the pods it is assigned to (several only when time-sliced)."""
    found: dict[str, set[PodRef]] = {}
    for pod in response.pod_resources[:MAX_PODS]:
        if not pod.name or not pod.namespace:
            continue
        ref = PodRef(pod.namespace, pod.name)
        for container in pod.containers:
            for devices in container.devices:
                if not resource_matches(devices.resource_name, resources):
                    continue
                for raw in devices.device_ids[:MAX_DEVICES_PER_CONTAINER]:
                    if raw:
                        found.setdefault(device_id(raw), set()).add(ref)
    return {dev: tuple(sorted(pods)) for dev, pods in found.items()}


class PodResourcesClient:
    """A client of the kubelet's PodResources socket. ``close()`` when done."""

    def __init__(
        self,
        socket: Path = DEFAULT_SOCKET,
        *,
        resources: tuple[str, ...] = DEFAULT_RESOURCES,
        timeout_seconds: float = 2.0,
    ) -> None:
        self.socket = socket
        self._resources = resources
        self._timeout = timeout_seconds
        self._channel: grpc.Channel | None = None
        self._stub: api_pb2_grpc.PodResourcesListerStub | None = None

    def _lister(self) -> api_pb2_grpc.PodResourcesListerStub:
        if self._stub is None:
            self._channel = grpc.insecure_channel(
                f"unix://{self.socket}",
                options=[("grpc.max_receive_message_length", _MAX_RESPONSE_BYTES)],
            )
            self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        return self._stub

    def gpu_pods(self) -> dict[str, tuple[PodRef, ...]]:
        """Device id -> pods, from ``List``. Raises BackendError when the kubelet
        cannot be asked (no socket, timeout, an error status)."""
        try:
            response = self._lister().List(api_pb2.ListPodResourcesRequest(), timeout=self._timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            raise BackendError(
                f"kubelet PodResources List on {self.socket}: {code}: {detail}"
            ) from exc
        return gpu_pods(response, self._resources)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._stub = None
