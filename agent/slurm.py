"""Slurm array tasks and heterogeneous-job components belong to their job.

Each array task and each het component runs under its own job id (the
``job_<id>`` of its cgroup), so a 64-task array would be 64 jobs. ``SlurmJobs``
asks ``scontrol show job <id>`` once per id and maps:

- an array task (``JobId=4243 ArrayJobId=4242 ArrayTaskId=1``) to ``4242``,
  member ``4242_1``;
- a het component (``JobId=101 HetJobId=100 HetJobOffset=1``) to ``100``,
  member ``100+1``;
- any other job to itself.

Only the record's head (the ``JobId=`` line up to ``JobName=``) is read, where
Slurm prints these keys before any user-chosen text, so a job name such as
``x ArrayJobId=7`` cannot claim another job. Answers are cached (a job id's
array or het membership never changes); a failed lookup (no scontrol, a
timeout, an unknown id) leaves the job under its own id, is logged once per
id and counted, and is retried after ``retry_seconds``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from protos.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_COMMAND = "scontrol show job {job}"
_MAX_OUTPUT = 256 * 1024
_ID = re.compile(r"[0-9]{1,20}")
_HEAD_KEYS = ("JobId", "ArrayJobId", "ArrayTaskId", "HetJobId", "HetJobOffset")
_TOKEN = re.compile(r"(?:^|\s)(" + "|".join(_HEAD_KEYS) + r")=(\S*)")


@dataclass(frozen=True)
class SlurmJob:
    # The job compute counts under: the array or het job, or the job itself.
    job_id: str
    # The task or component within it ("4242_1", "100+1"); "" for a plain job.
    member: str = ""


def _head(record: str) -> str:
    """The part of a record before the first user-chosen value (``JobName=``)."""
    first = record.strip().split("\n", 1)[0]
    cut = re.search(r"\sJobName=", first)
    return first[: cut.start()] if cut else first


def parse_show_job(text: str, job_id: str) -> SlurmJob:
    """The job ``job_id`` counts under, from ``scontrol show job`` output
    (multi-line or ``-o`` one-line records). ``ValueError`` if the output holds
    no record of ``job_id`` or its head is malformed."""
    for record in re.split(r"\n\s*\n", text):
        fields = dict(_TOKEN.findall(_head(record)))
        if fields.get("JobId") != job_id:
            continue
        array, task = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
        het, offset = fields.get("HetJobId"), fields.get("HetJobOffset")
        if array is not None or task is not None:
            if not (array and task and _ID.fullmatch(array) and _ID.fullmatch(task)):
                raise ValueError(f"job {job_id}: ArrayJobId={array} ArrayTaskId={task}")
            return SlurmJob(array, f"{array}_{task}")
        if het is not None or offset is not None:
            if not (het and offset and _ID.fullmatch(het) and _ID.fullmatch(offset)):
                raise ValueError(f"job {job_id}: HetJobId={het} HetJobOffset={offset}")
            return SlurmJob(het, f"{het}+{offset}")
        return SlurmJob(job_id)
    raise ValueError(f"no record of job {job_id} in the output")


def command_template(command: str) -> list[str]:
    """The argv template of ``command``; it must name the job with ``{job}``."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"slurm_show_job_command {command!r}: {exc}") from exc
    if not argv or not any("{job}" in a for a in argv):
        raise ConfigError(f"slurm_show_job_command {command!r}: must contain {{job}}")
    return argv


class SlurmJobs:
    """Resolves Slurm job ids to the array or het job they belong to (see module doc)."""

    def __init__(
        self,
        command: str = DEFAULT_COMMAND,
        *,
        timeout_seconds: float = 5.0,
        retry_seconds: float = 60.0,
        cache_size: int = 4096,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._argv = command_template(command)
        self._timeout = timeout_seconds
        self._retry = retry_seconds
        self._cache_size = max(1, cache_size)
        self._monotonic = monotonic
        self._known: OrderedDict[str, SlurmJob] = OrderedDict()
        # job id -> monotonic time before which a failed lookup is not retried
        self._failed: OrderedDict[str, float] = OrderedDict()
        # Lookups that failed (command missing, timed out, non-zero exit, bad output).
        self.lookup_errors = 0

    def resolve(self, job_id: str) -> SlurmJob:
        """The job ``job_id`` counts under; itself when that cannot be found out."""
        if not _ID.fullmatch(job_id):
            return SlurmJob(job_id)
        known = self._known.get(job_id)
        if known is not None:
            self._known.move_to_end(job_id)
            return known
        now = self._monotonic()
        if self._failed.get(job_id, now) > now:
            return SlurmJob(job_id)
        try:
            found = parse_show_job(self._run(job_id), job_id)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            self.lookup_errors += 1
            if job_id not in self._failed:
                log.warning(
                    "slurm job %s: array/het lookup failed, counted as itself: %s", job_id, exc
                )
            self._failed[job_id] = now + self._retry
            self._failed.move_to_end(job_id)
            if len(self._failed) > self._cache_size:
                self._failed.popitem(last=False)
            return SlurmJob(job_id)
        self._failed.pop(job_id, None)
        self._known[job_id] = found
        if len(self._known) > self._cache_size:
            self._known.popitem(last=False)
        return found

    def _run(self, job_id: str) -> str:
        argv = [a.replace("{job}", job_id) for a in self._argv]
        # Its own process group, so a timeout kills whatever it started too.
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        ) as proc:
            try:
                out, err = proc.communicate(timeout=self._timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                raise
        if proc.returncode != 0:
            detail = err[:300].decode("utf-8", errors="replace").strip()
            raise ValueError(f"{argv[0]} exited with {proc.returncode}: {detail}")
        return out[:_MAX_OUTPUT].decode("utf-8", errors="replace")
