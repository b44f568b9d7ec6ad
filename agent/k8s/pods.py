"""Pod metadata (labels, owner references) by namespace and name.

``PodSource`` is what the resolver needs. Two implementations:

- ``ApiServerPods`` asks the API server through the official ``kubernetes``
  client (the optional ``k8s`` extra, imported when first used), in-cluster
  credentials by default or a kubeconfig;
- ``PodJsonDir`` reads ``*.json`` files in the shape ``kubectl get pod -o json``
  (one Pod) or ``kubectl get pods -o json`` (a List) prints, for nodes whose
  operator exports pod metadata another way, and for tests.

``parse_pod`` validates what either returns: names, labels and owner kinds
that Kubernetes itself would refuse are refused here, so a malformed object
never reaches a job id.
"""

from __future__ import annotations

import json
import logging
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any, Protocol

from protos.errors import BackendError, ConfigError

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_LABELS = 256
MAX_OWNERS = 16
# RFC 1123 label (namespaces) and subdomain (most object names), per
# k8s.io/apimachinery pkg/util/validation.
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_KIND = re.compile(r"[A-Za-z][A-Za-z0-9]{0,62}")
# Label values: at most 63 of [A-Za-z0-9._-], alphanumeric at both ends.
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


class BadPodError(ValueError):
    """A pod object that cannot be used (the message says why)."""


@dataclass(frozen=True)
class OwnerRef:
    kind: str
    name: str
    controller: bool


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)
    owners: tuple[OwnerRef, ...] = ()

    @property
    def controller(self) -> OwnerRef | None:
        return next((o for o in self.owners if o.controller), None)


class PodSource(Protocol):
    def pod(self, namespace: str, name: str) -> Pod | None:
        """The pod, None if it does not exist; BackendError if it cannot be read."""
        ...


def valid_name(value: object) -> bool:
    return isinstance(value, str) and bool(_NAME.fullmatch(value))


def valid_kind(value: object) -> bool:
    return isinstance(value, str) and bool(_KIND.fullmatch(value))


def valid_label_value(value: object) -> bool:
    return isinstance(value, str) and bool(value) and bool(_LABEL_VALUE.fullmatch(value))


def parse_pod(obj: object) -> Pod:
    """A Pod from its JSON object (``kubectl get pod -o json``); ValueError if unusable."""
    if not isinstance(obj, dict) or obj.get("kind", "Pod") != "Pod":
        raise BadPodError("expected a Pod object")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise BadPodError("Pod without metadata")
    namespace, name, uid = meta.get("namespace"), meta.get("name"), meta.get("uid")
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise BadPodError(f"metadata.namespace {namespace!r} is not a namespace name")
    if not valid_name(name):
        raise BadPodError(f"metadata.name {name!r} is not a pod name")
    if not isinstance(uid, str) or not re.fullmatch(r"[0-9a-f-]{36}", uid.lower()):
        raise BadPodError(f"metadata.uid {uid!r} is not a UID")
    raw_labels = meta.get("labels") or {}
    if not isinstance(raw_labels, dict) or len(raw_labels) > MAX_LABELS:
        raise BadPodError(f"metadata.labels must be a map of at most {MAX_LABELS} entries")
    labels = {str(k): v for k, v in raw_labels.items() if isinstance(v, str)}
    raw_owners = meta.get("ownerReferences") or []
    if not isinstance(raw_owners, list):
        raise BadPodError("metadata.ownerReferences must be a list")
    owners = []
    for ref in raw_owners[:MAX_OWNERS]:
        if not isinstance(ref, dict):
            raise BadPodError("an ownerReference is not an object")
        kind, owner = ref.get("kind"), ref.get("name")
        if valid_kind(kind) and valid_name(owner):
            owners.append(OwnerRef(str(kind), str(owner), ref.get("controller") is True))
    return Pod(str(namespace), str(name), uid.lower(), labels, tuple(owners))


