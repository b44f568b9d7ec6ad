"""Which job a GPU process belongs to: pid -> ``/proc/<pid>/cgroup`` -> job id.

Rules, first match over every line of the cgroup file:

- Slurm: a ``job_<id>`` step under Slurm's own hierarchy, cgroup v1
  (``/slurm/uid_1000/job_4242/step_0``) or v2
  (``/system.slice/slurmstepd.scope/job_4242/step_0/...``) -> ``<id>``;
- Kubernetes: a pod cgroup under ``kubepods``, systemd driver
  (``kubepods-burstable-pod<uid with _>.slice``) or cgroupfs
  (``/kubepods/burstable/pod<uid>/...``) -> the pod UID (dashes restored);
- systemd: a unit under ``/system.slice`` -> the unit name (``train.service``);
- anything else -> ``unattributed``, sent as the node's own pseudo-job
  ``unattributed@<node_id>`` (``protos.jobs``), never one pooled across nodes.

A job is the training run, not its pieces (``fill``): with a ``SlurmJobs``
resolver an array task or het component counts under its array or het job
(``agent.slurm``); with a ``PodWorkloads`` resolver a pod counts under the
workload that owns it (``k8s:<namespace>/<Kind>/<name>``, ``agent.k8s``), and
a process no cgroup attributes counts under the one pod its GPU is assigned
to. The piece (pod, array task, het component) is the process's ``member``.

Anchoring the patterns to the hierarchies that root-owned daemons manage means
a user cannot claim a job by naming a cgroup in their own delegated subtree
(``/user.slice/...`` is never attributed). A cgroup or stat file that is
world-writable, or sits in a world-writable directory, is not trusted: the pid
is ``unattributed``, a warning is logged and ``refused_world_writable`` counts
it. Results are cached per (pid, process start time), so a reused pid is
looked up afresh; only attributed results are cached (a process can still be
moved into its job's cgroup).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from protos.computewatch.v1 import telemetry_pb2
from protos.jobs import unattributed_id

log = logging.getLogger(__name__)

SOURCES = frozenset({"slurm", "kubernetes", "systemd", "unattributed"})
UNATTRIBUTED_ID = "unattributed"
_MAX_READ = 64 * 1024
_MAX_LINES = 512
_MAX_ID = 255

_SLURM = re.compile(
    r"^/(?:slurm[^/]*/uid_\d+|(?:system\.slice/)?[^/]*slurmstepd\.scope)/job_(\d{1,20})(?:/|$)"
)
_UUID = r"[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}"
_KUBE = re.compile(
    r"^(?:/[^/]+)?/kubepods(?:\.slice|/|$)"
    r"(?:[^/]*/)*?"
    r"(?:kubepods-(?:burstable-|besteffort-)?pod|pod)(" + _UUID + r")(?:\.slice)?(?:/|$)"
)
# systemd unit names: letters, digits, ":", "_", ".", "\\" (escapes), "@", "-".
_UNIT = r"[A-Za-z0-9:_.\\@-]+"
_SYSTEMD = re.compile(
    r"^/system\.slice/(?:" + _UNIT + r"\.slice/)*(" + _UNIT + r"\.(?:service|scope))(?:/|$)"
)


@dataclass(frozen=True)
class Attribution:
    job_id: str
    # "slurm", "kubernetes", "systemd" or "unattributed".
    source: str
    # The pod, array task or het component within the job; "" when none.
    member: str = ""


class _Piece(Protocol):
    @property
    def job_id(self) -> str: ...
    @property
    def member(self) -> str: ...


class SlurmResolver(Protocol):
    """``agent.slurm.SlurmJobs``: a Slurm job id -> its array or het job."""

    def resolve(self, job_id: str) -> _Piece: ...


class PodResolver(Protocol):
    """``agent.k8s.resolver.PodWorkloads``: pods -> their workload's job."""

    def refresh(self) -> None: ...
    def by_pod_uid(self, uid: str) -> _Piece | None: ...
    def by_device(self, gpu: telemetry_pb2.GpuSample) -> _Piece | None: ...


UNATTRIBUTED = Attribution(UNATTRIBUTED_ID, "unattributed")


def _paths(text: str) -> list[str]:
    paths = []
    for line in text.splitlines()[:_MAX_LINES]:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2].startswith("/"):
            paths.append(parts[2])
    return paths


def parse_cgroup(text: str) -> Attribution:
    """Attribute one ``/proc/<pid>/cgroup`` content (v1, v2 or hybrid). Never raises."""
    paths = _paths(text)
    for path in paths:
        m = _SLURM.match(path)
        if m:
            return Attribution(m.group(1), "slurm")
    for path in paths:
        m = _KUBE.match(path)
        if m:
            return Attribution(m.group(1).replace("_", "-").lower(), "kubernetes")
    for path in paths:
        m = _SYSTEMD.match(path)
        if m and len(m.group(1)) <= _MAX_ID:
            return Attribution(m.group(1), "systemd")
    return UNATTRIBUTED


