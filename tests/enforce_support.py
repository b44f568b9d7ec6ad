"""Helpers for enforcement tests: sealed directives, real child processes, a fake node.

Nothing of ours is replaced: directives are sealed with a real collector key,
processes are real children of the test (stopped and killed by real signals),
and the GPUs are the real ``NvmlBackend`` over ``FakeNvml``, whose process
state comes from the children's ``/proc/<pid>/stat``.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.enforce.actions import ProcessController
from agent.enforce.enforcer import Enforcer
from agent.enforce.verify import DirectiveVerifier
from agent.fakenvml.fake import FakeNvml
from agent.fakenvml.scenario import parse_scenario
from agent.nvml.backend import Snapshot
from agent.nvml.real import NvmlBackend
from agent.spool import Spool
from protos import dsse
from protos.computewatch.v1 import control_pb2, telemetry_pb2
from protos.keys import PrivateKey, PublicKey

NODE = "node-a"
OTHER = "node-b"
H100 = "NVIDIA H100 80GB HBM3"
SECOND = 1_000_000_000
T0 = 1_750_000_000 * SECOND

HALT = control_pb2.ACTION_HALT
RESUME = control_pb2.ACTION_RESUME
THROTTLE = control_pb2.ACTION_THROTTLE
TERMINATE = control_pb2.ACTION_TERMINATE
LEASE = control_pb2.ACTION_LEASE
CLUSTER = control_pb2.SCOPE_KIND_CLUSTER
NODE_SCOPE = control_pb2.SCOPE_KIND_NODE
JOB = control_pb2.SCOPE_KIND_JOB
GPU = control_pb2.SCOPE_KIND_GPU
PROHIBITED = telemetry_pb2.COMPUTE_MODE_PROHIBITED
DEFAULT = telemetry_pb2.COMPUTE_MODE_DEFAULT

SLEEPER = "import time; time.sleep(60)"
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    " print('ready', flush=True); time.sleep(60)"
)


def directive(
    action: int = HALT,
    *,
    counter: int = 1,
    directive_id: str | None = None,
    nodes: tuple[str, ...] = (NODE,),
    kind: int = NODE_SCOPE,
    jobs: tuple[str, ...] = (),
    gpus: tuple[str, ...] = (),
    cluster: str = "default",
    issued: int = T0,
    ttl_seconds: float = 3600.0,
    **fields: object,
) -> control_pb2.Directive:
    return control_pb2.Directive(
        id=directive_id or uuid.uuid4().hex,
        counter=counter,
        issued_unix_nanos=issued,
        not_after_unix_nanos=issued + int(ttl_seconds * SECOND),
        scope=control_pb2.Scope(
            kind=_any(kind), node_ids=nodes, job_ids=jobs, gpu_uuids=gpus, cluster=cluster
        ),
        action=_any(action),
        rule_id="test-rule",
        reason="test",
        **fields,  # type: ignore[arg-type]
    )


def _any(value: int) -> Any:
    """Enum fields take any int (tests send unknown values on purpose)."""
    return value


def approval(key: PrivateKey, halt_id: str, authority: str = "auth") -> bytes:
    return dsse.seal(
        control_pb2.Approval(directive_id=halt_id, approved_unix_nanos=T0, authority=authority),
        key,
    )


class Clock:
    """Injected wall clock (ns) and monotonic clock (s) that tests move by hand."""

    def __init__(self, wall_ns: int = T0, mono: float = 1000.0) -> None:
        self.wall_ns = wall_ns
        self.mono = mono

    def time_ns(self) -> int:
        return self.wall_ns

    def monotonic(self) -> float:
        return self.mono

    def fake_time(self) -> float:
        return self.wall_ns / SECOND

    def advance(self, seconds: float) -> None:
        self.wall_ns += int(seconds * SECOND)
        self.mono += seconds


def proc_state(pid: int) -> str | None:
    """Field 3 of /proc/<pid>/stat, or None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rpartition(")")[2].split()[0]


def fake_process_state(pid: int) -> str:
    """FakeNvml's view of a real child: stopped (T), gone, or running."""
    state = proc_state(pid)
    if state is None or state in ("Z", "X"):
        return "gone"
    return "stopped" if state in ("T", "t") else "running"


RUNNING: frozenset[str | None] = frozenset({"S", "R"})


def wait_state(pid: int, wanted: Collection[str | None], timeout: float = 5.0) -> str | None:
    """Poll /proc until the state is one of ``wanted`` (bounded)."""
    deadline = time.monotonic() + timeout
    state = proc_state(pid)
    while state not in wanted and time.monotonic() < deadline:
        time.sleep(0.01)
        state = proc_state(pid)
    return state


