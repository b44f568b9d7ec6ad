"""A 2-node Kubernetes run is one job, so a per-run threshold fires (issue 8 item 10).

Each node's agent attributes its processes through its own fake kubelet (a
real gRPC server on a unix socket) and pod JSON; the collector's aggregator
and rule engine see one job whose compute spans both nodes, and the halt
scope resolves to both. Attributed by pod UID, as before, each pod stays
under the threshold and nothing fires.
"""

from __future__ import annotations

from pathlib import Path

from agent.attribution import JobAttributor
from agent.fakenvml.procfs import stat_text
from agent.k8s.kubelet import PodResourcesClient
from agent.k8s.pods import PodJsonDir
from agent.k8s.resolver import PodWorkloads
from agent.k8s.workload import DEFAULT_LABEL_RULES, parse_rules
from collector.accounting.aggregate import Aggregator
from collector.accounting.snapshot import Scope
from collector.rules.engine import RuleEngine
from collector.rules.model import Action, Comparison, DecisionKind, Rule, RulePack
from collector.stop.scoping import ScopeResolver
from protos import devices
from protos.computewatch.v1 import telemetry_pb2
from tests.k8s_support import PODS, FakeKubelet, fake_kubelet

H100 = "NVIDIA H100 80GB HBM3"
PODS_ON = {
    "gpu-node-1": (
        ("team-a", "llm-pretrain-workers-0-0-x7k2p"),
        "6f1b3c2a-1d4e-4f5a-9b8c-0a1b2c3d4e01",
    ),
    "gpu-node-2": (
        ("team-a", "llm-pretrain-workers-1-0-q9m4z"),
        "6f1b3c2a-1d4e-4f5a-9b8c-0a1b2c3d4e02",
    ),
}
JOBSET = "k8s:team-a/JobSet/llm-pretrain"


def node_report(node: str, tmp_path: Path, *, kubernetes: bool) -> telemetry_pb2.NodeReport:
    (ref, uid), gpu_uuid = PODS_ON[node], f"GPU-{node}-0000-4000-8000-000000000000"
    proc = tmp_path / node / "proc" / "100"
    proc.mkdir(parents=True)
    slice_uid = uid.replace("-", "_")
    (proc / "cgroup").write_text(
        f"0::/kubepods.slice/kubepods-pod{slice_uid}.slice/cri-containerd-ab12.scope\n"
    )
    (proc / "stat").write_text(stat_text(100, "python3", 1000))
    pods = tmp_path / node / "pods"
    pods.mkdir(mode=0o755)
    pods.chmod(0o755)
    (pods / "pods.json").write_text(PODS.read_text())
    (pods / "pods.json").chmod(0o644)
    gpu = telemetry_pb2.GpuSample(
        uuid=gpu_uuid,
        product_name=H100,
        health=telemetry_pb2.GPU_HEALTH_OK,
        processes_known=True,
        utilization_gpu_percent=100.0,
    )
    gpu.processes.add(pid=100)
    with fake_kubelet(FakeKubelet({ref: {"nvidia.com/gpu": [gpu_uuid]}})) as socket:
        client = PodResourcesClient(socket, timeout_seconds=5.0)
        resolver = PodWorkloads(client, PodJsonDir(pods), parse_rules(DEFAULT_LABEL_RULES))
        attributor = JobAttributor(
            tmp_path / node / "proc", node_id=node, kubernetes=resolver if kubernetes else None
        )
        try:
            attributor.fill([gpu])
        finally:
            client.close()
    return telemetry_pb2.NodeReport(node_id=node, sequence=1, interval_seconds=10.0, gpus=[gpu])


def run(tmp_path: Path, *, kubernetes: bool) -> tuple[Aggregator, list[str]]:
    spec = devices.lookup(H100)
    assert spec is not None
    # Above one node's 10 s at peak, below two nodes'.
    threshold = 1.5 * 10.0 * spec.peak_flops
    rule = Rule(
        id="run-flop",
        description="per-run cumulative compute",
        metric="cumulative_flop",
        scope=Scope.JOB,
        comparison=Comparison.GT,
        threshold=threshold,
        unit="FLOP",
        action=Action.HALT,
    )
    engine = RuleEngine([RulePack(name="p", version="1", description="d", rules=(rule,))])
    agg = Aggregator()
    for index, node in enumerate(PODS_ON):
        agg.ingest(node_report(node, tmp_path, kubernetes=kubernetes), index, 100.0)
    fired = [d.key for d in engine.evaluate(agg.snapshot(100.5)) if d.kind is DecisionKind.FIRE]
    return agg, fired


def test_a_two_node_jobset_is_one_job_and_its_threshold_fires_on_both_nodes(
    tmp_path: Path,
) -> None:
    agg, fired = run(tmp_path, kubernetes=True)
    assert fired == [JOBSET]
    assert set(agg.jobs[JOBSET].per_node) == {"gpu-node-1", "gpu-node-2"}
    scope = ScopeResolver(agg, lambda: list(PODS_ON)).for_targets(Scope.JOB, fired)
    assert list(scope.node_ids) == ["gpu-node-1", "gpu-node-2"]


def test_attributed_by_pod_uid_each_pod_stays_below_the_threshold(tmp_path: Path) -> None:
    agg, fired = run(tmp_path, kubernetes=False)
    assert fired == []
    assert sorted(agg.jobs) == sorted(uid for _, uid in PODS_ON.values())
