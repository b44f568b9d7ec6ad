"""A Kubernetes training run is one job: pods -> kubelet GPU assignments -> workload.

Real gRPC on a unix socket (a fake kubelet), pod JSON files or a loopback API
server read by the official ``kubernetes`` client, a procfs tree on disk.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.attribution import JobAttributor
from agent.attribution_setup import Attribution, register_attribution_metrics
from agent.config import AgentConfig
from agent.fakenvml.procfs import stat_text
from agent.k8s.kubelet import PodRef, PodResourcesClient, gpu_pods
from agent.k8s.pods import ApiServerPods, Pod, PodJsonDir
from agent.k8s.resolver import PodWorkloads
from agent.k8s.workload import DEFAULT_LABEL_RULES, parse_rules
from agent.report import add_members, job_ids
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import BackendError, ConfigError
from protos.k8s.podresources.v1 import api_pb2
from tests.k8s_support import PODS, FakeKubelet, fake_api_server, fake_kubelet, pod_items

GPU0 = "GPU-0a1b2c3d-0000-4000-8000-000000000000"
GPU1 = "GPU-0a1b2c3d-0000-4000-8000-000000000001"
GPU2 = "GPU-0a1b2c3d-0000-4000-8000-000000000002"
MIG = "MIG-5c6d7e8f-0000-4000-8000-000000000003"
JOBSET = "k8s:team-a/JobSet/llm-pretrain"
W0 = ("team-a", "llm-pretrain-workers-0-0-x7k2p")
W1 = ("team-a", "llm-pretrain-workers-1-0-q9m4z")
UID0 = "6f1b3c2a-1d4e-4f5a-9b8c-0a1b2c3d4e01"
UID1 = "6f1b3c2a-1d4e-4f5a-9b8c-0a1b2c3d4e02"


def pod_cgroup(uid: str) -> str:
    slice_uid = uid.replace("-", "_")
    return (
        "0::/kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{slice_uid}.slice/cri-containerd-0123abcd.scope\n"
    )


def write_proc(root: Path, pid: int, cgroup: str) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "cgroup").write_text(cgroup)
    (d / "stat").write_text(stat_text(pid, "python3", pid * 10))


def gpu(uuid: str, *pids: int, mig: str = "") -> telemetry_pb2.GpuSample:
    g = telemetry_pb2.GpuSample(uuid=uuid, mig_instance=mig, processes_known=True)
    for pid in pids:
        g.processes.add(pid=pid)
    return g


def jobs_of(gpus: list[telemetry_pb2.GpuSample]) -> list[tuple[int, str, str, str]]:
    return [(p.pid, p.job_id, p.attribution, p.member) for g in gpus for p in g.processes]


def workloads(socket: Path, pods_dir: Path, **kw: float) -> PodWorkloads:
    return PodWorkloads(
        PodResourcesClient(socket, timeout_seconds=5.0),
        PodJsonDir(pods_dir),
        parse_rules(DEFAULT_LABEL_RULES),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def pods_dir(tmp_path: Path) -> Path:
    d = tmp_path / "pods"
    d.mkdir(mode=0o755)
    d.chmod(0o755)  # whatever the umask: a world-writable one is refused
    (d / "pods.json").write_text(PODS.read_text())
    (d / "pods.json").chmod(0o644)
    return d


def test_kubelet_list_maps_gpu_mig_and_time_sliced_ids_to_pods() -> None:
    kubelet = FakeKubelet(
        {
            W0: {"nvidia.com/gpu": [GPU0], "cpu": ["3"]},
            W1: {"nvidia.com/gpu": [f"{GPU2}::0"]},
            ("team-b", "bert-ft-worker-3"): {"nvidia.com/gpu": [f"{GPU2}::1"]},
            ("team-d", "debug-shell"): {"nvidia.com/mig-1g.10gb": [MIG]},
        }
    )
    with fake_kubelet(kubelet) as socket:
        client = PodResourcesClient(socket, timeout_seconds=5.0)
        try:
            found = client.gpu_pods()
        finally:
            client.close()
    assert found == {
        GPU0: (PodRef(*W0),),
        GPU2: (PodRef("team-a", W1[1]), PodRef("team-b", "bert-ft-worker-3")),
        MIG: (PodRef("team-d", "debug-shell"),),
    }


def test_fields_we_do_not_model_are_skipped_on_the_wire() -> None:
    # Upstream ContainerDevices carries topology = 3 (TopologyInfo{nodes: [NUMANode{ID: 1}]}).
    devices = api_pb2.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=[GPU0])
    upstream = devices.SerializeToString() + bytes([0x1A, 0x04, 0x0A, 0x02, 0x08, 0x01])
    parsed = api_pb2.ContainerDevices.FromString(upstream)
    response = api_pb2.ListPodResourcesResponse()
    pod = response.pod_resources.add(name=W0[1], namespace=W0[0])
    pod.containers.add(name="c").devices.append(parsed)
    assert gpu_pods(response) == {GPU0: (PodRef(*W0),)}


def test_an_absent_kubelet_is_a_backend_error(tmp_path: Path) -> None:
    client = PodResourcesClient(tmp_path / "absent.sock", timeout_seconds=0.5)
    try:
        with pytest.raises(BackendError, match="kubelet PodResources"):
            client.gpu_pods()
    finally:
        client.close()


def test_two_pods_of_one_jobset_on_two_gpus_are_one_job(tmp_path: Path, pods_dir: Path) -> None:
    proc = tmp_path / "proc"
    write_proc(proc, 101, pod_cgroup(UID0))
    write_proc(proc, 102, pod_cgroup(UID1))
    kubelet = FakeKubelet({W0: {"nvidia.com/gpu": [GPU0]}, W1: {"nvidia.com/gpu": [GPU1]}})
    with fake_kubelet(kubelet) as socket:
        attributor = JobAttributor(
            proc, node_id="gpu-node-07", kubernetes=workloads(socket, pods_dir)
        )
        gpus = [gpu(GPU0, 101), gpu(GPU1, 102)]
        attributor.fill(gpus)
    assert jobs_of(gpus) == [
        (101, JOBSET, "kubernetes", "team-a/llm-pretrain-workers-0-0-x7k2p"),
        (102, JOBSET, "kubernetes", "team-a/llm-pretrain-workers-1-0-q9m4z"),
    ]
    assert job_ids(gpus) == [JOBSET]
    (info,) = add_members([telemetry_pb2.JobInfo(job_id=JOBSET)], gpus)
    assert list(info.members) == [
        "team-a/llm-pretrain-workers-0-0-x7k2p",
        "team-a/llm-pretrain-workers-1-0-q9m4z",
    ]


def test_a_process_without_readable_proc_takes_its_gpus_only_pod(
    tmp_path: Path, pods_dir: Path
) -> None:
    # pids 201-203 have no /proc entry (the agent sees another pid namespace).
    kubelet = FakeKubelet(
        {
            W0: {"nvidia.com/gpu": [GPU0]},
            ("team-b", "bert-ft-worker-3"): {"nvidia.com/mig-1g.10gb": [MIG]},
            W1: {"nvidia.com/gpu": [f"{GPU2}::0"]},
            ("team-d", "debug-shell"): {"nvidia.com/gpu": [f"{GPU2}::1"]},
            # DEVICE_ID_STRATEGY=index: GPU 3 by its index.
            ("team-c", "serve-lws-0-1"): {"nvidia.com/gpu": ["3"]},
        }
    )
    with fake_kubelet(kubelet) as socket:
        attributor = JobAttributor(
            tmp_path / "proc", node_id="n7", kubernetes=workloads(socket, pods_dir)
        )
        by_index = gpu("GPU-0a1b2c3d-0000-4000-8000-000000000004", 204)
        by_index.index = 3
        gpus = [gpu(GPU0, 201), gpu(GPU1, 202, mig=MIG), gpu(GPU2, 203), by_index]
        attributor.fill(gpus)
    assert jobs_of(gpus) == [
        (201, JOBSET, "kubernetes", "team-a/llm-pretrain-workers-0-0-x7k2p"),
        (202, "k8s:team-b/PyTorchJob/bert-ft", "kubernetes", "team-b/bert-ft-worker-3"),
        # A time-sliced GPU held by two pods: no guess.
        (203, "unattributed@n7", "unattributed", ""),
        (204, "k8s:team-c/LeaderWorkerSet/serve-lws", "kubernetes", "team-c/serve-lws-0-1"),
    ]


def test_a_kubelet_outage_keeps_pod_uids_counts_and_recovers(
    tmp_path: Path, pods_dir: Path
) -> None:
    proc = tmp_path / "proc"
    write_proc(proc, 101, pod_cgroup(UID0))
    now = [0.0]
    kubelet = FakeKubelet({W0: {"nvidia.com/gpu": [GPU0]}}, fail=True)
    with fake_kubelet(kubelet) as socket:
        resolver = workloads(socket, pods_dir, refresh_seconds=10.0, monotonic=lambda: now[0])
        attributor = JobAttributor(proc, node_id="n7", kubernetes=resolver)
        gpus = [gpu(GPU0, 101)]
        attributor.fill(gpus)
        assert jobs_of(gpus) == [(101, UID0, "kubernetes", "")]
        assert resolver.errors == 1
        kubelet.fail = False
        attributor.fill(gpus)  # not due yet: no call
        assert kubelet.calls == 1
        now[0] = 10.0
        attributor.fill(gpus)
    assert jobs_of(gpus) == [(101, JOBSET, "kubernetes", "team-a/llm-pretrain-workers-0-0-x7k2p")]
    assert resolver.errors == 1


def test_a_pod_recreated_under_its_name_is_reread_at_the_next_refresh(
    tmp_path: Path, pods_dir: Path
) -> None:
    proc = tmp_path / "proc"
    new_uid = "6f1b3c2a-1d4e-4f5a-9b8c-0a1b2c3d4eff"
    write_proc(proc, 101, pod_cgroup(new_uid))
    now = [0.0]
    kubelet = FakeKubelet({W0: {"nvidia.com/gpu": [GPU0]}})
    with fake_kubelet(kubelet) as socket:
        resolver = workloads(
            socket, pods_dir, refresh_seconds=1.0, pod_ttl_seconds=3600.0, monotonic=lambda: now[0]
        )
        attributor = JobAttributor(proc, node_id="n7", kubernetes=resolver)
        gpus = [gpu(GPU0, 101)]
        attributor.fill(gpus)
        assert jobs_of(gpus)[0][1] == new_uid  # the cached pod has the old UID
        (pods_dir / "pods.json").write_text(PODS.read_text().replace(UID0, new_uid))
        now[0] = 1.0
        attributor.fill(gpus)
    assert jobs_of(gpus)[0][1] == JOBSET


def test_pod_metadata_from_the_api_server_through_the_kubernetes_client() -> None:
    with fake_api_server(pod_items()) as url:
        source = ApiServerPods(host=url, timeout_seconds=5.0)
        pod = source.pod("team-b", "resnet-mpi-worker-0")
        assert pod is not None
        assert pod.uid == "7a2c4d3b-2e5f-4a6b-8c9d-1b2c3d4e5f05"
        assert pod.controller is not None
        assert (pod.controller.kind, pod.controller.name) == ("MPIJob", "resnet-mpi")
        assert pod.labels["training.kubeflow.org/operator-name"] == "mpi-operator"
        assert source.pod("team-b", "absent") is None
    with fake_api_server(pod_items(), status=403) as url, pytest.raises(BackendError, match="403"):
        ApiServerPods(host=url, timeout_seconds=5.0).pod("team-b", "resnet-mpi-worker-0")


def test_agent_config_checks_the_attribution_settings(tmp_path: Path) -> None:
    base = {"node_id": "n7", "key": tmp_path / "k"}
    with pytest.raises(ConfigError, match="k8s_workload_labels"):
        AgentConfig(**base, k8s_workload_labels=("no-kind",))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="slurm_show_job_command"):
        AgentConfig(**base, slurm_show_job_command="scontrol show job")  # type: ignore[arg-type]
    AgentConfig(**base, slurm_show_job_command="")  # type: ignore[arg-type]


def test_attribution_errors_are_exported_by_source(tmp_path: Path, pods_dir: Path) -> None:
    write_proc(tmp_path / "proc", 5, "0::/system.slice/slurmstepd.scope/job_77/step_0\n")
    (pods_dir / "junk.json").write_text("{not json")
    (pods_dir / "junk.json").chmod(0o644)
    name = "computewatch_agent_attribution_errors_total"
    kubelet = FakeKubelet({W0: {"nvidia.com/gpu": [GPU0]}})
    with fake_kubelet(kubelet) as socket:
        cfg = AgentConfig(
            node_id="n7",
            key=tmp_path / "k",
            procfs_root=tmp_path / "proc",
            k8s_attribution=True,
            k8s_pod_resources_socket=socket,
            k8s_pod_metadata_dir=pods_dir,
            k8s_refresh_seconds=0.001,
            slurm_show_job_command=f"{tmp_path}/no-scontrol show job {{job}}",
        )
        attribution = Attribution(cfg)
        registry = CollectorRegistry()
        register_attribution_metrics(registry, attribution)
        try:
            attribution.attributor.fill([gpu(GPU0, 5)])
            # The unusable pod file.
            assert registry.get_sample_value(name, {"source": "kubernetes"}) == 1.0
            assert registry.get_sample_value(name, {"source": "slurm"}) == 1.0
            assert registry.get_sample_value(name, {"source": "procfs"}) == 0.0
            kubelet.fail = True  # the kubelet answers UNAVAILABLE
            for _ in range(100):  # bounded: the refresh is due after 1 ms
                attribution.attributor.fill([gpu(GPU0, 5)])
                if registry.get_sample_value(name, {"source": "kubernetes"}) == 2.0:
                    break
        finally:
            attribution.close()
    assert registry.get_sample_value(name, {"source": "kubernetes"}) == 2.0


class CountingPods:
    """A PodSource over pod JSON files that counts lookups (API load)."""

    def __init__(self, directory: Path) -> None:
        self.inner = PodJsonDir(directory)
        self.calls = 0

    def pod(self, namespace: str, name: str) -> Pod | None:
        self.calls += 1
        return self.inner.pod(namespace, name)


def test_a_pod_the_api_does_not_show_yet_is_asked_again_at_the_next_refresh(
    tmp_path: Path,
) -> None:
    proc = tmp_path / "proc"
    write_proc(proc, 101, pod_cgroup(UID0))
    pods = tmp_path / "pods"
    pods.mkdir(mode=0o755)
    pods.chmod(0o755)
    now = [0.0]
    kubelet = FakeKubelet({W0: {"nvidia.com/gpu": [GPU0]}})
    with fake_kubelet(kubelet) as socket:
        resolver = PodWorkloads(
            PodResourcesClient(socket, timeout_seconds=5.0),
            PodJsonDir(pods),
            parse_rules(DEFAULT_LABEL_RULES),
            refresh_seconds=1.0,
            pod_ttl_seconds=3600.0,
            monotonic=lambda: now[0],
        )
        attributor = JobAttributor(proc, node_id="n7", kubernetes=resolver)
        gpus = [gpu(GPU0, 101)]
        attributor.fill(gpus)
        assert jobs_of(gpus)[0][1] == UID0
        (pods / "pods.json").write_text(PODS.read_text())
        (pods / "pods.json").chmod(0o644)
        now[0] = 1.0
        attributor.fill(gpus)
    assert jobs_of(gpus)[0][1] == JOBSET


def test_a_process_of_a_pod_without_a_gpu_assignment_forces_one_reread_only(
    tmp_path: Path, pods_dir: Path
) -> None:
    proc = tmp_path / "proc"
    write_proc(proc, 101, pod_cgroup(UID0))
    # A pod that took GPUs around the device plugin (NVIDIA_VISIBLE_DEVICES=all).
    write_proc(proc, 102, pod_cgroup("9c4e6f5d-4a7b-4c8d-8e1f-3d4e5f6a7b10"))
    now = [0.0]
    source = CountingPods(pods_dir)
    kubelet = FakeKubelet({W0: {"nvidia.com/gpu": [GPU0]}})
    with fake_kubelet(kubelet) as socket:
        resolver = PodWorkloads(
            PodResourcesClient(socket, timeout_seconds=5.0),
            source,
            parse_rules(DEFAULT_LABEL_RULES),
            refresh_seconds=1.0,
            pod_ttl_seconds=3600.0,
            monotonic=lambda: now[0],
        )
        attributor = JobAttributor(proc, node_id="n7", kubernetes=resolver)
        gpus = [gpu(GPU0, 101, 102)]
        for tick in range(5):
            now[0] = float(tick)
            attributor.fill(gpus)
    # First read, one forced re-read for the unknown UID, then the cache.
    assert source.calls == 2
    assert jobs_of(gpus)[1][1] == "9c4e6f5d-4a7b-4c8d-8e1f-3d4e5f6a7b10"
    assert jobs_of(gpus)[0][1] == JOBSET


def test_without_api_credentials_the_agent_refuses_to_start(tmp_path: Path) -> None:
    cfg = AgentConfig(
        node_id="n7",
        key=tmp_path / "k",
        k8s_attribution=True,
        k8s_kubeconfig=tmp_path / "absent-kubeconfig",
    )
    with pytest.raises(ConfigError, match="kubernetes client configuration"):
        Attribution(cfg)


class FlakyApi:
    """A PodSource over pod JSON files whose API can go down (counts lookups)."""

    def __init__(self, directory: Path) -> None:
        self.inner = PodJsonDir(directory)
        self.down = False
        self.calls = 0

    def pod(self, namespace: str, name: str) -> Pod | None:
        self.calls += 1
        if self.down:
            raise BackendError("API server: 503 Service Unavailable")
        return self.inner.pod(namespace, name)


def test_an_api_outage_keeps_known_pods_workloads_and_asks_once_per_refresh(
    tmp_path: Path, pods_dir: Path
) -> None:
    proc = tmp_path / "proc"
    write_proc(proc, 101, pod_cgroup(UID0))
    write_proc(proc, 102, pod_cgroup(UID1))
    now = [0.0]
    api = FlakyApi(pods_dir)
    kubelet = FakeKubelet({W0: {"nvidia.com/gpu": [GPU0]}})
    with fake_kubelet(kubelet) as socket:
        resolver = PodWorkloads(
            PodResourcesClient(socket, timeout_seconds=5.0),
            api,
            parse_rules(DEFAULT_LABEL_RULES),
            refresh_seconds=1.0,
            pod_ttl_seconds=1.0,
            monotonic=lambda: now[0],
        )
        attributor = JobAttributor(proc, node_id="n7", kubernetes=resolver)
        gpus = [gpu(GPU0, 101), gpu(GPU1, 102)]
        attributor.fill(gpus)
        api.down = True
        # W1 starts on GPU1 while the API is down.
        kubelet.pods[W1] = {"nvidia.com/gpu": [GPU1]}
        calls = api.calls
        now[0] = 2.0
        attributor.fill(gpus)
    assert jobs_of(gpus) == [
        (101, JOBSET, "kubernetes", "team-a/llm-pretrain-workers-0-0-x7k2p"),
        (102, UID1, "kubernetes", ""),
    ]
    assert api.calls == calls + 1
    assert resolver.errors == 1
