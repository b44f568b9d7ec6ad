"""``Status.GetStatus``: the cluster at a glance (``computewatch status``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from collector.accounting.actors import WINDOW_DAYS, window_metric
from collector.aggregate import Aggregator
from collector.ingest import IngestStats
from collector.ledger import Ledger
from collector.snapshot import CLUSTER_KEY, UPPER_SUFFIX, Scope, Snapshot
from protos.actors import UNKNOWN_ACTOR
from protos.computewatch.v1 import status_pb2, status_pb2_grpc

# (rule id, key) of every rule whose interval straddles its threshold now.
PossiblyCrossed = Callable[[], list[tuple[str, str]]]


def _none() -> list[tuple[str, str]]:
    return []


def build_status(
    aggregator: Aggregator,
    stats: IngestStats,
    log_size: int,
    now: float,
    possibly_crossed: PossiblyCrossed = _none,
    *,
    firing: PossiblyCrossed = _none,
) -> status_pb2.ClusterStatus:
    """The status message. Compute figures come as intervals: plain fields
    read 0 where unknown (for old clients), ``*_estimate`` fields are absent
    then, and ``*_upper_bound``, ``unmeasured_gpu_seconds`` and ``method``
    say how far the figure can be from the truth."""
    snap = aggregator.snapshot(now)
    cluster = snap.values[(Scope.CLUSTER, CLUSTER_KEY)]
    straddling = possibly_crossed()
    out = status_pb2.ClusterStatus(
        generated_unix_nanos=int(now * 1e9),
        installed_flops=cluster.get("installed_flops") or 0.0,
        allocated_flops=cluster.get("allocated_flops") or 0.0,
        achieved_flops=cluster.get("achieved_flops") or 0.0,
        gpus_unknown_model=int(cluster.get("gpus_unknown_model") or 0),
        gpus_lost=int(cluster.get("gpus_lost") or 0),
        reports_accepted=stats.accepted,
        log_size=log_size,
        achieved_flops_upper_bound=cluster.get("achieved_flops_upper_bound") or 0.0,
        cumulative_flop=cluster.get("cumulative_flop") or 0.0,
        cumulative_flop_upper_bound=cluster.get("cumulative_flop_upper_bound") or 0.0,
        unmeasured_gpu_seconds=cluster.get("unmeasured_gpu_seconds") or 0.0,
        method=snap.methods.get((Scope.CLUSTER, CLUSTER_KEY), ""),
        possibly_crossed=[f"{rule} {key}" for rule, key in straddling],
    )
    out.rejected_by_reason.update(stats.rejected)
    if (cluster_achieved := cluster.get("achieved_flops")) is not None:
        out.achieved_flops_estimate = cluster_achieved
    for node in sorted(aggregator.nodes.values(), key=lambda n: n.node_id):
        values = snap.values.get((Scope.NODE, node.node_id), {})
        if not node.reports:
            state = status_pb2.NODE_STATE_NEVER_SEEN
        elif aggregator.is_silent(node, now):
            state = status_pb2.NODE_STATE_SILENT
        else:
            state = status_pb2.NODE_STATE_OK
        out.gpus_total += len(node.gpus)
        out.nodes.add(
            node_id=node.node_id,
            state=state,
            last_sequence=node.last_sequence,
            last_seen_unix_nanos=int(node.last_received * 1e9),
            gpus=len(node.gpus),
            gpus_lost=sum(g.lost for g in node.gpus),
            installed_flops=values.get("installed_flops") or 0.0,
            allocated_flops=values.get("allocated_flops") or 0.0,
            achieved_flops=values.get("achieved_flops") or 0.0,
            active_directive_ids=list(node.enforcement.active_directive_ids),
            halted=bool(node.enforcement.halted_gpu_uuids) or node.enforcement.locally_halted,
            achieved_flops_upper_bound=values.get("achieved_flops_upper_bound") or 0.0,
            unmeasured_gpu_seconds=values.get("unmeasured_gpu_seconds") or 0.0,
            method=snap.methods.get((Scope.NODE, node.node_id), ""),
        )
        achieved = values.get("achieved_flops")
        if achieved is not None:
            out.nodes[-1].achieved_flops_estimate = achieved
    by_job: dict[str, list[str]] = {}
    for rule, key in straddling:
        by_job.setdefault(key, []).append(rule)
    for job in sorted(aggregator.jobs.values(), key=lambda j: j.job_id):
        values = snap.values.get((Scope.JOB, job.job_id), {})
        st = out.jobs.add(
            job_id=job.job_id,
            cumulative_flop=values.get("cumulative_flop") or 0.0,
            achieved_flops=values.get("achieved_flops") or 0.0,
            gpus=int(values.get("gpus") or 0),
            upper_bound=job.upper_bound,
            node_ids=list(snap.job_nodes.get(job.job_id, ())),
            parent_job_ids=list(job.parents),
            gpus_unknown_model=int(values.get("gpus_unknown_model") or 0),
            cumulative_flop_upper_bound=values.get("cumulative_flop_upper_bound") or 0.0,
            achieved_flops_upper_bound=values.get("achieved_flops_upper_bound") or 0.0,
            unmeasured_gpu_seconds=values.get("unmeasured_gpu_seconds") or 0.0,
            method=snap.methods.get((Scope.JOB, job.job_id), ""),
            possibly_crossed_rules=sorted(by_job.get(job.job_id, ())),
        )
        cumulative, achieved = values.get("cumulative_flop"), values.get("achieved_flops")
        if cumulative is not None:
            st.cumulative_flop_estimate = cumulative
        if achieved is not None:
            st.achieved_flops_estimate = achieved
        st.actor = snap.job_actors.get(job.job_id, UNKNOWN_ACTOR)
    add_actors(out, snap, firing())
    return out


def add_actors(
    out: status_pb2.ClusterStatus, snap: Snapshot, firing: list[tuple[str, str]]
) -> None:
    """One ``ActorStatus`` per actor in ``snap`` (``collector.accounting.actors``),
    with the actor-scope rules firing for it (``firing``: (rule id, actor))."""
    fired: dict[str, list[str]] = {}
    for rule, key in firing:
        fired.setdefault(key, []).append(rule)
    running: dict[str, list[str]] = {}
    for job_id, nodes in snap.job_nodes.items():
        if nodes:
            running.setdefault(snap.job_actors.get(job_id, UNKNOWN_ACTOR), []).append(job_id)
    for actor in sorted(snap.keys(Scope.ACTOR)):
        v = snap.values[(Scope.ACTOR, actor)]
        st = out.actors.add(
            actor_id=actor,
            job_ids=sorted(running.get(actor, ())),
            gpus=int(v.get("gpus") or 0),
            achieved_flops_upper_bound=v.get("achieved_flops_upper_bound") or 0.0,
            allocated_flops=v.get("allocated_flops") or 0.0,
            cumulative_flop_upper_bound=v.get("cumulative_flop_upper_bound") or 0.0,
            unmeasured_gpu_seconds=v.get("unmeasured_gpu_seconds") or 0.0,
            method=snap.methods.get((Scope.ACTOR, actor), ""),
            firing_rules=sorted(fired.get(actor, ())),
        )
        if (achieved := v.get("achieved_flops")) is not None:
            st.achieved_flops_estimate = achieved
        if (cumulative := v.get("cumulative_flop")) is not None:
            st.cumulative_flop_estimate = cumulative
        for days in WINDOW_DAYS:
            name = window_metric(days)
            w = st.windows.add(days=days, upper_bound=v.get(name + UPPER_SUFFIX) or 0.0)
            if (estimate := v.get(name)) is not None:
                w.estimate = estimate


class StatusServicer(status_pb2_grpc.StatusServicer):
    def __init__(
        self,
        aggregator: Aggregator,
        stats: IngestStats,
        ledger: Ledger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._agg = aggregator
        self._stats = stats
        self._ledger = ledger
        self._clock = clock
        # Set by the stop protocol's wiring once the rule engine exists.
        self.possibly_crossed: PossiblyCrossed = _none
        # (rule id, actor) of every actor-scope rule firing now; same wiring.
        self.actor_firing: PossiblyCrossed = _none

    async def GetStatus(
        self,
        request: status_pb2.StatusRequest,
        context: grpc.aio.ServicerContext[status_pb2.StatusRequest, status_pb2.ClusterStatus],
    ) -> status_pb2.ClusterStatus:
        return build_status(
            self._agg,
            self._stats,
            self._ledger.size,
            self._clock(),
            self.possibly_crossed,
            firing=self.actor_firing,
        )
