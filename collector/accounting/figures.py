"""Build one tick's ``Snapshot`` from the aggregator's node and job state.

Every compute figure is published as an estimate (``<metric>``) and an upper
bound (``<metric>_upper_bound``), with ``unmeasured_gpu_seconds`` and the
method in ``Snapshot.methods``. A silent node's rates are unknown (None); its
GPUs' time since its last report is unmeasured, and the jobs on it carry that
time and a rate bound at their GPUs' highest peak (the cumulative bound grows
with it while the node stays silent). Node and cluster totals count physical
GPUs: a MIG device is in its parent's figures (``collector.accounting.mig``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from collector.accounting.actors import ActorBook, actor_values
from collector.accounting.gpu import METHOD_UNMEASURED
from collector.accounting.live import NodeSummary
from collector.accounting.snapshot import CLUSTER_KEY, Scope, Snapshot
from collector.accounting.state import JobState, NodeState, worst_method

Key = tuple[Scope, str]


def _sum(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


ALL_SCOPES: frozenset[Scope] = frozenset(Scope)


def build_snapshot(
    nodes: Mapping[str, NodeState],
    jobs: Mapping[str, JobState],
    now: float,
    summary: Callable[[NodeState], NodeSummary],
    *,
    forgotten: tuple[float, float] = (0.0, 0.0),
    book: ActorBook | None = None,
    scopes: Collection[Scope] = ALL_SCOPES,
) -> Snapshot:
    """Figures at ``now`` of ``scopes`` (the cluster's always), from each
    node's ``summary`` (``collector.accounting.live``): O(nodes + jobs), plus
    O(GPUs) for the GPU scope only. ``forgotten``: cumulative FLOP (estimate,
    upper bound) of jobs no longer held in memory, which the cluster's totals
    keep. With ``book``, the actor scope too. Scopes left out are absent (the
    node and job scopes: their rows, the cluster's figures still count them)."""
    want_nodes = Scope.NODE in scopes
    want_gpus = Scope.GPU in scopes
    want_jobs = Scope.JOB in scopes
    want_actors = book is not None and Scope.ACTOR in scopes
    values: dict[Key, Mapping[str, float | None]] = {}
    evidence: dict[Key, tuple[int, ...]] = {}
    methods: dict[Key, str] = {}
    live: set[str] = set()
    # node id -> seconds since its last sample, for silent nodes
    silent_for: dict[str, float] = {}
    silent = lost = unreadable = unknown_model = breaks = 0
    c_installed: list[float | None] = []
    c_allocated: list[float | None] = []
    c_achieved: list[float | None] = []
    c_upper = c_unmeasured = c_installed_upper = 0.0
    c_methods: set[str] = set()
    c_evidence: list[int] = []
    for node in list(nodes.values()):
        s = summary(node)
        breaks += s.chain_breaks
        key = (Scope.NODE, s.node_id)
        if not s.reports:
            if want_nodes:
                values[key] = s.row
                methods[key] = METHOD_UNMEASURED
            continue
        lost += s.lost
        unreadable += s.unreadable
        unknown_model += s.unknown_model
        if now - node.last_received > s.silent_after:  # NodeSummary.silent, inlined
            silent += 1
            pending = max(0.0, now - node.last_received)
            silent_for[s.node_id] = pending
            unmeasured = s.unmeasured + pending * s.whole
            upper = s.quiet_upper
            c_methods.add(METHOD_UNMEASURED)
            if want_nodes:
                values[key] = {
                    **s.row,
                    "allocated_flops": None,
                    "achieved_flops": None,
                    "achieved_flops_upper_bound": upper,
                    "unmeasured_gpu_seconds": unmeasured,
                    "silent_seconds": pending,
                }
                methods[key] = METHOD_UNMEASURED
                evidence[key] = s.evidence
            if want_gpus:
                for gkey, row, method in s.quiet_gpu_rows():
                    values[gkey] = row
                    methods[gkey] = method
                    evidence[gkey] = s.evidence
        else:
            unmeasured = s.unmeasured
            upper = s.upper
            live.add(s.node_id)
            c_allocated.append(s.allocated)
            c_achieved.append(s.achieved)
            c_evidence.append(s.last_index)
            c_methods |= s.methods
            if want_nodes:
                values[key] = s.row
                methods[key] = s.method
                evidence[key] = s.evidence
            if want_gpus:
                for gkey, row, method in s.live_gpu_rows():
                    values[gkey] = row
                    methods[gkey] = method
                    evidence[gkey] = s.evidence
        c_installed.append(s.installed)
        c_installed_upper += s.installed_upper
        c_upper += upper
        c_unmeasured += unmeasured
    lineage: dict[str, tuple[str, ...]] = {}
    job_nodes: dict[str, tuple[str, ...]] = {}
    job_rows: dict[str, dict[str, float | None]] = {}
    c_cumulative, c_cumulative_upper = forgotten
    rows_wanted = want_jobs or want_actors
    for job in list(jobs.values()):
        # One pass over the job's nodes; every sum is ``sum()`` over a list in
        # the job's node order, as a from-scratch build takes it.
        running: list[str] = []
        r_achieved: list[float] = []
        r_upper: list[float] = []
        r_allocated: list[float] = []
        gpus = gpus_unknown = 0
        all_unmeasured = True
        q_pending: list[float] = []
        q_pending_upper: list[float] = []
        q_peak: list[float] = []
        for n, share in list(job.per_node.items()):
            if n in live:
                running.append(n)
                r_achieved.append(share.achieved)
                r_upper.append(share.upper)
                r_allocated.append(share.allocated)
                gpus += share.gpus
                gpus_unknown += share.gpus_unknown_model
                all_unmeasured = all_unmeasured and share.gpus_unmeasured == share.gpus
            elif (quiet_for := silent_for.get(n)) is not None:
                q_pending.append(quiet_for * share.gpus)
                q_pending_upper.append(quiet_for * share.max_peak)
                q_peak.append(share.max_peak)
        estimate = job.cumulative_estimate
        upper = job.cumulative_flop_upper + sum(q_pending_upper)
        c_cumulative += estimate or 0.0
        c_cumulative_upper += upper
        if not rows_wanted:
            continue  # the cluster's cumulative totals are all the jobs give
        rate: float | None = sum(r_achieved)
        if q_peak and not running:
            rate = None  # only silent nodes: the rate is unknown, never 0
        if rate is not None and running and all_unmeasured:
            rate = None  # no GPU of the job is measured
        metrics: dict[str, float | None] = {
            "cumulative_flop": estimate,
            "cumulative_flop_upper_bound": upper,
            "achieved_flops": rate,
            "achieved_flops_upper_bound": sum(r_upper) + sum(q_peak),
            "allocated_flops": sum(r_allocated),
            "gpus": float(gpus),
            "gpus_unknown_model": float(gpus_unknown),
            "unmeasured_gpu_seconds": job.unmeasured_gpu_seconds + sum(q_pending),
        }
        for name, score in list(job.capability.items()):
            metrics[f"capability:{name}"] = score
        key = (Scope.JOB, job.job_id)
        job_rows[job.job_id] = metrics
        values[key] = metrics
        methods[key] = METHOD_UNMEASURED if q_peak else job.method
        evidence[key] = tuple(job.evidence)
        lineage[job.job_id] = job.parents
        job_nodes[job.job_id] = tuple(sorted(running))
    values[(Scope.CLUSTER, CLUSTER_KEY)] = {
        "installed_flops": _sum(c_installed),
        "installed_flops_upper_bound": c_installed_upper,
        "allocated_flops": _sum(c_allocated),
        "achieved_flops": _sum(c_achieved),
        "achieved_flops_upper_bound": c_upper,
        "cumulative_flop": c_cumulative,
        "cumulative_flop_upper_bound": c_cumulative_upper,
        "unmeasured_gpu_seconds": c_unmeasured,
        "nodes_silent": float(silent),
        "gpus_lost": float(lost),
        "gpus_unreadable": float(unreadable),
        "gpus_unknown_model": float(unknown_model),
        "chain_breaks": float(breaks),
    }
    methods[(Scope.CLUSTER, CLUSTER_KEY)] = worst_method(c_methods)
    evidence[(Scope.CLUSTER, CLUSTER_KEY)] = tuple(sorted(c_evidence))
    job_actors: dict[str, str] = {}
    if want_actors and book is not None:
        job_methods = {j: methods[(Scope.JOB, j)] for j in job_rows}
        job_evidence = {j: evidence[(Scope.JOB, j)] for j in job_rows}
        a_values, a_evidence, a_methods = actor_values(
            book, job_rows, job_evidence, job_methods, jobs, now
        )
        for actor, row in a_values.items():
            akey = (Scope.ACTOR, actor)
            values[akey] = row
            evidence[akey] = a_evidence[actor]
            methods[akey] = a_methods[actor]
    if book is not None and want_jobs:
        job_actors = {j: book.actor_of(j) for j in job_rows}
    if not want_jobs:
        for j in job_rows:
            jkey = (Scope.JOB, j)
            del values[jkey], methods[jkey], evidence[jkey]
        lineage, job_nodes = {}, {}
    return Snapshot(
        time=now,
        values=values,
        evidence=evidence,
        lineage=lineage,
        job_nodes=job_nodes,
        methods=methods,
        job_actors=job_actors,
    )
