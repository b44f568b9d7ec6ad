# The test oracle of tests/unit/collector/test_snapshot_incremental.py: the
# from-scratch snapshot build as it was before snapshots were built from
# per-node summaries (collector/accounting/figures.py at e9f1d9b), kept
# verbatim. Do not "fix" it: the new build must equal it bit for bit.
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

from collections.abc import Callable, Mapping
from dataclasses import replace

from collector.accounting.actors import ActorBook, actor_values
from collector.accounting.gpu import METHOD_UNMEASURED
from collector.accounting.mig import counts_in_totals
from collector.accounting.snapshot import CLUSTER_KEY, Scope, Snapshot
from collector.accounting.state import JobState, NodeState, worst_method

Key = tuple[Scope, str]


def _sum(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def build_snapshot(
    nodes: Mapping[str, NodeState],
    jobs: Mapping[str, JobState],
    now: float,
    is_silent: Callable[[NodeState, float], bool],
    *,
    forgotten: tuple[float, float] = (0.0, 0.0),
) -> Snapshot:
    """Figures of every scope at ``now``. ``forgotten``: cumulative FLOP
    (estimate, upper bound) of jobs no longer held in memory, which the
    cluster's totals keep."""
    values: dict[Key, dict[str, float | None]] = {}
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
        breaks += node.chain_breaks
        key = (Scope.NODE, node.node_id)
        if not node.reports:
            values[key] = {
                "installed_flops": None,
                "installed_flops_upper_bound": None,
                "allocated_flops": None,
                "achieved_flops": None,
                "achieved_flops_upper_bound": None,
                "unmeasured_gpu_seconds": None,
                "silent_seconds": None,
                "gpus_lost": None,
                "gpus_unreadable": None,
                "chain_breaks": float(node.chain_breaks),
            }
            methods[key] = METHOD_UNMEASURED
            continue
        quiet = is_silent(node, now)
        silent += quiet
        whole = [g for g in node.gpus if counts_in_totals(g)]
        node_lost = sum(g.lost for g in whole)
        lost += node_lost
        node_unreadable = sum(g.unreadable for g in whole)
        unreadable += node_unreadable
        unknown_model += sum(g.model is None for g in whole)
        installed = _sum([g.installed for g in whole])
        # Capacity at any precision; a GPU of unknown model at the table's highest peak.
        installed_upper = sum(g.max_peak for g in whole)
        unmeasured = node.unmeasured_gpu_seconds
        node_methods = {g.method for g in whole}
        if quiet:
            pending = max(0.0, now - node.last_received)
            silent_for[node.node_id] = pending
            unmeasured += pending * len(whole)
            allocated = achieved = None
            upper = sum(g.max_peak for g in whole)
            node_methods = {METHOD_UNMEASURED}
        else:
            allocated = _sum([g.allocated for g in whole])
            achieved = _sum([g.achieved for g in whole])
            upper = sum(g.achieved_upper for g in whole)
            live.add(node.node_id)
            c_allocated.append(allocated)
            c_achieved.append(achieved)
            c_evidence.append(node.last_index)
        values[key] = {
            "installed_flops": installed,
            "installed_flops_upper_bound": installed_upper,
            "allocated_flops": allocated,
            "achieved_flops": achieved,
            "achieved_flops_upper_bound": upper,
            "unmeasured_gpu_seconds": unmeasured,
            "silent_seconds": silent_for.get(node.node_id, 0.0),
            "gpus_lost": float(node_lost),
            "gpus_unreadable": float(node_unreadable),
            "chain_breaks": float(node.chain_breaks),
        }
        methods[key] = worst_method(node_methods)
        c_methods |= node_methods
        evidence[key] = (node.last_index,)
        c_installed.append(installed)
        c_installed_upper += installed_upper
        c_upper += upper
        c_unmeasured += unmeasured
        for g in node.gpus:
            gkey = (Scope.GPU, g.uuid)
            values[gkey] = {
                "installed_flops": g.installed,
                "installed_flops_upper_bound": g.max_peak,
                "achieved_flops": None if quiet else g.achieved,
                "achieved_flops_upper_bound": g.max_peak if quiet else g.achieved_upper,
                "utilization_percent": None if quiet else g.utilization,
                "power_watts": None if quiet else g.power_watts,
            }
            methods[gkey] = METHOD_UNMEASURED if quiet else g.method
            evidence[gkey] = (node.last_index,)
    lineage: dict[str, tuple[str, ...]] = {}
    job_nodes: dict[str, tuple[str, ...]] = {}
    c_cumulative, c_cumulative_upper = forgotten
    for job in list(jobs.values()):
        key = (Scope.JOB, job.job_id)
        shares = list(job.per_node.items())
        running = {n: s for n, s in shares if n in live}
        quiet_shares = {n: s for n, s in shares if n in silent_for}
        pending = sum(silent_for[n] * s.gpus for n, s in quiet_shares.items())
        pending_upper = sum(silent_for[n] * s.max_peak for n, s in quiet_shares.items())
        estimate = job.cumulative_estimate
        upper = job.cumulative_flop_upper + pending_upper
        rate: float | None = sum(s.achieved for s in running.values())
        if quiet_shares and not running:
            rate = None  # only silent nodes: the rate is unknown, never 0
        if (
            rate is not None
            and running
            and all(s.gpus_unmeasured == s.gpus for s in running.values())
        ):
            rate = None  # no GPU of the job is measured
        metrics: dict[str, float | None] = {
            "cumulative_flop": estimate,
            "cumulative_flop_upper_bound": upper,
            "achieved_flops": rate,
            "achieved_flops_upper_bound": sum(s.upper for s in running.values())
            + sum(s.max_peak for s in quiet_shares.values()),
            "allocated_flops": sum(s.allocated for s in running.values()),
            "gpus": float(sum(s.gpus for s in running.values())),
            "gpus_unknown_model": float(sum(s.gpus_unknown_model for s in running.values())),
            "unmeasured_gpu_seconds": job.unmeasured_gpu_seconds + pending,
        }
        for name, score in list(job.capability.items()):
            metrics[f"capability:{name}"] = score
        values[key] = metrics
        methods[key] = METHOD_UNMEASURED if quiet_shares else job.method
        evidence[key] = tuple(job.evidence)
        lineage[job.job_id] = job.parents
        job_nodes[job.job_id] = tuple(sorted(running))
        c_cumulative += estimate or 0.0
        c_cumulative_upper += upper
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
    return Snapshot(
        time=now,
        values=values,
        evidence=evidence,
        lineage=lineage,
        job_nodes=job_nodes,
        methods=methods,
    )


def with_actors(snap: Snapshot, book: ActorBook, jobs: Mapping[str, JobState]) -> Snapshot:
    """``snap`` plus the actor scope (``collector.accounting.actors``)."""
    keys = [(Scope.JOB, j) for j in list(jobs)]
    job_values = {k[1]: snap.values[k] for k in keys if k in snap.values}
    job_evidence = {k[1]: snap.evidence[k] for k in keys if k in snap.evidence}
    job_methods = {k[1]: snap.methods[k] for k in keys if k in snap.methods}
    values, evidence, methods = actor_values(
        book, job_values, job_evidence, job_methods, jobs, snap.time
    )
    return replace(
        snap,
        values={**snap.values, **{(Scope.ACTOR, a): v for a, v in values.items()}},
        evidence={**snap.evidence, **{(Scope.ACTOR, a): v for a, v in evidence.items()}},
        methods={**snap.methods, **{(Scope.ACTOR, a): v for a, v in methods.items()}},
        job_actors={j: book.actor_of(j) for j in job_values},
    )
