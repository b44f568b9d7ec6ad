"""The steps of enforcement, each returning an ``EnforcementStep`` for the receipt.

``GpuActions`` changes compute mode and power limit through the GPU backend.
``ProcessController`` stops, continues and terminates the processes that hold
GPUs: by signal (SIGSTOP/SIGCONT), through Slurm (``scontrol suspend|resume
<job>``) or through a command template with ``{job}``/``{pid}`` placeholders.
Under a scheduler, processes whose job the scheduler does not know (no
attribution, or an id it could not accept) are stopped by signal: a halt
stops everything in scope.

No step raises: a failure is a step with ``ok = False`` and a reason, so the
receipt says exactly what happened. Before any signal, the pid is checked at
that moment against what was recorded when it was planned: its start time
(``/proc/<pid>/stat`` field 22), so a reused pid is never signalled, and its
cgroup (``/proc/<pid>/cgroup``), so a process that left the job's cgroup (or a
pid that never was the job's: a garbled NVML answer) is never signalled either.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.attribution import parse_cgroup
from agent.nvml.backend import GpuBackend, PowerLimits
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import BackendError, ConfigError
from protos.jobs import is_unattributed

log = logging.getLogger(__name__)

SCHEDULERS = ("signal", "slurm", "command")
DEFAULT_COMMAND_TIMEOUT_SECONDS = 30.0
_SLURM_JOB = re.compile(r"^[0-9]+(_[0-9]+)?$")
_DETAIL_CHARS = 300
# /proc/<pid>/cgroup is a few lines; more than this is not a cgroup file.
_CGROUP_MAX_BYTES = 64 * 1024


def step(name: str, target: str, ok: bool, detail: str = "") -> telemetry_pb2.EnforcementStep:
    return telemetry_pb2.EnforcementStep(
        step=name, target=target, ok=ok, detail=detail[:_DETAIL_CHARS]
    )


class GpuActions:
    """Compute mode and power limit changes, as receipt steps."""

    def __init__(self, backend: GpuBackend) -> None:
        self._backend = backend
        # GPUs changed since the owner last cleared this (a snapshot taken
        # before such a change shows the old values: not a drift).
        self.touched: set[str] = set()

    def set_mode(
        self, uuid: str, mode: telemetry_pb2.ComputeMode, name: str = "compute_mode"
    ) -> telemetry_pb2.EnforcementStep:
        label = telemetry_pb2.ComputeMode.Name(mode)
        self.touched.add(uuid)
        try:
            self._backend.set_compute_mode(uuid, mode)
        except BackendError as exc:
            log.error("compute mode %s on %s failed: %s", label, uuid, exc)  # noqa: TRY400
            return step(name, uuid, False, f"{label}: {exc}")
        return step(name, uuid, True, label)

    def limits(self, uuid: str) -> PowerLimits | str:
        """The GPU's power limits, or why they could not be read."""
        try:
            return self._backend.power_limits(uuid)
        except BackendError as exc:
            return str(exc)

    def set_power(
        self, uuid: str, watts: float, name: str = "power_cap", note: str = ""
    ) -> telemetry_pb2.EnforcementStep:
        self.touched.add(uuid)
        try:
            self._backend.set_power_limit(uuid, watts)
        except BackendError as exc:
            log.error("power limit %.0f W on %s failed: %s", watts, uuid, exc)  # noqa: TRY400
            return step(name, uuid, False, f"{watts:.0f} W: {exc}")
        return step(name, uuid, True, f"{watts:.0f} W{note}")


@dataclass(frozen=True)
class Target:
    """What to stop: one pid (signal or per-pid command) or one job (scheduler)."""

    kind: str  # "pid" | "job"
    job: str
    pid: int
    method: str  # "signal" | "slurm" | "command"
    start_time: int | None
    # /proc/<pid>/cgroup when planned (None: unreadable, or a job target).
    cgroup: str | None = None

    @property
    def key(self) -> str:
        return f"pid:{self.pid}" if self.kind == "pid" else f"job:{self.job}"

    @property
    def label(self) -> str:
        return str(self.pid) if self.kind == "pid" else self.job


