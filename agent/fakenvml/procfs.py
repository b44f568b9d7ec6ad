"""A fake ``/proc`` tree and job metadata files for a simulated node.

``materialize`` writes ``<root>/<pid>/cgroup``, ``stat`` and ``status`` for
each job's process on the node, with the cgroup lines each scheduler really
produces, so ``agent.attribution.JobAttributor(root)`` attributes the fake's
processes exactly as it would on a real node. ``write_job_metadata`` writes the
files a scheduler prolog would (``<dir>/<job_id>.json``) for
``agent.jobmeta.JobMetadataDir``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from agent.fakenvml.activity import pid_for
from agent.fakenvml.spec import Job, Scenario

_DIR_MODE = 0o755
_FILE_MODE = 0o644
# Boot-relative start time (clock ticks) of the first simulated process.
_START_TICKS = 100_000


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(_FILE_MODE)


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(_DIR_MODE)


def _container_id(job: Job) -> str:
    return hashlib.sha256(f"container/{job.id}".encode()).hexdigest()


def _kube_path(job: Job) -> str:
    cid = _container_id(job)
    if job.cgroup_driver == "systemd":
        uid = job.pod_uid.replace("-", "_")
        if job.qos == "guaranteed":
            return f"/kubepods.slice/kubepods-pod{uid}.slice/cri-containerd-{cid}.scope"
        return (
            f"/kubepods.slice/kubepods-{job.qos}.slice/"
            f"kubepods-{job.qos}-pod{uid}.slice/cri-containerd-{cid}.scope"
        )
    if job.qos == "guaranteed":
        return f"/kubepods/pod{job.pod_uid}/{cid}"
    return f"/kubepods/{job.qos}/pod{job.pod_uid}/{cid}"


def cgroup_text(job: Job) -> str:
    """The ``/proc/<pid>/cgroup`` content of ``job``'s process."""
    v1 = job.cgroup_version == 1
    if job.scheduler == "slurm":
        if not v1:
            return f"0::/system.slice/slurmstepd.scope/job_{job.id}/step_0/user/task_0\n"
        step = f"/slurm/uid_{job.uid}/job_{job.id}/step_0"
        return (
            f"12:pids:{step}/task_0\n11:memory:{step}/task_0\n10:devices:{step}\n"
            f"4:cpuset:{step}\n3:freezer:{step}\n"
            "1:name=systemd:/system.slice/slurmd.service\n0::/system.slice/slurmd.service\n"
        )
    if job.scheduler == "kubernetes":
        path = _kube_path(job)
    elif job.scheduler == "systemd":
        path = f"/system.slice/{job.unit}"
    else:
        path = f"/user.slice/user-{job.uid}.slice/session-3.scope"
    if not v1:
        return f"0::{path}\n"
    return f"11:memory:{path}\n10:devices:{path}\n4:cpuset:{path}\n1:name=systemd:{path}\n"


def stat_text(pid: int, comm: str, start_ticks: int) -> str:
    """A ``/proc/<pid>/stat`` line (52 fields; field 22 is the start time)."""
    head = [str(pid), f"({comm})", "S", "1", str(pid), str(pid), "0", "-1", "4194560"]
    middle = ["1200", "0", "3", "0", "4500", "800", "0", "0", "20", "0", "24", "0"]
    tail = [str(start_ticks), "34359738368", "1048576"] + ["0"] * 28
    return " ".join(head + middle + tail) + "\n"


def status_text(pid: int, comm: str, uid: int) -> str:
    """The head of a ``/proc/<pid>/status`` (proc(5): ``Uid:`` real, effective,
    saved set, filesystem uids, tab-separated)."""
    ids = "\t".join([str(uid)] * 4)
    return (
        f"Name:\t{comm}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\n"
        f"Ngid:\t0\nPid:\t{pid}\nPPid:\t1\nTracerPid:\t0\nUid:\t{ids}\nGid:\t{ids}\n"
    )


def materialize(
    scenario: Scenario,
    node_id: str,
    root: Path,
    pids: Mapping[str, int] | None = None,
    metadata_dir: Path | None = None,
) -> dict[str, int]:
    """Write the fake procfs entries of ``node_id``'s job processes under ``root``.

    Returns job id -> pid (the same pids ``FakeNvml`` lists with the same
    ``pids`` mapping). With ``metadata_dir``, also writes the node's job
    metadata files there.
    """
    scenario.node(node_id)  # raises ConfigError for an unknown node
    _mkdir(root)
    written: dict[str, int] = {}
    for job in scenario.jobs_on(node_id):
        pid = pid_for(scenario, job, pids)
        proc = root / str(pid)
        _mkdir(proc)
        _write(proc / "cgroup", cgroup_text(job))
        ticks = _START_TICKS + round(job.start * 100) + scenario.jobs.index(job)
        _write(proc / "stat", stat_text(pid, job.comm, ticks))
        _write(proc / "status", status_text(pid, job.comm, job.uid))
        written[job.id] = pid
    if metadata_dir is not None:
        write_job_metadata(scenario, metadata_dir, node_id=node_id)
    return written


def write_job_metadata(scenario: Scenario, directory: Path, node_id: str | None = None) -> None:
    """Write ``<directory>/<job_id>.json`` for each attributable job (of ``node_id``, if given).

    The file names and ``job_id`` are the attributed ids (Slurm id, pod UID,
    unit name); parents are translated the same way.
    """
    _mkdir(directory)
    jobs = scenario.jobs if node_id is None else scenario.jobs_on(node_id)
    for job in jobs:
        if job.scheduler == "none":
            continue
        record: dict[str, object] = {
            "job_id": job.attributed_id,
            "parent_job_ids": list(scenario.attributed_parents(job)),
            "model_id": job.model_id,
        }
        target = directory / f"{job.attributed_id}.json"
        tmp = target.with_name(f".{target.name}.tmp")
        _write(tmp, json.dumps(record, indent=2) + "\n")
        tmp.replace(target)
