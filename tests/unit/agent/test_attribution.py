"""pid -> cgroup -> job, for every scheduler layout, over a fake /proc tree."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.attribution import (
    SOURCES,
    UNATTRIBUTED,
    Attribution,
    JobAttributor,
    parse_cgroup,
    start_time,
)
from agent.fakenvml import load_scenario
from agent.fakenvml.procfs import materialize, stat_text
from protos.computewatch.v1 import telemetry_pb2

DATA = Path(__file__).parents[2] / "data" / "scenarios"
UID = "1f0e2d3c-4b5a-4697-8a8b-9c0d1e2f3a4b"
UID_ = UID.replace("-", "_")
CID = "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Slurm, cgroup v2 (slurmstepd.scope under system.slice).
        (
            "0::/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0\n",
            Attribution("4242", "slurm"),
        ),
        # Slurm, cgroup v1 (hybrid: the v2 line names slurmd's own unit).
        (
            "12:pids:/slurm/uid_1000/job_4243/step_0/task_0\n"
            "11:memory:/slurm/uid_1000/job_4243/step_0/task_0\n"
            "1:name=systemd:/system.slice/slurmd.service\n"
            "0::/system.slice/slurmd.service\n",
            Attribution("4243", "slurm"),
        ),
        # Slurm with several slurmd per host (v1: slurm_<node>).
        ("4:cpuset:/slurm_n07/uid_0/job_77/step_batch\n", Attribution("77", "slurm")),
        # Kubernetes, systemd driver, burstable / besteffort / guaranteed.
        (
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
            f"cri-containerd-{CID}.scope\n",
            Attribution(UID, "kubernetes"),
        ),
        (
            f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
            f"crio-{CID}.scope\n",
            Attribution(UID, "kubernetes"),
        ),
        (
            f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
            Attribution(UID, "kubernetes"),
        ),
        # Kubernetes, cgroupfs driver, v1 and v2.
        (
            f"11:memory:/kubepods/burstable/pod{UID}/{CID}\n1:name=systemd:/kubepods/burstable/"
            f"pod{UID}/{CID}\n",
            Attribution(UID, "kubernetes"),
        ),
        (f"0::/kubepods/pod{UID.upper()}/{CID}\n", Attribution(UID, "kubernetes")),
        # systemd units, v2 and v1.
        ("0::/system.slice/batch-infer.service\n", Attribution("batch-infer.service", "systemd")),
        (
            "11:memory:/system.slice/train@3.service\n1:name=systemd:/system.slice/train@3.service",
            Attribution("train@3.service", "systemd"),
        ),
        ("0::/system.slice/run-u42.scope\n", Attribution("run-u42.scope", "systemd")),
        # No scheduler.
        ("0::/user.slice/user-1000.slice/session-3.scope\n", UNATTRIBUTED),
        ("0::/\n", UNATTRIBUTED),
        ("", UNATTRIBUTED),
        ("garbage without colons\n", UNATTRIBUTED),
        # A user cannot claim a job from their own delegated subtree.
        (
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/job_4242/step_0\n",
            UNATTRIBUTED,
        ),
        (f"0::/user.slice/user-1000.slice/kubepods/pod{UID}/x\n", UNATTRIBUTED),
        ("0::/user.slice/user-1000.slice/user@1000.service/fake.service\n", UNATTRIBUTED),
    ],
)
def test_parse_every_layout(text: str, expected: Attribution) -> None:
    assert parse_cgroup(text) == expected


def test_start_time_is_field_22_even_with_odd_process_names() -> None:
    assert start_time(stat_text(42, "py (x) 3", 123456)) == 123456
    assert start_time("42 (x) S 1") is None
    assert start_time("no parens") is None


def test_every_scheduler_in_a_materialized_tree(tmp_path: Path) -> None:
    scenario = load_scenario(DATA / "schedulers.yaml")
    pids = materialize(scenario, "n0", tmp_path)
    attributor = JobAttributor(tmp_path)
    for job in scenario.jobs:
        got = attributor.attribute(pids[job.id])
        expected_source = "unattributed" if job.scheduler == "none" else job.scheduler
        assert got == Attribution(job.attributed_id, expected_source), job.id


def write_proc(root: Path, pid: int, cgroup: str, start: int = 1000) -> Path:
    proc = root / str(pid)
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "cgroup").write_text(cgroup)
    (proc / "stat").write_text(stat_text(pid, "python3", start))
    return proc


SLURM = "0::/system.slice/slurmstepd.scope/job_{}/step_0/user/task_0\n"


def test_missing_pid_is_unattributed(tmp_path: Path) -> None:
    attributor = JobAttributor(tmp_path)
    assert attributor.attribute(99) == UNATTRIBUTED
    assert attributor.attribute(0) == UNATTRIBUTED
    assert attributor.refused_world_writable == 0


@pytest.mark.parametrize("target", ["cgroup", "stat", "dir"])
def test_world_writable_is_refused(
    tmp_path: Path, target: str, caplog: pytest.LogCaptureFixture
) -> None:
    proc = write_proc(tmp_path, 10, SLURM.format(1))
    path = proc if target == "dir" else proc / target
    path.chmod(0o777 if target == "dir" else 0o666)
    attributor = JobAttributor(tmp_path)
    with caplog.at_level(logging.WARNING, logger="agent.attribution"):
        assert attributor.attribute(10) == UNATTRIBUTED
        assert attributor.attribute(10) == UNATTRIBUTED
    assert attributor.refused_world_writable == 2
    assert len([r for r in caplog.records if "world-writable" in r.getMessage()]) == 1


def test_world_writable_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "proc"
    write_proc(root, 10, SLURM.format(1))
    root.chmod(0o1777)
    attributor = JobAttributor(root)
    assert attributor.attribute(10) == UNATTRIBUTED
    assert attributor.refused_world_writable == 1
    root.chmod(0o755)
    assert attributor.attribute(10) == Attribution("1", "slurm")


def test_symlinked_cgroup_file_is_not_followed(tmp_path: Path) -> None:
    proc = write_proc(tmp_path, 10, SLURM.format(1))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(SLURM.format(666))
    (proc / "cgroup").unlink()
    (proc / "cgroup").symlink_to(elsewhere)
    attributor = JobAttributor(tmp_path)
    assert attributor.attribute(10) == UNATTRIBUTED
    assert attributor.read_errors == 1


def test_pid_reuse_is_detected_by_start_time(tmp_path: Path) -> None:
    write_proc(tmp_path, 10, SLURM.format(1), start=1000)
    attributor = JobAttributor(tmp_path)
    assert attributor.attribute(10).job_id == "1"
    # Same process (same start time): the cached answer stands.
    (tmp_path / "10" / "cgroup").write_text(SLURM.format(2))
    assert attributor.attribute(10).job_id == "1"
    # The pid now belongs to a new process: looked up afresh.
    write_proc(tmp_path, 10, SLURM.format(3), start=2000)
    assert attributor.attribute(10).job_id == "3"


def test_unattributed_is_not_cached(tmp_path: Path) -> None:
    write_proc(tmp_path, 10, "0::/user.slice/user-1000.slice/session-1.scope\n")
    attributor = JobAttributor(tmp_path)
    assert attributor.attribute(10) == UNATTRIBUTED
    (tmp_path / "10" / "cgroup").write_text(SLURM.format(5))  # moved into its job
    assert attributor.attribute(10).job_id == "5"


def test_cache_is_bounded(tmp_path: Path) -> None:
    attributor = JobAttributor(tmp_path, cache_size=3)
    for pid in range(1, 11):
        write_proc(tmp_path, pid, SLURM.format(pid), start=pid)
        assert attributor.attribute(pid).job_id == str(pid)
    assert len(attributor._cache) == 3
    assert attributor.attribute(1).job_id == "1"  # evicted, read again


def test_fill_sets_every_process_in_place(tmp_path: Path) -> None:
    write_proc(tmp_path, 10, SLURM.format(4242))
    write_proc(tmp_path, 11, "0::/system.slice/batch-infer.service\n")
    gpus = [telemetry_pb2.GpuSample(index=i) for i in range(2)]
    gpus[0].processes.add(pid=10)
    gpus[0].processes.add(pid=12)  # no such pid
    gpus[1].processes.add(pid=10)
    gpus[1].processes.add(pid=11)
    JobAttributor(tmp_path).fill(gpus)
    got = [(p.pid, p.job_id, p.attribution) for g in gpus for p in g.processes]
    assert got == [
        (10, "4242", "slurm"),
        (12, "unattributed", "unattributed"),
        (10, "4242", "slurm"),
        (11, "batch-infer.service", "systemd"),
    ]


# --- properties --------------------------------------------------------------------------
_component = st.sampled_from(
    [
        "system.slice",
        "slurmstepd.scope",
        "job_4242",
        "job_",
        "step_0",
        "slurm",
        "uid_1000",
        "kubepods",
        "kubepods.slice",
        "burstable",
        f"pod{UID}",
        f"kubepods-burstable-pod{UID_}.slice",
        "x.service",
        "user.slice",
        "",
        "..",
    ]
) | st.text(max_size=20)
_line = st.builds(
    lambda n, ctrl, parts: f"{n}:{ctrl}:/" + "/".join(parts),
    st.integers(0, 12),
    st.sampled_from(["", "memory", "name=systemd", "cpu,cpuacct"]),
    st.lists(_component, max_size=8),
)


def _valid(result: Attribution) -> None:
    assert result.source in SOURCES
    assert result.job_id
    assert "/" not in result.job_id
    assert "\n" not in result.job_id
    if result.source == "unattributed":
        assert result == UNATTRIBUTED


@given(st.lists(_line, max_size=6).map("\n".join))
def test_parse_cgroup_on_cgroup_like_text(text: str) -> None:
    _valid(parse_cgroup(text))


@given(st.text(max_size=500))
def test_parse_cgroup_never_raises_on_any_text(text: str) -> None:
    _valid(parse_cgroup(text))
    start_time(text)


def test_a_simulated_node_end_to_end(tmp_path: Path) -> None:
    """FakeNvml -> NvmlBackend -> attribution -> job metadata, as the agent wires them."""
    from agent.fakenvml import FakeNvml
    from agent.jobmeta import JobMetadataDir
    from agent.nvml.real import NvmlBackend

    scenario = load_scenario(DATA / "schedulers.yaml")
    pids = materialize(scenario, "n0", tmp_path / "proc", metadata_dir=tmp_path / "meta")
    fake = FakeNvml(scenario, "n0", clock=lambda: 1005.0, pids=pids, start=1000.0)
    gpus = NvmlBackend(fake).sample().gpus
    JobAttributor(tmp_path / "proc").fill(gpus)
    found = [(p.job_id, p.attribution) for g in gpus for p in g.processes]
    assert found == [
        (j.attributed_id, "unattributed" if j.scheduler == "none" else j.scheduler)
        for j in scenario.jobs
    ]
    ids = [job_id for job_id, _ in found]
    infos = {i.job_id: i for i in JobMetadataDir(tmp_path / "meta").jobs(ids)}
    assert list(infos["4243"].parent_job_ids) == ["4242"]
    assert "unattributed" not in infos
