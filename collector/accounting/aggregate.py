"""Compute density: installed, allocated and achieved FLOP/s, cumulative FLOP.

Every compute figure is an interval with its method named
(``collector.accounting``): an estimate and an upper bound, per GPU, node,
job and cluster, for rates (FLOP/s) and cumulative FLOP, plus the
*unmeasured GPU-seconds* no report measured. Per GPU: installed = the
model's dense FP16/BF16 peak (unknown for a model not in the table);
allocated = installed while any compute process holds the GPU; achieved =
see ``collector.accounting.gpu``. Per job: a GPU's estimate is split by the
processes' SM shares where every process has one (``collector.accounting.shares``),
evenly among the jobs on it otherwise; its upper bound and unmeasured seconds count in full
for each (a bound must hold for every job). Cumulative FLOP integrates each
report over its own window (``collector.accounting.window``), without a
clamp; time between reports that no report covers is unmeasured, charged at
the GPU's highest peak in the upper bound of each job that held the GPU on
both sides of the gap. What each job gains is charged to its actor
(``collector.accounting.actors``): per-actor figures at scope ``actor``.

Only committed reports are ingested. Rates of a silent node are unknown; its
GPUs' time since its last report is unmeasured, and a job on it carries that
time and a bound at its GPUs' peak.

MIG devices count at the parent's peak x their SM share; their parent holds
no job and carries its devices' figures, and totals count physical GPUs
(``collector.accounting.mig``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from collector.accounting import (
    METHOD_PIPES,
    METHOD_TENSOR,
    METHOD_UNKNOWN_MODEL,
    METHOD_UNMEASURED,
    METHOD_UTILIZATION,
    GpuFigures,
    gap_seconds,
    gpu_figures,
    mig,
    window_flop,
)
from collector.accounting.actors import ActorBook, job_totals
from collector.accounting.figures import ALL_SCOPES, build_snapshot
from collector.accounting.jobbounds import JobBounds, JobLimits
from collector.accounting.live import SummaryCache
from collector.accounting.snapshot import Scope, Snapshot
from collector.accounting.state import JobState, NodeShare, NodeState
from protos import devices
from protos.computewatch.v1 import telemetry_pb2
from protos.jobs import is_unattributed, job_key

__all__ = [
    "METHOD_PIPES",
    "METHOD_TENSOR",
    "METHOD_UNKNOWN_MODEL",
    "METHOD_UNMEASURED",
    "METHOD_UTILIZATION",
    "Aggregator",
    "GpuFigures",
    "JobState",
    "NodeShare",
    "NodeState",
    "gpu_figures",
]


class Aggregator:
    """Folds committed reports into per GPU, node, job and cluster figures."""

    def __init__(
        self,
        *,
        lookup: Callable[[str], devices.DeviceSpec | None] = devices.lookup,
        silent_after_intervals: float = 3.0,
        expected_interval_seconds: float = 0.0,
        job_limits: JobLimits | None = None,
    ) -> None:
        self._lookup = lookup
        self._silent_after = silent_after_intervals
        # The collector's configured agent interval: a floor for the silence clock.
        self._expected_interval = expected_interval_seconds
        self.nodes: dict[str, NodeState] = {}
        self.jobs: dict[str, JobState] = {}
        self.bounds = JobBounds(job_limits)
        # Cumulative FLOP (estimate, upper bound) of jobs forgotten by
        # ``age_out``/``admit_jobs``: the cluster's totals keep it.
        self.forgotten_flop = 0.0
        self.forgotten_flop_upper = 0.0
        self.actors = ActorBook()
        # Each node's figures between its reports (collector.accounting.live).
        self.summaries = SummaryCache(silent_after_intervals, expected_interval_seconds)

    def enroll(self, node_id: str) -> None:
        """Track an enrolled node before it reports (it shows as never seen)."""
        self.nodes.setdefault(node_id, NodeState(node_id))

    def note_chain_break(self, node_id: str) -> None:
        self.nodes.setdefault(node_id, NodeState(node_id)).chain_breaks += 1

    def ingest(
        self,
        report: telemetry_pb2.NodeReport,
        log_index: int,
        received_at: float,
        figures: list[GpuFigures] | None = None,
    ) -> None:
        """``figures``: ``gpu_figures`` of the report's GPUs with the shipped
        device table, worked out ahead (in an ingest worker); used only when
        this aggregator looks devices up in that table too."""
        if figures is None or self._lookup is not devices.lookup:
            figures = [gpu_figures(g, self._lookup, report.node_id) for g in report.gpus]
        node = self.nodes.setdefault(report.node_id, NodeState(report.node_id))
        interval = max(report.interval_seconds, 0.0)
        sample = report.sample_unix_nanos / 1e9 if report.sample_unix_nanos else received_at
        previous_gpus = {g.uuid: g for g in node.gpus}
        before = {j: job_totals(self.jobs[j]) for j in node.jobs if j in self.jobs}
        self.actors.assign(report)
        gap = 0.0
        if node.reports and node.last_sample:
            gap = gap_seconds(node.last_sample, sample, interval)
        node.last_received = received_at
        node.last_sample = sample
        node.last_index = log_index
        node.last_sequence = report.sequence
        node.interval = interval or node.interval
        node.recent_intervals.append(node.interval)
        node.enforcement = report.enforcement
        node.nvml_status = report.nvml_status
        node.reports += 1
        node.gpus = mig.fold(figures)
        self._charge_gap(node, previous_gpus, gap, log_index)

        per_job: dict[str, NodeShare] = {}
        # Jobs holding a GPU of this node whose figures are bounded by utilization.
        bounded: set[str] = set()
        for fig in node.gpus:
            w = window_flop(fig, interval)
            if mig.counts_in_totals(fig):
                node.unmeasured_gpu_seconds += w.unmeasured_seconds
            if not fig.jobs:
                continue
            even = 1.0 / len(fig.jobs)
            for i, name in enumerate(fig.jobs):
                share = fig.job_shares[i] if fig.job_shares else even
                acc = per_job.setdefault(name, NodeShare(0.0, 0.0, 0.0, 0, 0, 0, 0.0))
                acc.achieved += (fig.achieved or 0.0) * share
                acc.upper += fig.achieved_upper
                acc.allocated += (fig.allocated or 0.0) * even  # holding a GPU is allocation
                acc.gpus += 1
                acc.gpus_unknown_model += fig.model is None
                acc.gpus_unmeasured += not fig.measured
                acc.max_peak += fig.max_peak
                job = self._job(name)
                job.cumulative_flop += w.estimate * share
                job.cumulative_flop_lower += w.lower * share
                job.cumulative_flop_upper += w.upper
                job.measured_gpu_seconds += w.measured_seconds
                job.unmeasured_gpu_seconds += w.unmeasured_seconds
                job.methods.add(fig.method)
                if fig.method == METHOD_UTILIZATION:
                    bounded.add(name)
        for job_id, acc in per_job.items():
            job = self._job(job_id)
            job.per_node[node.node_id] = acc
            if job_id in bounded:
                job.upper_nodes.add(node.node_id)
            else:
                job.upper_nodes.discard(node.node_id)
            job.evidence.append(log_index)
        gone = node.jobs - per_job.keys()
        for job_id in gone:
            if (ended := self.jobs.get(job_id)) is not None:
                ended.per_node.pop(node.node_id, None)
                ended.upper_nodes.discard(node.node_id)
        node.jobs = set(per_job)
        self.actors.charge(before, self.jobs, before.keys() | per_job.keys(), received_at)
        for info in report.jobs:
            if is_unattributed(info.job_id):
                continue  # a pseudo-job declares no lineage, and never another node's
            job = self._job(info.job_id)
            job.parents = tuple(info.parent_job_ids)
            job.model_id = info.model_id or job.model_id
        self._track_jobs(node.node_id, report, per_job.keys(), gone, received_at)
        # The node's figures for every later snapshot, folded now (a tick
        # then reads them in O(1) per node: collector.accounting.live).
        self.summaries.get(node)

    def _charge_gap(
        self, node: NodeState, before: dict[str, GpuFigures], gap: float, log_index: int
    ) -> None:
        """Count a gap as unmeasured: per GPU seen on either side, and for each
        job on that GPU; charged at peak in the upper bound of a job that held
        the GPU on both sides."""
        if gap <= 0:
            return
        after = {g.uuid: g for g in node.gpus}
        for uuid in before.keys() | after.keys():
            old, new = before.get(uuid), after.get(uuid)
            if all(mig.counts_in_totals(g) for g in (old, new) if g is not None):
                node.unmeasured_gpu_seconds += gap  # a MIG device's is in its GPU's
            held_before = set(old.jobs) if old else set()
            held_after = set(new.jobs) if new else set()
            peak = max(g.max_peak for g in (old, new) if g is not None)
            for name in held_before | held_after:
                job = self._job(name)
                job.unmeasured_gpu_seconds += gap
                if name in held_before and name in held_after:
                    job.cumulative_flop_upper += peak * gap
                    job.evidence.append(log_index)

    def _job(self, job_id: str) -> JobState:
        job = self.jobs.get(job_id)
        if job is None:
            job = self.jobs[job_id] = JobState(job_id)
        return job

    def ingest_evaluation(self, job_id: str, evaluation: str, score: float, index: int) -> None:
        job = self._job(job_id)
        job.capability[evaluation] = score
        job.evidence.append(index)
        self.bounds.running(job_id)  # evaluated jobs decide halts: never aged out

    # -- bounds on job state (``collector.accounting.jobbounds``) --------------------------
    @staticmethod
    def report_job_ids(report: telemetry_pb2.NodeReport) -> set[str]:
        """Every job id ``ingest`` would hold a state for."""
        ids = {job_key(p.job_id, report.node_id) for g in report.gpus for p in g.processes}
        ids.update(info.job_id for info in report.jobs)
        return ids

    def admit_jobs(self, node_id: str, job_ids: set[str]) -> None:
        """Make room for ``node_id``'s ``job_ids`` by forgetting ended jobs, or
        raise NodeJobsLimitError / JobStatesLimitError (the report is refused).
        Checked against committed state, so a stream can overshoot by its
        reports in flight; ``age_out`` trims that back on commit."""
        for job_id in self.bounds.make_room(node_id, job_ids, len(self.jobs)):
            self._forget_job(job_id)

    def age_out(self, now: float) -> None:
        """Forget jobs that ended more than the TTL before ``now`` and, while
        more than ``max_job_states`` are held, the oldest ended ones.

        What survives a forgotten job: the committed reports its figures came
        from (in the ledger and the Merkle log), and its cumulative FLOP in the
        cluster's total. Its own figures (cumulative FLOP, lineage, evidence
        indices) go; should the same job id run again it starts from zero,
        which gains a node nothing it could not get by naming its jobs afresh.
        Replay ages out on each report's receive time, so a restart holds the
        same bounded set."""
        for job_id in self.bounds.expired(now, len(self.jobs)):
            self._forget_job(job_id)

    def _track_jobs(
        self,
        node_id: str,
        report: telemetry_pb2.NodeReport,
        running: Collection[str],
        gone: Collection[str],
        at: float,
    ) -> None:
        for job_id in running:
            self.bounds.named(node_id, job_id)
            self.bounds.running(job_id)
        for info in report.jobs:
            self.bounds.named(node_id, info.job_id)
        for job_id in sorted(gone):  # a stable order: replay forgets the same jobs
            job = self.jobs.get(job_id)
            if job is not None and not job.per_node and not job.capability:
                self.bounds.ended(job_id, at)
        for info in report.jobs:
            # Declared but not running: ended now (a later declaration renews it).
            job = self.jobs.get(info.job_id)
            if job is not None and not job.per_node and not job.capability:
                self.bounds.running(info.job_id)
                self.bounds.ended(info.job_id, at)
        self.age_out(at)

    def _forget_job(self, job_id: str) -> None:
        job = self.jobs.pop(job_id, None)
        if job is not None:
            self.forgotten_flop += job.cumulative_flop
            self.forgotten_flop_upper += job.cumulative_flop_upper
        self.bounds.forget(job_id)

    def is_silent(self, node: NodeState, now: float) -> bool:
        if not node.reports:
            return False
        interval = max(self._expected_interval, *node.recent_intervals, node.interval)
        return now - node.last_received > self._silent_after * interval

    def snapshot(self, now: float, scopes: Collection[Scope] = ALL_SCOPES) -> Snapshot:
        """Every figure of ``scopes`` at ``now`` (the cluster's always; the
        rules engine names the scopes its rules read, ``RuleEngine.scopes``).
        O(nodes + jobs) from each node's summary, rebuilt only for nodes that
        reported since (``collector.accounting.live``); O(GPUs) for the GPU
        scope only. Safe to call from the metrics thread while the event loop
        ingests: it iterates over copies of the live dicts (``list()`` of a
        dict view is taken without a thread switch)."""
        return build_snapshot(
            self.nodes,
            self.jobs,
            now,
            self.summaries.get,
            forgotten=(self.forgotten_flop, self.forgotten_flop_upper),
            book=self.actors,
            scopes=scopes,
        )
