"""Build the agent's job attributor from its config, and export its error counts.

``computewatch_agent_attribution_errors_total{source}`` counts lookups that
left a process less attributed than it could be: ``procfs`` (a world-writable
or unreadable ``/proc`` entry), ``slurm`` (an array/het lookup that failed;
the task counts as its own job) and ``kubernetes`` (the kubelet or the API
server unreadable, or a pod JSON file unusable; processes keep their pod UID as
their job).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from agent.attribution import JobAttributor
from agent.config import AgentConfig
from agent.k8s.kubelet import PodResourcesClient
from agent.k8s.pods import ApiServerPods, PodJsonDir, PodSource
from agent.k8s.resolver import PodWorkloads
from agent.k8s.workload import parse_rules
from agent.slurm import SlurmJobs


class Attribution:
    """The attributor and the resolvers behind it (for metrics and ``close``)."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.slurm: SlurmJobs | None = None
        self.kubernetes: PodWorkloads | None = None
        self._kubelet: PodResourcesClient | None = None
        self._pod_files: PodJsonDir | None = None
        if cfg.slurm_show_job_command:
            self.slurm = SlurmJobs(
                cfg.slurm_show_job_command, timeout_seconds=cfg.slurm_command_timeout_seconds
            )
        if cfg.k8s_attribution:
            self._kubelet = PodResourcesClient(
                cfg.k8s_pod_resources_socket, resources=cfg.k8s_gpu_resources
            )
            pods: PodSource
            if cfg.k8s_pod_metadata_dir is not None:
                pods = self._pod_files = PodJsonDir(cfg.k8s_pod_metadata_dir)
            else:
                api = ApiServerPods(kubeconfig=cfg.k8s_kubeconfig)
                api.connect()  # a missing client or credentials: fail at start
                pods = api
            self.kubernetes = PodWorkloads(
                self._kubelet,
                pods,
                parse_rules(cfg.k8s_workload_labels),
                refresh_seconds=cfg.k8s_refresh_seconds,
            )
        self.attributor = JobAttributor(
            cfg.procfs_root, node_id=cfg.node_id, slurm=self.slurm, kubernetes=self.kubernetes
        )

    def errors(self) -> dict[str, int]:
        a = self.attributor
        return {
            "procfs": a.refused_world_writable + a.read_errors,
            "slurm": self.slurm.lookup_errors if self.slurm is not None else 0,
            "kubernetes": (self.kubernetes.errors if self.kubernetes is not None else 0)
            + (self._pod_files.malformed if self._pod_files is not None else 0),
        }

    def close(self) -> None:
        if self._kubelet is not None:
            self._kubelet.close()


class AttributionMetrics(Collector):
    def __init__(self, attribution: Attribution) -> None:
        self._attribution = attribution

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "computewatch_agent_attribution_errors",
            "Job attribution lookups that failed, by source (procfs, slurm, kubernetes).",
            labels=["source"],
        )
        for source, n in sorted(self._attribution.errors().items()):
            family.add_metric([source], n)
        yield family


def register_attribution_metrics(registry: CollectorRegistry, attribution: Attribution) -> None:
    registry.register(AttributionMetrics(attribution))
