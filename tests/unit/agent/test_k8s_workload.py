"""A pod's workload and job id (``agent.k8s.workload``, ``agent.k8s.pods``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.k8s.pods import BadPodError, PodJsonDir, parse_pod
from agent.k8s.workload import DEFAULT_LABEL_RULES, job_id, parse_rules, workload_of
from protos.errors import BackendError, ConfigError

PODS = Path(__file__).resolve().parents[2] / "data" / "k8s" / "pods.json"
RULES = parse_rules(DEFAULT_LABEL_RULES)


def items() -> list[dict[str, object]]:
    data = json.loads(PODS.read_text())
    return list(data["items"])


@pytest.mark.parametrize(
    ("pod_name", "expected"),
    [
        # Two pods of one JobSet (each in its own child Job) are one job.
        ("llm-pretrain-workers-0-0-x7k2p", "k8s:team-a/JobSet/llm-pretrain"),
        ("llm-pretrain-workers-1-0-q9m4z", "k8s:team-a/JobSet/llm-pretrain"),
        ("bert-ft-worker-3", "k8s:team-b/PyTorchJob/bert-ft"),
        # An MPIJob's launcher (in a Job) and workers are one job.
        ("resnet-mpi-launcher-5xv8d", "k8s:team-b/MPIJob/resnet-mpi"),
        ("resnet-mpi-worker-0", "k8s:team-b/MPIJob/resnet-mpi"),
        # A TrainJob runs a JobSet: the TrainJob is the run.
        ("llama-sft-node-0-0-abcde", "k8s:team-c/TrainJob/llama-sft"),
        ("serve-lws-0-1", "k8s:team-c/LeaderWorkerSet/serve-lws"),
        (
            "rayjob-sample-raycluster-v8xkp-gpu-group-worker-2lqfn",
            "k8s:team-d/RayJob/rayjob-sample",
        ),
        # No workload label: the controller owner (a ReplicaSet stands for its Deployment).
        ("notebook-7d9f8c6b5-kx2vq", "k8s:team-d/Deployment/notebook"),
        ("debug-shell", "k8s:team-d/Pod/debug-shell"),
    ],
)
def test_each_controllers_pods_resolve_to_their_workload(pod_name: str, expected: str) -> None:
    pods = {p.name: p for p in map(parse_pod, items())}
    assert workload_of(pods[pod_name], RULES).job_id == expected


def test_operator_rules_replace_the_defaults_in_order() -> None:
    pod = parse_pod(items()[0])
    rules = parse_rules(
        ["batch.kubernetes.io/job-name=Job", "jobset.sigs.k8s.io/jobset-name=JobSet"]
    )
    assert workload_of(pod, rules).job_id == "k8s:team-a/Job/llm-pretrain-workers-0"
    rules = parse_rules(["example.com/run=Run"])
    assert workload_of(pod, rules).job_id == "k8s:team-a/Job/llm-pretrain-workers-0"


@pytest.mark.parametrize("entry", ["no-kind", "=Job", "key=not a kind", "key=", "k=1Job"])
def test_a_malformed_label_rule_is_a_config_error(entry: str) -> None:
    with pytest.raises(ConfigError, match="workload label rule"):
        parse_rules([entry])


def test_a_label_value_kubernetes_would_refuse_is_not_a_workload_name() -> None:
    data = items()[9]
    data["metadata"]["labels"] = {"jobset.sigs.k8s.io/jobset-name": "../../etc"}  # type: ignore[index]
    assert workload_of(parse_pod(data), RULES).job_id == "k8s:team-d/Pod/debug-shell"


def test_long_job_ids_are_bounded_and_stay_distinct() -> None:
    a = job_id("ns", "JobSet", "a" * 250)
    b = job_id("ns", "JobSet", "a" * 249 + "b")
    assert len(a) == len(b) == 255
    assert a != b
    assert job_id("ns", "Job", "x") == "k8s:ns/Job/x"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("metadata", "namespace"), "Team_A"),
        (("metadata", "name"), ""),
        (("metadata", "uid"), "not-a-uid"),
        (("metadata", "labels"), ["a"]),
        (("metadata", "ownerReferences"), {"kind": "Job"}),
        (("kind",), "Service"),
    ],
)
def test_malformed_pods_are_refused(path: tuple[str, ...], value: object) -> None:
    data: dict[str, object] = items()[0]
    target = data
    for key in path[:-1]:
        target = target[key]  # type: ignore[assignment]
    target[path[-1]] = value
    with pytest.raises(BadPodError):
        parse_pod(data)


def test_pod_json_dir_reads_lists_and_single_pods_and_follows_changes(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "all.json").write_text(PODS.read_text())
    single = items()[0]
    single["metadata"]["name"] = "extra-pod"  # type: ignore[index]
    (tmp_path / "one.json").write_text(json.dumps(single))
    (tmp_path / "junk.json").write_text("{not json")
    for f in tmp_path.iterdir():
        f.chmod(0o644)
    source = PodJsonDir(tmp_path)
    pod = source.pod("team-b", "bert-ft-worker-3")
    assert pod is not None
    assert pod.uid == "7a2c4d3b-2e5f-4a6b-8c9d-1b2c3d4e5f03"
    assert source.pod("team-a", "extra-pod") is not None
    assert source.pod("team-a", "absent") is None
    assert source.malformed == 1
    (tmp_path / "one.json").unlink()
    assert source.pod("team-a", "extra-pod") is None


def test_pod_json_dir_refuses_world_writable_files_and_directories(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "all.json").write_text(PODS.read_text())
    (tmp_path / "all.json").chmod(0o666)
    source = PodJsonDir(tmp_path)
    assert source.pod("team-b", "bert-ft-worker-3") is None
    assert source.malformed == 1
    (tmp_path / "all.json").chmod(0o644)
    assert source.pod("team-b", "bert-ft-worker-3") is not None
    tmp_path.chmod(0o777)
    try:
        with pytest.raises(BackendError, match="world-writable"):
            source.pod("team-b", "bert-ft-worker-3")
    finally:
        tmp_path.chmod(0o755)
