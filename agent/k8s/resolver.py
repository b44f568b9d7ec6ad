"""Join the kubelet's GPU allocations, pod metadata and workload rules.

``PodWorkloads.refresh()`` (at most every ``refresh_seconds``) asks the
kubelet which pods hold GPUs and reads those pods' metadata (cached for
``pod_ttl_seconds``, re-read at once when a process names a pod UID the
cache does not know, at the next refresh: a pod re-created under its old
name). Then:

- ``by_pod_uid``: a process whose cgroup names pod UID ``u`` belongs to the
  workload of the GPU-holding pod with that UID;
- ``by_device``: a process no cgroup attributes (the agent cannot read the
  host's ``/proc``, e.g. a DaemonSet without ``hostPID``) belongs to the
  workload of the one pod the kubelet assigned its GPU or MIG device to;
  a time-sliced GPU shared by several pods attributes nothing.

When the kubelet cannot be read, the device map is dropped (no guess on
stale data) and processes keep their pod UID as their job; when the API
server cannot be read, pods read before keep their workload and new ones
count under their pod UID. Either way a warning is logged once per outage
and ``errors`` counts each failed refresh.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.k8s.kubelet import PodRef
from agent.k8s.pods import Pod, PodSource
from agent.k8s.workload import LabelRule, Workload, workload_of
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import Error

log = logging.getLogger(__name__)

MAX_PODS = 1024


class DeviceAllocations(Protocol):
    def gpu_pods(self) -> dict[str, tuple[PodRef, ...]]:
        """Device id -> pods (``agent.k8s.kubelet.PodResourcesClient``)."""
        ...


@dataclass(frozen=True)
class PodJob:
    """The job a pod's processes count under, and the pod as its member."""

    job_id: str
    member: str
    workload: Workload


class PodWorkloads:
    def __init__(
        self,
        kubelet: DeviceAllocations,
        pods: PodSource,
        rules: tuple[LabelRule, ...],
        *,
        refresh_seconds: float = 10.0,
        pod_ttl_seconds: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kubelet = kubelet
        self._pods = pods
        self._rules = rules
        self._refresh = refresh_seconds
        self._ttl = pod_ttl_seconds
        self._monotonic = monotonic
        self._last: float | None = None
        self._stale = False
        self._devices: dict[str, tuple[PodRef, ...]] = {}
        # (namespace, name) -> (read at, pod)
        self._meta: OrderedDict[PodRef, tuple[float, Pod]] = OrderedDict()
        self._by_uid: dict[str, PodJob] = {}
        self._by_ref: dict[PodRef, PodJob] = {}
        self._missed: OrderedDict[str, None] = OrderedDict()
        self._failing = False
        # Refreshes that failed (kubelet or API server unreadable).
        self.errors = 0

    def refresh(self) -> None:
        """Re-read allocations and metadata when due. Never raises our errors."""
        now = self._monotonic()
        if self._last is not None and now - self._last < self._refresh:
            return
        self._last = now
        try:
            devices = self._kubelet.gpu_pods()
        except Error as exc:
            self._devices, self._by_ref, self._by_uid = {}, {}, {}
            self._fail(exc)
            return
        refs = sorted({r for pods in devices.values() for r in pods})[:MAX_PODS]
        by_ref: dict[PodRef, PodJob] = {}
        failed: Error | None = None
        for ref in refs:
            cached = self._meta.get(ref)
            try:
                if failed is not None:
                    raise failed  # one timeout per refresh, not one per pod
                pod = self._pod(ref, now)
            except Error as exc:
                # Keep what was read before (a pod's owner never changes; its UID is
                # checked against the process's cgroup); try again next refresh.
                failed = exc
                pod = cached[1] if cached is not None else None
            if pod is not None:
                w = workload_of(pod, self._rules)
                by_ref[ref] = PodJob(w.job_id, str(ref), w)
        if failed is not None:
            self._fail(failed)
        else:
            if self._failing:
                log.info("kubernetes attribution available again")
            self._failing = self._stale = False
        self._devices = devices
        self._by_ref = by_ref
        self._by_uid = {
            meta.uid: by_ref[ref] for ref, (_, meta) in self._meta.items() if ref in by_ref
        }

    def _fail(self, exc: Error) -> None:
        self.errors += 1
        if not self._failing:
            log.warning("kubernetes attribution degraded: %s", exc)
        self._failing = True

    def _pod(self, ref: PodRef, now: float) -> Pod | None:
        cached = self._meta.get(ref)
        if cached is not None and now - cached[0] < self._ttl and not self._stale:
            self._meta.move_to_end(ref)
            return cached[1]
        pod = self._pods.pod(ref.namespace, ref.name)
        if pod is None or (pod.namespace, pod.name) != (ref.namespace, ref.name):
            # Not there (yet: a pod the kubelet runs before the API shows it):
            # asked again at the next refresh, never cached.
            self._meta.pop(ref, None)
            return None
        self._meta[ref] = (now, pod)
        self._meta.move_to_end(ref)
        while len(self._meta) > MAX_PODS:
            self._meta.popitem(last=False)
        return pod

    def by_pod_uid(self, uid: str) -> PodJob | None:
        found = self._by_uid.get(uid)
        if found is None and self._by_ref and uid not in self._missed:
            # A pod we do not know: re-read metadata at the next refresh, once per
            # UID (a pod that holds no GPU of the kubelet's never shows up).
            self._stale = True
            self._missed[uid] = None
            if len(self._missed) > MAX_PODS:
                self._missed.popitem(last=False)
        return found

    def by_device(self, gpu: telemetry_pb2.GpuSample) -> PodJob | None:
        pods: set[PodRef] = set()
        # The device plugin names GPUs by UUID (its default) or, with
        # DEVICE_ID_STRATEGY=index, a whole GPU by its index.
        by_index = "" if gpu.mig_instance else str(gpu.index)
        for device in (gpu.uuid, gpu.mig_instance, by_index):
            if device:
                pods.update(self._devices.get(device, ()))
        if len(pods) != 1:
            return None
        return self._by_ref.get(pods.pop())
