"""Compute density: installed, allocated and achieved FLOP/s, cumulative FLOP.

Per GPU: installed = the model's dense peak (``protos.devices``), unknown for
a model not in the table; allocated = installed while any compute process
holds the GPU; achieved = peak x activity, where activity is GPM tensor
activity when the GPU has it (method ``gpm_tensor``) and ``utilization.gpu``
otherwise (method ``utilization_upper_bound``: a kernel ran, not that the
tensor cores were busy). Per job: achieved is the GPU's achieved split by the
processes' SM shares where every process has one (``collector.shares``), evenly
among the jobs on it otherwise; cumulative FLOP integrates achieved over each report's
interval (the EU guidelines' hardware method, C = N x L x H x U).

Only committed reports are ingested. Figures of a silent node are unknown.
MIG devices count at the parent's peak x their SM share and their parent's
jobs and activity are not counted again (``collector.mig``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from collector import mig
from collector.shares import activity_shares
from collector.snapshot import CLUSTER_KEY, Scope, Snapshot
from protos import devices
from protos.computewatch.v1 import telemetry_pb2

METHOD_TENSOR = "gpm_tensor"
METHOD_UTILIZATION = "utilization_upper_bound"
_EVIDENCE_PER_JOB = 32


@dataclass(frozen=True)
class GpuFigures:
    uuid: str
    index: int
    product: str
    model: str | None
    installed: float | None
    allocated: float | None
    achieved: float | None
    method: str
    utilization: float | None
    power_watts: float | None
    lost: bool
    compute_mode: int
    jobs: tuple[str, ...]
    # A MIG device: its parent GPU's uuid (its figures are in the parent's too).
    parent_uuid: str = ""
    # Each job's fraction of the achieved figure (per-process SM shares); (): even.
    job_shares: tuple[float, ...] = ()


@dataclass
class NodeState:
    node_id: str
    last_received: float = 0.0
    last_index: int = -1
    last_sequence: int = 0
    interval: float = 1.0
    # Intervals of the last few reports: silence is judged on the longest, so
    # an out-of-cycle report (an enforcement receipt, a few ms after the last
    # one) does not make a node look silent before its next regular report.
    recent_intervals: deque[float] = field(default_factory=lambda: deque(maxlen=8))
    gpus: list[GpuFigures] = field(default_factory=list)
    enforcement: telemetry_pb2.EnforcementState = field(
        default_factory=telemetry_pb2.EnforcementState
    )
    nvml_status: int = 0
    chain_breaks: int = 0
    reports: int = 0
    # Jobs with a process on this node in its last report.
    jobs: set[str] = field(default_factory=set)


@dataclass
class JobState:
    """A job's figures. ``upper_bound``: some of its GPUs report no GPM tensor
    activity now, so its achieved figure rests on ``utilization.gpu``."""

    job_id: str
    cumulative_flop: float = 0.0
    # Nodes whose last report measured this job with utilization.gpu (no GPM
    # tensor activity): its current figures there are an upper bound.
    upper_nodes: set[str] = field(default_factory=set)
    # node id -> (achieved FLOP/s, allocated FLOP/s, GPUs, GPUs of unknown model)
    # from that node's last report
    per_node: dict[str, tuple[float, float, int, int]] = field(default_factory=dict)
    parents: tuple[str, ...] = ()
    model_id: str = ""
    evidence: deque[int] = field(default_factory=lambda: deque(maxlen=_EVIDENCE_PER_JOB))
    capability: dict[str, float] = field(default_factory=dict)

    @property
    def upper_bound(self) -> bool:
        return bool(self.upper_nodes)


def gpu_figures(
    gpu: telemetry_pb2.GpuSample, lookup: Callable[[str], devices.DeviceSpec | None]
) -> GpuFigures:
    spec = lookup(gpu.product_name)
    peak = spec.peak_flops * mig.sample_share(gpu) if spec else None
    lost = gpu.health == telemetry_pb2.GPU_HEALTH_LOST
    readable = gpu.health == telemetry_pb2.GPU_HEALTH_OK
    jobs = tuple(sorted({p.job_id or "unattributed" for p in gpu.processes}))
    allocated: float | None = None
    if peak is not None and readable and gpu.processes_known:
        allocated = peak if gpu.processes else 0.0
    activity: float | None = None
    method = METHOD_UTILIZATION
    if readable and gpu.HasField("tensor_activity_percent"):
        activity, method = gpu.tensor_activity_percent, METHOD_TENSOR
    elif readable and gpu.HasField("utilization_gpu_percent"):
        activity = gpu.utilization_gpu_percent
    achieved = None
    if peak is not None and activity is not None:
        achieved = peak * min(max(activity, 0.0), 100.0) / 100.0
    return GpuFigures(
        uuid=gpu.uuid,
        index=gpu.index,
        product=gpu.product_name,
        model=spec.model if spec else None,
        installed=peak,
        allocated=allocated,
        achieved=achieved,
        method=method,
        utilization=gpu.utilization_gpu_percent
        if readable and gpu.HasField("utilization_gpu_percent")
        else None,
        power_watts=gpu.power_watts if gpu.HasField("power_watts") else None,
        lost=lost,
        compute_mode=gpu.compute_mode,
        jobs=jobs,
        parent_uuid=gpu.parent_uuid,
        job_shares=activity_shares(gpu, jobs),
    )


def _sum(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


class Aggregator:
    """Folds committed reports into per GPU, node, job and cluster figures."""

    def __init__(
        self,
        *,
        lookup: Callable[[str], devices.DeviceSpec | None] = devices.lookup,
        silent_after_intervals: float = 3.0,
        max_interval_seconds: float = 60.0,
        expected_interval_seconds: float = 0.0,
    ) -> None:
        self._lookup = lookup
        self._silent_after = silent_after_intervals
        self._max_interval = max_interval_seconds
        # The collector's configured agent interval: a floor for the silence clock.
        self._expected_interval = expected_interval_seconds
        self.nodes: dict[str, NodeState] = {}
        self.jobs: dict[str, JobState] = {}

    def enroll(self, node_id: str) -> None:
        """Track an enrolled node before it reports (it shows as never seen)."""
        self.nodes.setdefault(node_id, NodeState(node_id))

    def note_chain_break(self, node_id: str) -> None:
        self.nodes.setdefault(node_id, NodeState(node_id)).chain_breaks += 1

    def ingest(self, report: telemetry_pb2.NodeReport, log_index: int, received_at: float) -> None:
        node = self.nodes.setdefault(report.node_id, NodeState(report.node_id))
        interval = min(max(report.interval_seconds, 0.0), self._max_interval)
        node.last_received = received_at
        node.last_index = log_index
        node.last_sequence = report.sequence
        node.interval = interval or node.interval
        node.recent_intervals.append(node.interval)
        node.enforcement = report.enforcement
        node.nvml_status = report.nvml_status
        node.reports += 1
        node.gpus = mig.fold(
            [gpu_figures(g, self._lookup) for g in report.gpus], METHOD_TENSOR, METHOD_UTILIZATION
        )

        per_job: dict[str, list[float]] = {}
        upper: set[str] = set()
        for fig in node.gpus:
            if not fig.jobs:
                continue
            share = 1.0 / len(fig.jobs)
            for i, name in enumerate(fig.jobs):
                acc = per_job.setdefault(name, [0.0, 0.0, 0.0, 0.0])
                acc[0] += (fig.achieved or 0.0) * (fig.job_shares[i] if fig.job_shares else share)
                acc[1] += (fig.allocated or 0.0) * share
                acc[2] += 1
                acc[3] += fig.model is None
                if fig.method == METHOD_UTILIZATION:
                    upper.add(name)
        for job_id, (achieved, allocated, gpus, unknown) in per_job.items():
            job = self._job(job_id)
            job.per_node[node.node_id] = (achieved, allocated, int(gpus), int(unknown))
            job.cumulative_flop += achieved * interval
            if job_id in upper:
                job.upper_nodes.add(node.node_id)
            else:
                job.upper_nodes.discard(node.node_id)
            job.evidence.append(log_index)
        for gone in node.jobs - per_job.keys():
            self.jobs[gone].per_node.pop(node.node_id, None)
            self.jobs[gone].upper_nodes.discard(node.node_id)
        node.jobs = set(per_job)
        for info in report.jobs:
            job = self._job(info.job_id)
            job.parents = tuple(info.parent_job_ids)
            job.model_id = info.model_id or job.model_id

    def _job(self, job_id: str) -> JobState:
        job = self.jobs.get(job_id)
        if job is None:
            job = self.jobs[job_id] = JobState(job_id)
        return job

    def ingest_evaluation(self, job_id: str, evaluation: str, score: float, index: int) -> None:
        job = self._job(job_id)
        job.capability[evaluation] = score
        job.evidence.append(index)

    def is_silent(self, node: NodeState, now: float) -> bool:
        if not node.reports:
            return False
        interval = max(self._expected_interval, *node.recent_intervals, node.interval)
        return now - node.last_received > self._silent_after * interval

    def live_nodes(self, now: float) -> list[NodeState]:
        return [n for n in list(self.nodes.values()) if n.reports and not self.is_silent(n, now)]

    def snapshot(self, now: float) -> Snapshot:
        """Every figure at ``now``. Safe to call from the metrics thread while
        the event loop ingests: it iterates over copies of the live dicts
        (``list()`` of a dict view is taken without a thread switch)."""
        values: dict[tuple[Scope, str], dict[str, float | None]] = {}
        evidence: dict[tuple[Scope, str], tuple[int, ...]] = {}
        live: set[str] = set()
        silent = lost = unknown_model = breaks = 0
        cluster_installed: list[float | None] = []
        cluster_allocated: list[float | None] = []
        cluster_achieved: list[float | None] = []
        cluster_evidence: list[int] = []
        for node in list(self.nodes.values()):
            breaks += node.chain_breaks
            if not node.reports:
                values[(Scope.NODE, node.node_id)] = {
                    "installed_flops": None,
                    "allocated_flops": None,
                    "achieved_flops": None,
                    "silent_seconds": None,
                    "gpus_lost": None,
                    "chain_breaks": float(node.chain_breaks),
                }
                continue
            is_silent = self.is_silent(node, now)
            silent += is_silent
            whole = [g for g in node.gpus if mig.counts_in_totals(g)]
            node_lost = sum(g.lost for g in whole)
            lost += node_lost
            unknown_model += sum(g.model is None for g in whole)
            installed = _sum([g.installed for g in whole])
            allocated = None if is_silent else _sum([g.allocated for g in whole])
            achieved = None if is_silent else _sum([g.achieved for g in whole])
            values[(Scope.NODE, node.node_id)] = {
                "installed_flops": installed,
                "allocated_flops": allocated,
                "achieved_flops": achieved,
                "silent_seconds": max(0.0, now - node.last_received) if is_silent else 0.0,
                "gpus_lost": float(node_lost),
                "chain_breaks": float(node.chain_breaks),
            }
            evidence[(Scope.NODE, node.node_id)] = (node.last_index,)
            cluster_installed.append(installed)
            if not is_silent:
                live.add(node.node_id)
                cluster_allocated.append(allocated)
                cluster_achieved.append(achieved)
                cluster_evidence.append(node.last_index)
            for g in node.gpus:
                values[(Scope.GPU, g.uuid)] = {
                    "installed_flops": g.installed,
                    "achieved_flops": None if is_silent else g.achieved,
                    "utilization_percent": None if is_silent else g.utilization,
                    "power_watts": None if is_silent else g.power_watts,
                }
                evidence[(Scope.GPU, g.uuid)] = (node.last_index,)
        lineage: dict[str, tuple[str, ...]] = {}
        job_nodes: dict[str, tuple[str, ...]] = {}
        cumulative = 0.0
        for job in list(self.jobs.values()):
            cumulative += job.cumulative_flop
            running = {n: v for n, v in list(job.per_node.items()) if n in live}
            metrics: dict[str, float | None] = {
                "cumulative_flop": job.cumulative_flop,
                "achieved_flops": sum(v[0] for v in running.values()),
                "allocated_flops": sum(v[1] for v in running.values()),
                "gpus": float(sum(v[2] for v in running.values())),
                "gpus_unknown_model": float(sum(v[3] for v in running.values())),
            }
            for name, score in list(job.capability.items()):
                metrics[f"capability:{name}"] = score
            values[(Scope.JOB, job.job_id)] = metrics
            evidence[(Scope.JOB, job.job_id)] = tuple(job.evidence)
            lineage[job.job_id] = job.parents
            job_nodes[job.job_id] = tuple(sorted(running))
        values[(Scope.CLUSTER, CLUSTER_KEY)] = {
            "installed_flops": _sum(cluster_installed),
            "allocated_flops": _sum(cluster_allocated),
            "achieved_flops": _sum(cluster_achieved),
            "cumulative_flop": cumulative,
            "nodes_silent": float(silent),
            "gpus_lost": float(lost),
            "gpus_unknown_model": float(unknown_model),
            "chain_breaks": float(breaks),
        }
        evidence[(Scope.CLUSTER, CLUSTER_KEY)] = tuple(sorted(cluster_evidence))
        return Snapshot(
            time=now, values=values, evidence=evidence, lineage=lineage, job_nodes=job_nodes
        )
