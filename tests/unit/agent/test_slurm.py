"""Slurm array tasks and het components are attributed to their job (``agent.slurm``).

The ``scontrol`` here is a stand-in script (a real one needs a running
slurmctld): it prints recorded ``scontrol show job`` output from
``tests/data/slurm``, so parsing runs on Slurm's real format.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.attribution import JobAttributor
from agent.slurm import SlurmJob, SlurmJobs, parse_show_job
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import ConfigError

DATA = Path(__file__).resolve().parents[2] / "data" / "slurm"


def text(name: str) -> str:
    return (DATA / f"{name}.txt").read_text()


def test_array_task_counts_under_its_array_job() -> None:
    assert parse_show_job(text("array_task"), "4243") == SlurmJob("4242", "4242_1")


def test_het_component_counts_under_its_het_job() -> None:
    assert parse_show_job(text("het_component"), "101") == SlurmJob("100", "100+1")
    # The leader's query prints every component; the record of the asked id is used.
    assert parse_show_job(text("het_leader"), "100") == SlurmJob("100", "100+0")
    assert parse_show_job(text("het_leader"), "101") == SlurmJob("100", "100+1")


def test_plain_job_is_itself_and_one_line_output_parses() -> None:
    assert parse_show_job(text("plain_job"), "5000") == SlurmJob("5000")
    one_line = " ".join(text("array_task").split())
    assert parse_show_job(one_line, "4243") == SlurmJob("4242", "4242_1")


def test_a_job_name_cannot_claim_another_jobs_array() -> None:
    assert parse_show_job(text("forged_name"), "6001") == SlurmJob("6001")


def test_output_without_the_asked_job_or_with_a_bad_head_is_refused() -> None:
    with pytest.raises(ValueError, match="no record of job 4244"):
        parse_show_job(text("array_task"), "4244")
    with pytest.raises(ValueError, match="ArrayJobId"):
        parse_show_job("JobId=7 ArrayJobId=7 ArrayTaskId=1-9%2 JobName=x", "7")


def fake_scontrol(tmp_path: Path, body: str) -> str:
    """A stand-in ``scontrol`` (see module docstring); returns its command line."""
    script = tmp_path / "scontrol"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "calls").write_text("")
    return f"{script} show job {{job}}"


def recorded(tmp_path: Path) -> str:
    """A stand-in printing ``<tmp_path>/<job id>.txt``, logging each job id asked."""
    return fake_scontrol(
        tmp_path,
        f'echo "$3" >> {tmp_path}/calls\n'
        f'f="{tmp_path}/$3.txt"\n'
        '[ -f "$f" ] || { echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; }\n'
        'cat "$f"\n',
    )


def link_fixtures(tmp_path: Path) -> None:
    # Name recorded outputs by job id, as the stand-in looks them up.
    for job, name in (("4243", "array_task"), ("101", "het_component"), ("5000", "plain_job")):
        os.symlink(DATA / f"{name}.txt", tmp_path / f"{job}.txt")


def test_resolver_runs_the_command_once_per_job_and_caches(tmp_path: Path) -> None:
    link_fixtures(tmp_path)
    cmd = recorded(tmp_path)
    jobs = SlurmJobs(cmd, timeout_seconds=10)
    for _ in range(3):
        assert jobs.resolve("4243") == SlurmJob("4242", "4242_1")
        assert jobs.resolve("101") == SlurmJob("100", "100+1")
    assert (tmp_path / "calls").read_text().split() == ["4243", "101"]
    assert jobs.lookup_errors == 0


def test_a_failed_lookup_counts_as_itself_and_is_retried_after_the_delay(
    tmp_path: Path,
) -> None:
    now = [0.0]
    cmd = recorded(tmp_path)
    jobs = SlurmJobs(cmd, timeout_seconds=10, retry_seconds=60, monotonic=lambda: now[0])
    assert jobs.resolve("4243") == SlurmJob("4243")
    assert jobs.resolve("4243") == SlurmJob("4243")
    assert jobs.lookup_errors == 1
    os.symlink(DATA / "array_task.txt", tmp_path / "4243.txt")
    now[0] = 61.0
    assert jobs.resolve("4243") == SlurmJob("4242", "4242_1")
    assert (tmp_path / "calls").read_text().split() == ["4243", "4243"]


def test_a_hung_or_missing_command_is_a_counted_failure(tmp_path: Path) -> None:
    # A child that outlives the shell must not hold the agent past the timeout.
    hung = SlurmJobs(fake_scontrol(tmp_path, "sleep 30 &\nsleep 30\necho\n"), timeout_seconds=0.2)
    assert hung.resolve("4243") == SlurmJob("4243")
    assert hung.lookup_errors == 1
    missing = SlurmJobs(f"{tmp_path}/no-such-scontrol show job {{job}}")
    assert missing.resolve("4243") == SlurmJob("4243")
    assert missing.lookup_errors == 1


def test_a_command_without_the_job_placeholder_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\{job\}"):
        SlurmJobs("scontrol show job")


def write_proc(root: Path, pid: int, cgroup: str) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "cgroup").write_text(cgroup)
    (d / "stat").write_text(f"{pid} (python3) S " + " ".join(["0"] * 18) + f" {pid * 10} 0\n")


def test_attributor_puts_array_tasks_and_het_components_under_their_job(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    write_proc(proc, 11, "0::/system.slice/slurmstepd.scope/job_4243/step_0/user/task_0\n")
    write_proc(proc, 12, "4:memory:/slurm/uid_1001/job_101/step_0\n")
    write_proc(proc, 13, "0::/system.slice/slurmstepd.scope/job_5000/step_batch/user/task_0\n")
    write_proc(proc, 14, "0::/user.slice/user-1000.slice/session-3.scope\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    link_fixtures(bin_dir)
    cmd = recorded(bin_dir)
    attributor = JobAttributor(proc, node_id="gpu-node-07", slurm=SlurmJobs(cmd))
    gpu = telemetry_pb2.GpuSample(uuid="GPU-1")
    for pid in (11, 12, 13, 14):
        gpu.processes.add(pid=pid)
    attributor.fill([gpu])
    got = [(p.job_id, p.attribution, p.member) for p in gpu.processes]
    assert got == [
        ("4242", "slurm", "4242_1"),
        ("100", "slurm", "100+1"),
        ("5000", "slurm", ""),
        ("unattributed@gpu-node-07", "unattributed", ""),
    ]