def start_time(stat_text: str) -> int | None:
    """Field 22 (start time, clock ticks since boot) of a ``/proc/<pid>/stat`` line."""
    _, sep, rest = stat_text.rpartition(")")
    if not sep:
        return None
    fields = rest.split()
    # rest starts at field 3 (state), so field 22 is index 19.
    if len(fields) < 20 or not fields[19].isdigit():
        return None
    return int(fields[19])


class _Untrusted(Exception):  # noqa: N818 - internal signal, not an error for callers
    """A file or one of its directories is world-writable."""


class JobAttributor:
    """Attribute GPU processes to jobs by reading a procfs tree (``/proc`` by default)."""

    def __init__(
        self,
        procfs_root: Path = Path("/proc"),
        *,
        cache_size: int = 4096,
        node_id: str = "",
        slurm: SlurmResolver | None = None,
        kubernetes: PodResolver | None = None,
    ) -> None:
        self.root = procfs_root
        self.node_id = node_id
        self._slurm = slurm
        self._kubernetes = kubernetes
        self._lock = threading.Lock()
        self._cache_size = max(1, cache_size)
        self._cache: OrderedDict[tuple[int, int], Attribution] = OrderedDict()
        self._warned: OrderedDict[int, None] = OrderedDict()
        # Lookups refused because a file or directory was world-writable.
        self.refused_world_writable = 0
        # Lookups that failed for another reason than a missing pid (permissions, I/O).
        self.read_errors = 0

    def _check_dir(self, path: Path) -> None:
        mode = path.stat(follow_symlinks=path == self.root).st_mode
        if mode & stat.S_IWOTH or not stat.S_ISDIR(mode):
            raise _Untrusted(str(path))

    def _read(self, pid: int, name: str) -> str:
        """``<root>/<pid>/<name>``, refusing anything world-writable on the way."""
        self._check_dir(self.root)
        directory = self.root / str(pid)
        self._check_dir(directory)
        fd = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if info.st_mode & stat.S_IWOTH or not stat.S_ISREG(info.st_mode):
                raise _Untrusted(str(directory / name))
            data = os.read(fd, _MAX_READ)
        finally:
            os.close(fd)
        return data.decode("utf-8", errors="replace")

    def attribute(self, pid: int) -> Attribution:
        """The job of process ``pid``; ``unattributed`` when unknown or untrusted."""
        if pid <= 0:
            return UNATTRIBUTED
        try:
            started = start_time(self._read(pid, "stat"))
            key = (pid, started) if started is not None else None
            if key is not None and key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            result = parse_cgroup(self._read(pid, "cgroup"))
        except FileNotFoundError:
            return UNATTRIBUTED
        except _Untrusted as exc:
            self.refused_world_writable += 1
            self._warn_once(pid, "world-writable %s: pid %s left unattributed", exc, pid)
            return UNATTRIBUTED
        except OSError as exc:
            self.read_errors += 1
            self._warn_once(pid, "cannot read procfs for pid %s: %s", pid, exc)
            return UNATTRIBUTED
        if key is not None and result.source != "unattributed":
            self._cache[key] = result
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    def _warn_once(self, pid: int, message: str, *args: object) -> None:
        if pid in self._warned:
            return
        self._warned[pid] = None
        if len(self._warned) > self._cache_size:
            self._warned.popitem(last=False)
        log.warning(message, *args)

    def job_of(self, found: Attribution, gpu: telemetry_pb2.GpuSample) -> Attribution:
        """The job (the training run) a process with cgroup attribution ``found`` on
        ``gpu`` counts under; the node's ``unattributed@<node>`` when none."""
        if found.source == "slurm" and self._slurm is not None:
            job = self._slurm.resolve(found.job_id)
            return Attribution(job.job_id, "slurm", job.member)
        if self._kubernetes is not None:
            if found.source == "kubernetes":
                pod = self._kubernetes.by_pod_uid(found.job_id)
            elif found.source == "unattributed":
                pod = self._kubernetes.by_device(gpu)
            else:
                pod = None
            if pod is not None:
                return Attribution(pod.job_id, "kubernetes", pod.member)
        if found.source == "unattributed":
            return Attribution(unattributed_id(self.node_id), "unattributed")
        return found

    def fill(self, gpus: list[telemetry_pb2.GpuSample]) -> None:
        """Set ``job_id``, ``attribution`` and ``member`` on every process of ``gpus``.

        Serialised: the sampler and enforcement may call it from two threads,
        and the caches and resolvers behind it are not thread-safe.
        """
        with self._lock:
            if self._kubernetes is not None:
                self._kubernetes.refresh()
            seen: dict[int, Attribution] = {}
            for gpu in gpus:
                for proc in gpu.processes:
                    found = seen.get(proc.pid)
                    if found is None:
                        found = seen[proc.pid] = self.attribute(proc.pid)
                    job = self.job_of(found, gpu)
                    proc.job_id = job.job_id
                    proc.attribution = job.source
                    proc.member = job.member
