"""``Status.GetStatus``: the cluster at a glance (``computewatch status``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from collector.aggregate import Aggregator
from collector.ingest import IngestStats
from collector.ledger import Ledger
from collector.snapshot import CLUSTER_KEY, Scope
from protos.computewatch.v1 import status_pb2, status_pb2_grpc


def build_status(
    aggregator: Aggregator, stats: IngestStats, log_size: int, now: float
) -> status_pb2.ClusterStatus:
    snap = aggregator.snapshot(now)
    cluster = snap.values[(Scope.CLUSTER, CLUSTER_KEY)]
    out = status_pb2.ClusterStatus(
        generated_unix_nanos=int(now * 1e9),
        installed_flops=cluster.get("installed_flops") or 0.0,
        allocated_flops=cluster.get("allocated_flops") or 0.0,
        achieved_flops=cluster.get("achieved_flops") or 0.0,
        gpus_unknown_model=int(cluster.get("gpus_unknown_model") or 0),
        gpus_lost=int(cluster.get("gpus_lost") or 0),
        reports_accepted=stats.accepted,
        log_size=log_size,
    )
    out.rejected_by_reason.update(stats.rejected)
    for node in sorted(aggregator.nodes.values(), key=lambda n: n.node_id):
        values = snap.values.get((Scope.NODE, node.node_id), {})
        if not node.reports:
            state = status_pb2.NODE_STATE_NEVER_SEEN
        elif aggregator.is_silent(node, now):
            state = status_pb2.NODE_STATE_SILENT
        else:
            state = status_pb2.NODE_STATE_OK
        whole = [g for g in node.gpus if not g.parent_uuid]  # MIG devices are in their GPU
        out.gpus_total += len(whole)
        out.nodes.add(
            node_id=node.node_id,
            state=state,
            last_sequence=node.last_sequence,
            last_seen_unix_nanos=int(node.last_received * 1e9),
            gpus=len(whole),
            gpus_lost=sum(g.lost for g in whole),
            installed_flops=values.get("installed_flops") or 0.0,
            allocated_flops=values.get("allocated_flops") or 0.0,
            achieved_flops=values.get("achieved_flops") or 0.0,
            active_directive_ids=list(node.enforcement.active_directive_ids),
            halted=bool(node.enforcement.halted_gpu_uuids) or node.enforcement.locally_halted,
        )
    for job in sorted(aggregator.jobs.values(), key=lambda j: j.job_id):
        values = snap.values.get((Scope.JOB, job.job_id), {})
        out.jobs.add(
            job_id=job.job_id,
            cumulative_flop=job.cumulative_flop,
            achieved_flops=values.get("achieved_flops") or 0.0,
            gpus=int(values.get("gpus") or 0),
            upper_bound=job.upper_bound,
            node_ids=list(snap.job_nodes.get(job.job_id, ())),
            parent_job_ids=list(job.parents),
            gpus_unknown_model=int(values.get("gpus_unknown_model") or 0),
        )
    return out


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

    async def GetStatus(
        self,
        request: status_pb2.StatusRequest,
        context: grpc.aio.ServicerContext[status_pb2.StatusRequest, status_pb2.ClusterStatus],
    ) -> status_pb2.ClusterStatus:
        return build_status(self._agg, self._stats, self._ledger.size, self._clock())