class ProcessController:
    """Stops and continues GPU processes, by signal or through a scheduler."""

    def __init__(
        self,
        scheduler: str = "signal",
        *,
        suspend_command: str = "",
        resume_command: str = "",
        procfs_root: Path = Path("/proc"),
        scontrol: str = "scontrol",
        command_timeout_seconds: float = DEFAULT_COMMAND_TIMEOUT_SECONDS,
    ) -> None:
        if scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler {scheduler!r}: expected one of {', '.join(SCHEDULERS)}")
        self.scheduler = scheduler
        self._procfs = procfs_root
        self._timeout = command_timeout_seconds
        self._own_pid = os.getpid()
        self._suspend: list[str] = []
        self._resume: list[str] = []
        self._per_pid = False
        if scheduler == "slurm":
            self._suspend = [scontrol, "suspend", "{job}"]
            self._resume = [scontrol, "resume", "{job}"]
        elif scheduler == "command":
            self._suspend = _template("suspend_command", suspend_command)
            self._resume = _template("resume_command", resume_command)
            self._per_pid = any("{pid}" in a for a in self._suspend)
            if not self._per_pid and not any("{job}" in a for a in self._suspend):
                raise ConfigError("suspend_command: must contain {job} or {pid}")

    # --- planning ----------------------------------------------------------------------
    def plan(self, processes: Iterable[telemetry_pb2.GpuProcess]) -> list[Target]:
        """One target per job the scheduler can suspend, one per other pid; no duplicates."""
        targets: dict[str, Target] = {}
        for p in processes:
            t = self._target(p)
            targets.setdefault(t.key, t)
        return list(targets.values())

    def _target(self, p: telemetry_pb2.GpuProcess) -> Target:
        pid = int(p.pid)
        job = "" if is_unattributed(p.job_id) else p.job_id
        if self.scheduler == "slurm" and job and p.attribution == "slurm":
            # An array task is suspended as itself ("4242_1"): each node holds
            # its own tasks, never the whole array's from one node.
            unit = p.member if _SLURM_JOB.match(p.member) else job
            if _SLURM_JOB.match(unit):
                return Target("job", unit, 0, "slurm", None)
        if self.scheduler == "command":
            if self._per_pid:
                return Target("pid", job, pid, "command", self.start_time(pid), self.cgroup(pid))
            if job and _safe_arg(job):
                return Target("job", job, 0, "command", None)
        return Target("pid", job, pid, "signal", self.start_time(pid), self.cgroup(pid))

    # --- stop and continue ---------------------------------------------------------------
    def stop(self, t: Target) -> telemetry_pb2.EnforcementStep:
        if t.method == "signal":
            return self._signal(
                "stop_process", t.pid, signal.SIGSTOP, t.start_time, cgroup=t.cgroup, job=t.job
            )
        return self._run("scheduler_suspend", self._suspend, t)

    def resume(self, t: Target) -> telemetry_pb2.EnforcementStep:
        if t.method == "signal":
            return self._signal(
                "resume_process", t.pid, signal.SIGCONT, t.start_time, cgroup=t.cgroup, job=t.job
            )
        return self._run("scheduler_resume", self._resume, t)

    def terminate(
        self, pid: int, start_time: int | None, cgroup: str | None = None
    ) -> telemetry_pb2.EnforcementStep:
        """SIGTERM, then SIGCONT so a stopped process can run its handler and exit."""
        s = self._signal("terminate_process", pid, signal.SIGTERM, start_time, cgroup=cgroup)
        if s.ok and self.alive(pid, start_time):
            self._signal("resume_process", pid, signal.SIGCONT, start_time, cgroup=cgroup)
        return s

    def kill(
        self, pid: int, start_time: int | None, cgroup: str | None = None
    ) -> telemetry_pb2.EnforcementStep:
        return self._signal("kill_process", pid, signal.SIGKILL, start_time, cgroup=cgroup)

    # --- /proc ---------------------------------------------------------------------------
    def _stat(self, pid: int) -> list[str] | None:
        try:
            raw = (self._procfs / str(pid) / "stat").read_text()
        except (OSError, UnicodeDecodeError):
            return None
        # Field 2 (comm) may hold spaces and parentheses: split after the last ')'.
        _, paren, rest = raw.rpartition(")")
        fields = rest.split()
        return fields if paren and len(fields) >= 20 else None

    def start_time(self, pid: int) -> int | None:
        """Field 22 of /proc/<pid>/stat (clock ticks after boot), or None."""
        fields = self._stat(pid)
        if fields is None:
            return None
        try:
            return int(fields[19])
        except ValueError:
            return None

    def cgroup(self, pid: int) -> str | None:
        """The content of /proc/<pid>/cgroup, or None when it cannot be read."""
        try:
            with (self._procfs / str(pid) / "cgroup").open("rb") as f:
                raw = f.read(_CGROUP_MAX_BYTES + 1)
        except OSError:
            return None
        if len(raw) > _CGROUP_MAX_BYTES:
            return None
        return raw.decode("utf-8", errors="replace")

    def _cgroup_refusal(self, pid: int, cgroup: str | None, job: str) -> str | None:
        """Why ``pid`` must not be signalled now, judged by its cgroup; None if it may."""
        now = self.cgroup(pid)
        if now is None:
            return "its cgroup cannot be read"
        if cgroup is not None:
            if now != cgroup:
                return "it left the cgroup it was in when the halt planned it"
            return None
        # No cgroup on record (planned before it was kept): the job must still match.
        found = parse_cgroup(now).job_id
        if is_unattributed(found) and is_unattributed(job):
            return None
        if found != job:
            return f"its cgroup now belongs to {found!r}, not {job!r}"
        return None

    def state(self, pid: int) -> str | None:
        """Field 3 of /proc/<pid>/stat ('R', 'S', 'T', 'Z', ...), or None if gone."""
        fields = self._stat(pid)
        return None if fields is None else fields[0]

    def alive(self, pid: int, start_time: int | None) -> bool:
        """The same process (by start time) exists and is not a zombie."""
        fields = self._stat(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return False
        return start_time is None or self.start_time(pid) == start_time

    # --- helpers -------------------------------------------------------------------------
    def _signal(
        self,
        name: str,
        pid: int,
        sig: signal.Signals,
        start_time: int | None,
        *,
        cgroup: str | None = None,
        job: str = "",
    ) -> telemetry_pb2.EnforcementStep:
        target = str(pid)
        if pid <= 1 or pid == self._own_pid:
            return step(name, target, False, f"refusing to send {sig.name} to pid {pid}")
        if not self.alive(pid, start_time):
            # Gone (or a new process reusing the pid): nothing of ours to signal.
            return step(name, target, True, f"{sig.name} not sent: process gone")
        refusal = self._cgroup_refusal(pid, cgroup, job)
        if refusal is not None:
            log.error("%s to pid %d refused: %s", sig.name, pid, refusal)
            return step(name, target, False, f"{sig.name} not sent: {refusal}")
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return step(name, target, True, f"{sig.name} not sent: process gone")
        except OSError as exc:
            log.error("%s to pid %d failed: %s", sig.name, pid, exc)  # noqa: TRY400
            return step(name, target, False, f"{sig.name}: {exc.strerror or exc}")
        return step(name, target, True, sig.name)

    def _run(self, name: str, template: Sequence[str], t: Target) -> telemetry_pb2.EnforcementStep:
        argv = [a.format(job=t.job, pid=t.pid) for a in template]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=self._timeout, check=False)
        except FileNotFoundError as exc:
            return step(name, t.label, False, f"{argv[0]}: not found ({exc.strerror})")
        except subprocess.TimeoutExpired:
            return step(
                name, t.label, False, f"{shlex.join(argv)}: no answer in {self._timeout:g} s"
            )
        except OSError as exc:
            return step(name, t.label, False, f"{argv[0]}: {exc}")
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip() or done.stdout.decode(
                errors="replace"
            )
            log.error("%s failed (exit %d): %s", shlex.join(argv), done.returncode, err)
            return step(name, t.label, False, f"exit {done.returncode}: {err.strip()}")
        return step(name, t.label, True, shlex.join(argv))


def _safe_arg(value: str) -> bool:
    """A job id that cannot be mistaken for an option or carry control characters."""
    return bool(value) and not value.startswith("-") and value.isprintable()


def _template(key: str, command: str) -> list[str]:
    if not command.strip():
        raise ConfigError(f"{key}: required when scheduler is 'command'")
    try:
        argv = shlex.split(command)
        for arg in argv:
            arg.format(job="1", pid=1)
    except (ValueError, KeyError, IndexError) as exc:
        raise ConfigError(
            f"{key}: {command!r} is not a command template with only {{job}} and {{pid}}"
            f" placeholders ({exc})"
        ) from exc
    return argv