class Children:
    """Real child processes, killed and reaped in teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, code: str = SLEEPER) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        self.procs.append(p)
        if "ready" in code:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == b"ready"
        return p

    def reap(self, p: subprocess.Popen[bytes]) -> None:
        """Collect an exited child so /proc shows it gone, not a zombie."""
        p.wait(timeout=5)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
            if p.stdout is not None:
                p.stdout.close()


def scenario_doc(
    jobs: Mapping[str, tuple[int, ...]],
    gpus: int = 2,
    starts: Mapping[str, float] | None = None,
    faults: list[dict[str, object]] | None = None,
    mig: list[str] | None = None,
    slices: Mapping[str, int] | None = None,
    external_power_limit_watts: float | None = None,
) -> dict[str, object]:
    """One node (plus an idle other node) with ``gpus`` H100s and slurm jobs on given GPUs.

    ``mig``: GPU 0 has MIG enabled with these profiles; ``slices``: job -> MIG device."""
    starts = starts or {}
    slices = slices or {}
    gpu: dict[str, object] = {"model": H100, "count": gpus}
    if external_power_limit_watts is not None:
        gpu["external_power_limit_watts"] = external_power_limit_watts
    specs: list[dict[str, object]] = [gpu]
    if mig:
        rest = {**gpu, "count": gpus - 1}
        specs = [{**gpu, "count": 1, "mig": mig}, rest]
    return {
        "name": "enforce",
        "duration_seconds": 3600,
        "interval_seconds": 1,
        "nodes": [
            {"id": NODE, "gpus": specs, "faults": faults or []},
            {"id": OTHER, "gpus": [{"model": H100, "count": 1}]},
        ],
        "jobs": [
            {
                "id": job,
                "scheduler": "slurm",
                "nodes": [NODE],
                "gpu_indices": list(indices),
                "start": starts.get(job, 0),
                "utilization": [[0, 90], [3600, 90]],
                "tensor_fraction": 0.5,
                "memory_gib": 10,
                **({"mig_slice": slices[job]} if job in slices else {}),
            }
            for job, indices in jobs.items()
        ],
    }


@dataclass
class Rig:
    """A node: fake GPUs over the real backend, real children as its job processes."""

    tmp: Path
    clock: Clock
    collector: PrivateKey
    jobs: dict[str, tuple[int, ...]]
    children: Children
    authorities: list[PublicKey] = field(default_factory=list)
    quorum: int = 1
    scheduler: str = "signal"
    fail_mode: str = "open"
    pids: dict[str, int] = field(default_factory=dict)
    suspend_command: str = ""
    resume_command: str = ""
    starts: dict[str, float] = field(default_factory=dict)
    codes: dict[str, str] = field(default_factory=dict)
    faults: list[dict[str, object]] = field(default_factory=list)
    mig: list[str] | None = None
    slices: dict[str, int] = field(default_factory=dict)
    external_power_limit_watts: float | None = None

    def __post_init__(self) -> None:
        for job in self.jobs:
            if job not in self.pids:
                self.pids[job] = self.children.spawn(self.codes.get(job, SLEEPER)).pid
        self.fake = FakeNvml(
            parse_scenario(
                scenario_doc(
                    self.jobs,
                    starts=self.starts,
                    faults=self.faults,
                    mig=self.mig,
                    slices=self.slices,
                    external_power_limit_watts=self.external_power_limit_watts,
                )
            ),
            NODE,
            clock=self.clock.fake_time,
            process_state=fake_process_state,
            pids=self.pids,
        )
        # Jobs start at scenario time 0; begin a second later so a mode change
        # never coincides with a job's start.
        self.clock.advance(1.0)
        self.backend = NvmlBackend(self.fake, clock=self.clock.fake_time)
        self.spool: Spool | None = None
        self.enforcer = self.open()

    @property
    def job_of(self) -> dict[int, str]:
        return {pid: job for job, pid in self.pids.items()}

    def sample(self, *, activity: bool = True) -> Snapshot:
        """The backend's sample with processes attributed to their slurm jobs
        (the enforcer's reads, like the agent's, take no activity)."""
        snap = self.backend.sample(activity=activity)
        jobs = self.job_of
        for g in snap.gpus:
            for p in g.processes:
                p.job_id = jobs.get(p.pid, "unattributed")
                p.attribution = "slurm" if p.pid in jobs else "unattributed"
        return snap

    def open(self) -> Enforcer:
        """(Re)start the enforcer over the spool in ``tmp`` (a restarted agent)."""
        if self.spool is not None:
            self.spool.close()
        self.spool = Spool(self.tmp / "state", node_id=NODE, keyid="k" * 64, max_unacked=100)
        self.enforcer = Enforcer(
            node_id=NODE,
            verifier=DirectiveVerifier(
                NODE,
                self.collector.public,
                authority_keys=self.authorities,
                quorum=self.quorum,
            ),
            backend=self.backend,
            processes=ProcessController(
                self.scheduler,
                suspend_command=self.suspend_command,
                resume_command=self.resume_command,
            ),
            sample=lambda: self.sample(activity=False),
            store=self.spool,
            fail_mode=self.fail_mode,
            lease_grace_seconds=5.0,
            terminate_grace_seconds=2.0,
            clock_ns=self.clock.time_ns,
            monotonic=self.clock.monotonic,
        )
        return self.enforcer

    def send(
        self, d: control_pb2.Directive, key: PrivateKey | None = None
    ) -> list[telemetry_pb2.EnforcementReceipt]:
        return self.enforcer.handle(dsse.seal(d, key or self.collector))

    def gpu(self, index: int) -> telemetry_pb2.GpuSample:
        return self.sample().gpus[index]

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


def only(receipts: list[telemetry_pb2.EnforcementReceipt]) -> telemetry_pb2.EnforcementReceipt:
    assert len(receipts) == 1, receipts
    return receipts[0]


def steps(receipt: telemetry_pb2.EnforcementReceipt) -> list[tuple[str, str, bool]]:
    return [(s.step, s.target, s.ok) for s in receipt.steps]


def iter_ok(receipt: telemetry_pb2.EnforcementReceipt) -> Iterator[bool]:
    return (s.ok for s in receipt.steps)
