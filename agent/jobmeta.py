"""Declared lineage and model of running jobs, from files a scheduler prolog writes.

A prolog (Slurm ``Prolog``, a Kubernetes admission hook, a systemd
``ExecStartPre``) writes ``<dir>/<job_id>.json``::

    {"job_id": "4243", "parent_job_ids": ["4242"], "model_id": "acme-7b-chat"}

``job_id`` must equal the file's name (a Kubernetes workload's
``k8s:<namespace>/<Kind>/<name>`` is written ``k8s:<namespace>:<Kind>:<name>.json``);
``parent_job_ids`` (jobs whose
checkpoints this job starts from) and ``model_id`` are optional. A file that
is world-writable (or in a world-writable directory), too large, not JSON, or
not of this shape is ignored with one warning per version of the file; a job
without a usable file is reported with its id only. Files are cached by
(inode, size, mtime), so an unchanged file is parsed once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from protos.computewatch.v1 import telemetry_pb2
from protos.jobs import is_unattributed

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 64 * 1024
MAX_PARENTS = 256
_MAX_ID = 255
# Job ids that are safe as file names: Slurm ids, pod UIDs, systemd unit names.
_SAFE_ID = re.compile(r"[A-Za-z0-9_@:\\-][A-Za-z0-9_.@:\\-]{0,254}")


def file_stem(job_id: str) -> str:
    """The metadata file name (without ``.json``) of ``job_id``: the id itself, with
    a Kubernetes workload's ``/`` written ``:`` (``k8s:ns/JobSet/x`` ->
    ``k8s:ns:JobSet:x``; namespaces, kinds and names never hold ``:``)."""
    return job_id.replace("/", ":") if job_id.startswith("k8s:") else job_id


@dataclass(frozen=True)
class _Meta:
    parents: tuple[str, ...]
    model_id: str


class _Bad(Exception):  # noqa: N818 - internal signal: the file is unusable
    pass


def _string(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_ID:
        raise _Bad(f"{what} must be a non-empty string of at most {_MAX_ID} characters")
    return value


def parse_metadata(text: str, job_id: str) -> tuple[tuple[str, ...], str]:
    """(parent ids, model id) from a metadata file's text; ``ValueError`` if unusable."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    try:
        if not isinstance(data, dict):
            raise _Bad("expected a JSON object")
        if _string(data.get("job_id"), "job_id") != job_id:
            raise _Bad(f"job_id {data.get('job_id')!r} does not match the file name")
        raw_parents = data.get("parent_job_ids", [])
        if not isinstance(raw_parents, list) or len(raw_parents) > MAX_PARENTS:
            raise _Bad(f"parent_job_ids must be a list of at most {MAX_PARENTS} job ids")
        parents = tuple(_string(p, "each parent job id") for p in raw_parents)
        model = data.get("model_id", "")
        model_id = "" if model in ("", None) else _string(model, "model_id")
    except _Bad as exc:
        raise ValueError(str(exc)) from exc
    return parents, model_id


class JobMetadataDir:
    """Read ``<path>/<job_id>.json`` files (see module docstring)."""

    def __init__(self, path: Path, *, cache_size: int = 4096) -> None:
        self.path = path
        self._cache_size = max(1, cache_size)
        # job id -> (file identity, metadata or None when the file is unusable)
        self._cache: OrderedDict[str, tuple[tuple[int, int, int], _Meta | None]] = OrderedDict()
        self._dir_warned = False
        # Files (or the directory) refused for being world-writable, and unusable files.
        self.refused_world_writable = 0
        self.malformed = 0

    def jobs(self, job_ids: Iterable[str]) -> list[telemetry_pb2.JobInfo]:
        """One ``JobInfo`` per distinct id, in order, with lineage and model when declared."""
        out: list[telemetry_pb2.JobInfo] = []
        seen: set[str] = set()
        trusted_dir = self._dir_trusted()
        for job_id in job_ids:
            if is_unattributed(job_id) or job_id in seen:
                continue
            seen.add(job_id)
            info = telemetry_pb2.JobInfo(job_id=job_id)
            meta = self._load(job_id) if trusted_dir else None
            if meta is not None:
                info.parent_job_ids.extend(meta.parents)
                info.model_id = meta.model_id
            out.append(info)
        return out

    def _dir_trusted(self) -> bool:
        try:
            mode = self.path.stat().st_mode
        except OSError:
            return False  # no directory: no job declared anything
        if mode & stat.S_IWOTH:
            self.refused_world_writable += 1
            if not self._dir_warned:
                log.warning("job metadata directory %s is world-writable: ignored", self.path)
                self._dir_warned = True
            return False
        self._dir_warned = False
        return True

    def _load(self, job_id: str) -> _Meta | None:
        stem = file_stem(job_id)
        if not _SAFE_ID.fullmatch(stem):
            return None
        path = self.path / f"{stem}.json"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._reject(job_id, (0, 0, 0), f"cannot open {path}: {exc}")
        try:
            info = os.fstat(fd)
            identity = (info.st_ino, info.st_size, info.st_mtime_ns)
            if not stat.S_ISREG(info.st_mode):
                return self._reject(job_id, identity, f"{path} is not a regular file")
            if info.st_mode & stat.S_IWOTH:
                self.refused_world_writable += 1
                return self._reject(job_id, identity, f"{path} is world-writable: ignored")
            cached = self._cache.get(job_id)
            if cached is not None and cached[0] == identity:
                self._cache.move_to_end(job_id)
                return cached[1]
            if info.st_size > MAX_FILE_BYTES:
                return self._reject(job_id, identity, f"{path} is larger than {MAX_FILE_BYTES}")
            data = os.read(fd, MAX_FILE_BYTES + 1)
        except OSError as exc:
            return self._reject(job_id, (0, 0, 0), f"cannot read {path}: {exc}")
        finally:
            os.close(fd)
        try:
            parents, model_id = parse_metadata(data.decode("utf-8"), job_id)
        except (UnicodeDecodeError, ValueError) as exc:
            self.malformed += 1
            return self._reject(job_id, identity, f"{path}: {exc}")
        meta = _Meta(parents, model_id)
        self._remember(job_id, identity, meta)
        return meta

    def _reject(self, job_id: str, identity: tuple[int, int, int], why: str) -> _Meta | None:
        """Log (once per version of the file) why it is unusable; remember that. None."""
        cached = self._cache.get(job_id)
        if cached is None or cached[0] != identity or cached[1] is not None:
            log.warning("job metadata for %s skipped: %s", job_id, why)
        self._remember(job_id, identity, None)
        return None

    def _remember(self, job_id: str, identity: tuple[int, int, int], meta: _Meta | None) -> None:
        self._cache[job_id] = (identity, meta)
        self._cache.move_to_end(job_id)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