class PodJsonDir:
    """Pods from ``<path>/*.json`` (a Pod or a List of Pods per file), re-read
    when a file changes. Unusable files and items are skipped with a warning;
    a world-writable file (or a symlink) is not trusted, a world-writable
    directory is an error."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: dict[Path, tuple[int, int]] = {}
        self._pods: dict[tuple[str, str], Pod] = {}
        self._per_file: dict[Path, list[Pod]] = {}
        self._refused: set[Path] = set()
        # Files or items that could not be used.
        self.malformed = 0

    def pod(self, namespace: str, name: str) -> Pod | None:
        self._reload()
        return self._pods.get((namespace, name))

    def _reload(self) -> None:
        try:
            if self.path.stat().st_mode & stat.S_IWOTH:
                raise BackendError(f"pod metadata directory {self.path} is world-writable")
            files = sorted(self.path.glob("*.json"))
        except OSError as exc:
            raise BackendError(f"pod metadata directory {self.path}: {exc}") from exc
        current: dict[Path, tuple[int, int]] = {}
        for f in files:
            try:
                st = f.stat(follow_symlinks=False)
            except OSError:
                continue
            if not S_ISREG(st.st_mode) or st.st_mode & stat.S_IWOTH:
                # Anyone could name any pod's workload: not trusted.
                if f not in self._refused:
                    self.malformed += 1
                    log.warning("pod metadata %s is not a regular file or is world-writable", f)
                self._refused.add(f)
                continue
            self._refused.discard(f)
            current[f] = (st.st_mtime_ns, st.st_size)
        if current == self._seen:
            return
        for f, identity in current.items():
            if self._seen.get(f) != identity:
                self._per_file[f] = self._load(f)
        for gone in set(self._per_file) - set(current):
            del self._per_file[gone]
        self._seen = current
        self._pods = {(p.namespace, p.name): p for pods in self._per_file.values() for p in pods}

    def _load(self, path: Path) -> list[Pod]:
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self.malformed += 1
            log.warning("pod metadata %s skipped: %s", path, exc)
            return []
        items = (
            data.get("items") if isinstance(data, dict) and data.get("kind") == "List" else [data]
        )
        pods = []
        for item in items if isinstance(items, list) else []:
            try:
                pods.append(parse_pod(item))
            except ValueError as exc:
                self.malformed += 1
                log.warning("pod metadata %s: an item skipped: %s", path, exc)
        return pods


class ApiServerPods:
    """Pods from the API server, through the official ``kubernetes`` client.

    ``kubeconfig`` None: the in-cluster service account (a DaemonSet needs
    ``get`` on ``pods``). ``host`` overrides the server address (tests).
    """

    def __init__(
        self,
        *,
        kubeconfig: Path | None = None,
        host: str | None = None,
        timeout_seconds: float = 5.0,
    ) -> None:
        self._kubeconfig = kubeconfig
        self._host = host
        self._timeout = timeout_seconds
        self._api: Any = None

    def connect(self) -> None:
        """Load the client and its credentials now; ConfigError if that fails."""
        self._core()

    def _core(self) -> Any:
        if self._api is not None:
            return self._api
        try:
            from kubernetes import client, config
        except ImportError as exc:
            raise ConfigError(
                "pod metadata from the API server needs the 'kubernetes' package: "
                "pip install 'computewatch[k8s]'"
            ) from exc
        configuration = client.Configuration()
        if self._host is not None:
            configuration.host = self._host
        else:
            try:
                if self._kubeconfig is not None:
                    config.load_kube_config(
                        config_file=str(self._kubeconfig), client_configuration=configuration
                    )
                else:
                    config.load_incluster_config(client_configuration=configuration)
            except (config.ConfigException, OSError) as exc:
                raise ConfigError(f"kubernetes client configuration: {exc}") from exc
        self._api = client.CoreV1Api(client.ApiClient(configuration))
        return self._api

    def pod(self, namespace: str, name: str) -> Pod | None:
        api = self._core()
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            obj = api.read_namespaced_pod(name, namespace, _request_timeout=self._timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise BackendError(
                f"API server: pod {namespace}/{name}: {exc.status} {exc.reason}"
            ) from exc
        except (HTTPError, OSError) as exc:
            raise BackendError(f"API server: pod {namespace}/{name}: {exc}") from exc
        data = api.api_client.sanitize_for_serialization(obj)
        data.setdefault("kind", "Pod")
        try:
            return parse_pod(data)
        except ValueError as exc:
            raise BackendError(f"API server: pod {namespace}/{name}: {exc}") from exc
