"""Every job carries its actor (``agent.actors``): Slurm account or user, pod
namespace or label, a unit's owner, mapped by the operator's actors file.

Real formats throughout: ``scontrol show job`` output (recorded, printed by a
stand-in ``scontrol``: a real one needs a running slurmctld), cgroup, stat and
status files in a procfs tree on disk, and pod metadata through a fake kubelet
on a unix socket (real gRPC) with pod JSON files.
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from agent.actors import ActorPolicy, Organisation, add_actors, load_policy, parse_policy
from agent.attribution import JobAttributor
from agent.fakenvml.procfs import materialize, stat_text, status_text
from agent.fakenvml.scenario import load_scenario
from agent.k8s.kubelet import PodResourcesClient
from agent.k8s.pods import PodJsonDir
from agent.k8s.resolver import PodWorkloads
from agent.k8s.workload import DEFAULT_LABEL_RULES, parse_rules
from agent.report import job_ids
from agent.slurm import SlurmJobs
from protos.actors import commitment, valid_actor_id
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import ConfigError
from tests.k8s_support import PODS, FakeKubelet, fake_kubelet

SLURM_DATA = Path(__file__).resolve().parents[2] / "data" / "slurm"
SCENARIOS = Path(__file__).resolve().parents[2] / "data" / "scenarios"
SALT = "00112233445566778899aabbccddeeff"
ACME_LEI = "5493001KJTIIGC8Y1R12"
ACTORS_FILE = f"""
publish: public_id
salt: {SALT}
actors:
  - organisation: Acme AI Ltd
    lei: {ACME_LEI}
    match: [account:ml, namespace:team-a, uid:1000]
  - organisation: Beta Labs
    match: [uid:2000, label:beta]
