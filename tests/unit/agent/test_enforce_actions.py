"""Process control with real child processes: signals, scheduler hooks, pid reuse."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.enforce.actions import ProcessController, Target
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import ConfigError
from tests.enforce_support import STUBBORN, Children, proc_state, wait_state


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    yield c
    c.close()


def gpu_proc(pid: int, job: str = "", attribution: str = "") -> telemetry_pb2.GpuProcess:
    return telemetry_pb2.GpuProcess(pid=pid, job_id=job, attribution=attribution)


def test_signal_stop_and_resume_a_real_process(children: Children) -> None:
    p = children.spawn()
    pc = ProcessController("signal")
    (t,) = pc.plan([gpu_proc(p.pid, "42", "slurm")])
    assert (t.kind, t.method, t.pid) == ("pid", "signal", p.pid)
    assert t.start_time == pc.start_time(p.pid)
    s = pc.stop(t)
    assert s.ok, s.detail
    assert s.detail == "SIGSTOP"
    assert wait_state(p.pid, {"T"}) == "T"
    assert pc.resume(t).ok
    assert wait_state(p.pid, {"S", "R"}) in ("S", "R")


def test_terminate_ends_a_process_even_when_it_was_stopped(children: Children) -> None:
    p = children.spawn()
    pc = ProcessController()
    start = pc.start_time(p.pid)
    pc.stop(pc.plan([gpu_proc(p.pid)])[0])
    assert wait_state(p.pid, {"T"}) == "T"
    assert pc.terminate(p.pid, start).ok
    assert p.wait(timeout=5) == -15
    assert not pc.alive(p.pid, start)


def test_kill_ends_a_process_that_ignores_sigterm(children: Children) -> None:
    p = children.spawn(STUBBORN)
    pc = ProcessController()
    start = pc.start_time(p.pid)
    assert pc.terminate(p.pid, start).ok
    assert pc.alive(p.pid, start)  # SIGTERM ignored
    s = pc.kill(p.pid, start)
    assert (s.step, s.ok, s.detail) == ("kill_process", True, "SIGKILL")
    assert p.wait(timeout=5) == -9


def test_a_reused_pid_is_never_signalled(children: Children) -> None:
    """A start time that does not match means another process has the pid now."""
    p = children.spawn()
    pc = ProcessController()
    t = Target("pid", "", p.pid, "signal", (pc.start_time(p.pid) or 0) + 1)
    s = pc.stop(t)
    assert s.ok
    assert "gone" in s.detail
    assert proc_state(p.pid) in ("S", "R")


def test_gone_processes_and_forbidden_pids() -> None:
    pc = ProcessController()
    assert "gone" in pc.resume(Target("pid", "", 2**22 + 17, "signal", None)).detail
    for pid in (0, 1, os.getpid()):
        s = pc.kill(pid, None)
        assert not s.ok
        assert "refusing" in s.detail


def script(tmp: Path, name: str, body: str) -> Path:
    path = tmp / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


LOGGER = "import sys; open(sys.argv[0] + '.log', 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"


def test_slurm_suspends_and_resumes_jobs_with_scontrol(tmp_path: Path, children: Children) -> None:
    scontrol = script(tmp_path, "scontrol", LOGGER)
    a, b = children.spawn(), children.spawn()
    pc = ProcessController("slurm", scontrol=str(scontrol))
    targets = pc.plan(
        [
            gpu_proc(a.pid, "4242", "slurm"),
            gpu_proc(a.pid, "4242", "slurm"),  # same job on a second GPU: one target
            gpu_proc(b.pid, "unattributed", "unattributed"),  # not Slurm's: by signal
        ]
    )
    assert [(t.kind, t.method, t.label) for t in targets] == [
        ("job", "slurm", "4242"),
        ("pid", "signal", str(b.pid)),
    ]
    assert all(pc.stop(t).ok for t in targets)
    assert pc.resume(targets[0]).ok
    assert (tmp_path / "scontrol.log").read_text() == "suspend 4242\nresume 4242\n"
    assert wait_state(b.pid, {"T"}) == "T"


def test_slurm_suspends_an_array_task_as_itself_and_a_het_component_by_its_job(
    children: Children,
) -> None:
    a, b = children.spawn(), children.spawn()
    pc = ProcessController("slurm")
    task = telemetry_pb2.GpuProcess(pid=a.pid, job_id="4242", attribution="slurm", member="4242_1")
    het = telemetry_pb2.GpuProcess(pid=b.pid, job_id="100", attribution="slurm", member="100+1")
    assert [(t.kind, t.method, t.label) for t in pc.plan([task, het])] == [
        ("job", "slurm", "4242_1"),
        ("job", "slurm", "100"),
    ]


def test_slurm_never_passes_an_option_like_job_id_to_scontrol(children: Children) -> None:
    p = children.spawn()
    (t,) = ProcessController("slurm").plan([gpu_proc(p.pid, "--help", "slurm")])
    assert t.method == "signal"


def test_a_failing_scheduler_command_is_a_failed_step(tmp_path: Path) -> None:
    broken = script(
        tmp_path, "scontrol", "import sys; print('no such job', file=sys.stderr); sys.exit(3)\n"
    )
    pc = ProcessController("slurm", scontrol=str(broken))
    s = pc.stop(Target("job", "7", 0, "slurm", None))
    assert not s.ok
    assert "exit 3" in s.detail
    assert "no such job" in s.detail
    missing = ProcessController("slurm", scontrol=str(tmp_path / "absent"))
    assert "not found" in missing.stop(Target("job", "7", 0, "slurm", None)).detail


def test_command_templates_per_job_and_per_pid(tmp_path: Path, children: Children) -> None:
    hook = script(tmp_path, "hook", LOGGER)
    p = children.spawn()
    per_job = ProcessController(
        "command", suspend_command=f"{hook} pause {{job}}", resume_command=f"{hook} go {{job}}"
    )
    (t,) = per_job.plan([gpu_proc(p.pid, "pod uid with spaces", "kubernetes")])
    assert per_job.stop(t).ok
    assert per_job.resume(t).ok
    per_pid = ProcessController(
        "command",
        suspend_command=f"{hook} freeze {{pid}} {{job}}",
        resume_command=f"{hook} thaw {{pid}}",
    )
    (t2,) = per_pid.plan([gpu_proc(p.pid, "j1", "systemd")])
    assert (t2.kind, t2.method) == ("pid", "command")
    assert per_pid.stop(t2).ok
    # Placeholders fill whole argv elements: a job id with spaces stays one argument.
    assert (tmp_path / "hook.log").read_text() == (
        f"pause pod uid with spaces\ngo pod uid with spaces\nfreeze {p.pid} j1\n"
    )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"scheduler": "pbs"}, "scheduler"),
        ({"scheduler": "command"}, "suspend_command"),
        ({"scheduler": "command", "suspend_command": "x {job}"}, "resume_command"),
        ({"scheduler": "command", "suspend_command": "x", "resume_command": "y"}, "{job}"),
        ({"scheduler": "command", "suspend_command": "x {user}", "resume_command": "y"}, "{pid}"),
        ({"scheduler": "command", "suspend_command": "x 'open", "resume_command": "y"}, "template"),
    ],
)
def test_bad_scheduler_settings_are_config_errors(kw: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ProcessController(**kw)  # type: ignore[arg-type]


# --- the cgroup is checked at the moment of each signal ------------------------------------
def _slurm_cgroup(job: str) -> str:
    return f"0::/system.slice/slurmstepd.scope/job_{job}/step_0/user/task_0\n"


def _fake_proc(root: Path, pid: int, cgroup: str) -> None:
    """A fake /proc entry for a real child: its real stat line, a chosen cgroup."""
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "stat").write_text(Path(f"/proc/{pid}/stat").read_text())
    (d / "cgroup").write_text(cgroup)


def test_a_process_that_left_its_jobs_cgroup_is_never_signalled(
    tmp_path: Path, children: Children
) -> None:
    p = children.spawn()
    root = tmp_path / "proc"
    _fake_proc(root, p.pid, _slurm_cgroup("42"))
    pc = ProcessController(procfs_root=root)
    (t,) = pc.plan([gpu_proc(p.pid, "42", "slurm")])
    assert t.cgroup == _slurm_cgroup("42")
    # Between planning and the signal, the pid moves to another job's cgroup.
    _fake_proc(root, p.pid, _slurm_cgroup("43"))
    s = pc.stop(t)
    assert (s.step, s.ok) == ("stop_process", False)
    assert "SIGSTOP not sent" in s.detail
    assert "left the cgroup" in s.detail
    assert proc_state(p.pid) in ("S", "R")
    start = pc.start_time(p.pid)
    for refused in (pc.terminate(p.pid, start, t.cgroup), pc.kill(p.pid, start, t.cgroup)):
        assert not refused.ok
    assert p.poll() is None
    # An unreadable cgroup is no proof either.
    (root / str(p.pid) / "cgroup").unlink()
    assert "cannot be read" in pc.stop(t).detail
    assert proc_state(p.pid) in ("S", "R")
    # Back in its job's cgroup: the halt goes through.
    _fake_proc(root, p.pid, _slurm_cgroup("42"))
    assert pc.stop(t).ok
    assert wait_state(p.pid, {"T"}) == "T"
    assert pc.resume(t).ok


def test_without_a_recorded_cgroup_the_pid_must_still_be_in_its_job(
    tmp_path: Path, children: Children
) -> None:
    """A target saved before cgroups were recorded: the job is checked instead."""
    p = children.spawn()
    root = tmp_path / "proc"
    _fake_proc(root, p.pid, _slurm_cgroup("43"))
    pc = ProcessController(procfs_root=root)
    t = Target("pid", "42", p.pid, "signal", pc.start_time(p.pid))
    s = pc.stop(t)
    assert not s.ok
    assert "belongs to '43', not '42'" in s.detail
    _fake_proc(root, p.pid, _slurm_cgroup("42"))
    assert pc.stop(t).ok
    assert wait_state(p.pid, {"T"}) == "T"
    assert pc.resume(t).ok