"""
GPU0 = "GPU-0a1b2c3d-0000-4000-8000-000000000000"
GPU1 = "GPU-0a1b2c3d-0000-4000-8000-000000000001"
GPU2 = "GPU-0a1b2c3d-0000-4000-8000-000000000002"


def policy(text: str = ACTORS_FILE) -> ActorPolicy:
    return parse_policy(text, Path("actors.yaml"))


def beta() -> str:
    return commitment(bytes.fromhex(SALT), "org:Beta Labs")


def write_proc(root: Path, pid: int, cgroup: str, uid: int) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "cgroup").write_text(cgroup)
    (d / "stat").write_text(stat_text(pid, "python3", pid * 10))
    (d / "status").write_text(status_text(pid, "python3", uid))


def gpu(uuid: str, *pids: int) -> telemetry_pb2.GpuSample:
    g = telemetry_pb2.GpuSample(uuid=uuid, processes_known=True)
    for pid in pids:
        g.processes.add(pid=pid)
    return g


def actors_of(gpus: list[telemetry_pb2.GpuSample]) -> dict[int, tuple[str, str]]:
    return {p.pid: (p.job_id, p.actor) for g in gpus for p in g.processes}


# --- the actors file -----------------------------------------------------------------
def test_public_id_publishes_an_lei_and_commits_to_everything_else() -> None:
    p = policy()
    assert p.published("account:ml") == f"lei:{ACME_LEI}"
    assert p.published("uid:2000") == beta()
    # An unmapped key is its own actor, committed under the salt: never merged.
    own = p.published("account:other")
    assert own == commitment(bytes.fromhex(SALT), "account:other")
    assert own not in (beta(), f"lei:{ACME_LEI}")
    assert p.published("") == ""
    assert all(valid_actor_id(a) for a in (own, beta(), f"lei:{ACME_LEI}"))


def test_commitment_mode_hides_even_an_lei_and_name_mode_shows_names() -> None:
    hidden = policy(ACTORS_FILE.replace("publish: public_id", "publish: commitment"))
    assert hidden.published("account:ml") == commitment(bytes.fromhex(SALT), f"lei:{ACME_LEI}")
    clear = policy(ACTORS_FILE.replace("publish: public_id", "publish: name"))
    assert clear.published("uid:2000") == "org:Beta Labs"
    assert clear.published("account:other") == "org:account:other"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("publish: public_id", "publish: everything"), "publish 'everything'"),
        ((f"salt: {SALT}", "salt: 00ff"), "salt must be at least 16 bytes"),
        ((f"salt: {SALT}", "salt: zz"), "salt must be hex"),
        ((ACME_LEI, "5493001KJTIIGC8Y1R13"), "not an ISO 17442 LEI"),
        (("label:beta", "account:ml"), "already mapped to Acme AI Ltd"),
        (("uid:2000", "gid:2000"), "expected account:, uid:, namespace:, label: or annotation:"),
        (("actors:", "actor:"), "unknown keys"),
    ],
)
def test_a_bad_actors_file_is_a_config_error_naming_the_entry(
    edit: tuple[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        policy(ACTORS_FILE.replace(*edit))


def test_load_policy_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"actors file .*missing.yaml: cannot read"):
        load_policy(tmp_path / "missing.yaml")
    (tmp_path / "a.yaml").write_text(ACTORS_FILE)
    assert load_policy(tmp_path / "a.yaml").mapping["uid:1000"] == Organisation(
        "Acme AI Ltd", ACME_LEI
    )


# --- sources -----------------------------------------------------------------------------
def stand_in_scontrol(tmp_path: Path) -> str:
    """A stand-in ``scontrol`` printing ``<dir>/<job>.txt`` (recorded real output)."""
    d = tmp_path / "slurm"
    d.mkdir()
    for job, name in (("4243", "array_task"), ("7001", "forged_account"), ("5000", "plain_job")):
        shutil.copy(SLURM_DATA / f"{name}.txt", d / f"{job}.txt")
    script = tmp_path / "scontrol"
    script.write_text(f'#!/bin/sh\nf="{d}/$3.txt"\n[ -f "$f" ] || exit 1\ncat "$f"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return f"{script} show job {{job}}"


def test_slurm_jobs_carry_their_account_or_else_their_user(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    step = "0::/system.slice/slurmstepd.scope/job_{}/step_0/user/task_0\n"
    write_proc(proc, 11, step.format(4243), uid=1000)  # array task of 4242, Account=ml
    write_proc(proc, 12, step.format(7001), uid=1003)  # forged job name, Account=mallory-lab
    write_proc(proc, 13, step.format(5000), uid=2000)  # no Account line: the user
    slurm = SlurmJobs(stand_in_scontrol(tmp_path), timeout_seconds=10)
    attributor = JobAttributor(proc, node_id="n0", slurm=slurm, actors=policy())
    gpus = [gpu(GPU0, 11), gpu(GPU1, 12), gpu(GPU2, 13)]
    attributor.fill(gpus)
    salt = bytes.fromhex(SALT)
    assert actors_of(gpus) == {
        11: ("4242", f"lei:{ACME_LEI}"),
        12: ("7001", commitment(salt, "account:mallory-lab")),
        13: ("5000", beta()),
    }
    jobs = add_actors([telemetry_pb2.JobInfo(job_id=j) for j in job_ids(gpus)], gpus)
    assert {j.job_id: j.actor for j in jobs} == {
        "4242": f"lei:{ACME_LEI}",
        "5000": beta(),
        "7001": commitment(salt, "account:mallory-lab"),
    }


def test_a_units_owner_is_its_actor_and_an_unattributed_process_has_none(
    tmp_path: Path,
) -> None:
    proc = tmp_path / "proc"
    write_proc(proc, 21, "0::/system.slice/batch-infer.service\n", uid=2000)
    write_proc(proc, 22, "0::/user.slice/user-1000.slice/session-3.scope\n", uid=1000)
    attributor = JobAttributor(proc, node_id="n0", actors=policy())
    gpus = [gpu(GPU0, 21), gpu(GPU1, 22)]
    attributor.fill(gpus)
    # The notebook's owner is Acme's uid 1000, but no scheduler vouches for the
    # process: unknown, never Acme's.
    assert actors_of(gpus) == {21: ("batch-infer.service", beta()), 22: ("unattributed@n0", "")}


def test_without_an_actors_file_no_actor_is_sent(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    write_proc(proc, 21, "0::/system.slice/batch-infer.service\n", uid=2000)
    gpus = [gpu(GPU0, 21)]
    JobAttributor(proc, node_id="n0").fill(gpus)
    assert actors_of(gpus) == {21: ("batch-infer.service", "")}


def test_pods_carry_their_namespace_or_actor_label_or_annotation(tmp_path: Path) -> None:
    pods = json.loads(PODS.read_text())
    items = pods["items"] if isinstance(pods, dict) else pods
    for item in items:
        if item["metadata"]["name"] == "bert-ft-worker-3":
            item["metadata"]["labels"]["example.org/actor"] = "beta"
        if item["metadata"]["name"] == "llama-sft-node-0-0-abcde":
            # An annotation outranks the label and the namespace; a long JSON blob
            # (as controllers store) is never an actor.
            item["metadata"]["labels"]["example.org/actor"] = "beta"
            item["metadata"].setdefault("annotations", {}).update(
                {"example.org/org": "Gamma", "kubectl.kubernetes.io/last-applied": "{" * 500}
            )
    pods_dir = tmp_path / "pods"
    pods_dir.mkdir(mode=0o755)
    pods_dir.chmod(0o755)
    (pods_dir / "pods.json").write_text(json.dumps(pods))
    (pods_dir / "pods.json").chmod(0o644)
    proc = tmp_path / "proc"

    def pod_cgroup(uid: str) -> str:
        return (
            "0::/kubepods.slice/kubepods-besteffort.slice/"
            f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice/cri-containerd-0123.scope\n"
        )

    write_proc(proc, 31, pod_cgroup("6f1b3c2a-1d4e-4f5a-9b8c-0a1b2c3d4e01"), uid=0)
    write_proc(proc, 32, pod_cgroup("7a2c4d3b-2e5f-4a6b-8c9d-1b2c3d4e5f03"), uid=0)
    write_proc(proc, 33, pod_cgroup("8b3d5e4c-3f6a-4b7c-9d0e-2c3d4e5f6a06"), uid=0)
    kubelet = FakeKubelet(
        {
            ("team-a", "llm-pretrain-workers-0-0-x7k2p"): {"nvidia.com/gpu": [GPU0]},
            ("team-b", "bert-ft-worker-3"): {"nvidia.com/gpu": [GPU1]},
            ("team-c", "llama-sft-node-0-0-abcde"): {"nvidia.com/gpu": [GPU2]},
        }
    )
    with fake_kubelet(kubelet) as socket:
        workloads = PodWorkloads(
            PodResourcesClient(socket, timeout_seconds=5.0),
            PodJsonDir(pods_dir),
            parse_rules(DEFAULT_LABEL_RULES),
            actor_label="example.org/actor",
            actor_annotation="example.org/org",
        )
        attributor = JobAttributor(proc, node_id="n0", kubernetes=workloads, actors=policy())
        gpus = [gpu(GPU0, 31), gpu(GPU1, 32), gpu(GPU2, 33)]
        attributor.fill(gpus)
    assert actors_of(gpus) == {
        31: ("k8s:team-a/JobSet/llm-pretrain", f"lei:{ACME_LEI}"),
        32: ("k8s:team-b/PyTorchJob/bert-ft", beta()),
        33: (
            "k8s:team-c/TrainJob/llama-sft",
            commitment(bytes.fromhex(SALT), "annotation:Gamma"),
        ),
    }


def test_a_simulated_node_reports_each_jobs_owner(tmp_path: Path) -> None:
    """FakeNvml -> NvmlBackend -> attribution with actors, as the agent wires them."""
    from agent.fakenvml import FakeNvml
    from agent.nvml.real import NvmlBackend

    scenario = load_scenario(SCENARIOS / "schedulers.yaml")
    pids = materialize(scenario, "n0", tmp_path / "proc")
    fake = FakeNvml(scenario, "n0", clock=lambda: 1005.0, pids=pids, start=1000.0)
    gpus = list(NvmlBackend(fake).sample().gpus)
    JobAttributor(tmp_path / "proc", node_id="n0", actors=policy()).fill(gpus)
    jobs = {
        j.job_id: j.actor
        for j in add_actors([telemetry_pb2.JobInfo(job_id=j) for j in job_ids(gpus)], gpus)
    }
    # Every job of the scenario runs as uid 1000 (Acme's): the Slurm and systemd
    # jobs are owned by it. A pod is not: a container's uid says nothing of who
    # runs it, and without the kubelet resolver there is no namespace, so unknown.
    slurm_and_systemd = [
        j.attributed_id for j in scenario.jobs if j.scheduler in ("slurm", "systemd")
    ]
    pods = [j.attributed_id for j in scenario.jobs if j.scheduler == "kubernetes"]
    assert {jobs[j] for j in slurm_and_systemd} == {f"lei:{ACME_LEI}"}
    assert {jobs[j] for j in pods} == {""}


def test_an_unreadable_status_keeps_the_job_and_leaves_the_owner_unknown(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    write_proc(proc, 21, "0::/system.slice/batch-infer.service\n", uid=2000)
    (proc / "21" / "status").unlink()
    attributor = JobAttributor(proc, node_id="n0", actors=policy())
    gpus = [gpu(GPU0, 21)]
    attributor.fill(gpus)
    assert actors_of(gpus) == {21: ("batch-infer.service", "")}
    assert attributor.read_errors == 1
