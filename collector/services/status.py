"""``Status.GetStatus``: the cluster at a glance (``computewatch status``).

Paginated: every response carries the cluster figures and one page of nodes
then jobs, sorted by id, at most ``MAX_PAGE_SIZE`` items and about
``PAGE_BYTES`` bytes, so a response fits a gRPC message however many jobs
the collector holds. The page token is the last id sent (keyset pagination:
a node or job added meanwhile does not shift later pages)."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from collector.accounting.actors import WINDOW_DAYS, window_metric
from collector.accounting.aggregate import Aggregator
from collector.accounting.snapshot import CLUSTER_KEY, UPPER_SUFFIX, Scope, Snapshot
from collector.store.ledger import Ledger
from collector.telemetry.ingest import IngestStats
from protos.actors import UNKNOWN_ACTOR
from protos.computewatch.v1 import status_pb2, status_pb2_grpc

# (rule id, key) of every rule whose interval straddles its threshold now.
PossiblyCrossed = Callable[[], list[tuple[str, str]]]


def _none() -> list[tuple[str, str]]:
    return []


# A listing's pages come from one view while it is younger than this.
VIEW_SECONDS = 1.0
DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 1000
PAGE_BYTES = 1 << 20
# Node ids listed per job (JobStatus.nodes_total counts them all).
MAX_NODE_IDS_PER_JOB = 64


class PageTokenError(ValueError):
    """A page token this collector did not issue."""


def _cursor(token: str) -> tuple[int, str]:
    """(0: nodes, 1: jobs; the last id sent) from a page token."""
    if not token:
        return 0, ""
    part, sep, last = token.partition(":")
    if not sep or part not in ("n", "j"):
        raise PageTokenError(f"page_token {token[:40]!r} was not issued by this collector")
    return (0 if part == "n" else 1), last


@dataclass(frozen=True)
class StatusView:
    """What the pages of one listing are cut from: a snapshot of every figure
    but the GPUs' and the node and job ids in order. Building it is O(nodes +
    jobs), from the nodes' summaries (``collector.accounting.live``); a page is
    O(page) once it exists, so the servicer serves a listing's later pages
    from its first page's view while that is younger than ``VIEW_SECONDS``."""

    time: float
    snap: Snapshot
    node_ids: list[str]
    job_ids: list[str]
    # Physical GPUs of every node (a MIG device is counted in its GPU).
    gpus_total: int = 0


# What a listing reads: every scope but the GPUs'.
_SCOPES = frozenset({Scope.CLUSTER, Scope.NODE, Scope.JOB, Scope.ACTOR})


def status_view(aggregator: Aggregator, now: float) -> StatusView:
    """O(nodes + jobs): the figures come from each node's summary
    (``collector.accounting.live``), not from its GPUs."""
    summary = aggregator.summaries.get
    return StatusView(
        now,
        aggregator.snapshot(now, _SCOPES),
        sorted(aggregator.nodes),
        sorted(aggregator.jobs),
        gpus_total=sum(summary(n).whole for n in list(aggregator.nodes.values())),
    )


def build_status(
    aggregator: Aggregator,
    stats: IngestStats,
    log_size: int,
    now: float,
    request: status_pb2.StatusRequest | None = None,
    *,
    view: StatusView | None = None,
    possibly_crossed: PossiblyCrossed = _none,
    firing: PossiblyCrossed = _none,
) -> status_pb2.ClusterStatus:
    """One page of the cluster's status (at ``view.time`` when a view is
    given); raise PageTokenError for a bad token. Compute figures come as
    intervals: plain fields read 0 where unknown (for old clients),
    ``*_estimate`` fields are absent then, and ``*_upper_bound``,
    ``unmeasured_gpu_seconds`` and ``method`` say how far the figure can be
    from the truth."""
    request = request or status_pb2.StatusRequest()
    limit = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    part, last = _cursor(request.page_token)
    view = view or status_view(aggregator, now)
    now, snap = view.time, view.snap
    cluster = snap.values[(Scope.CLUSTER, CLUSTER_KEY)]
    straddling = possibly_crossed()
    out = status_pb2.ClusterStatus(
        generated_unix_nanos=int(now * 1e9),
        installed_flops=cluster.get("installed_flops") or 0.0,
        allocated_flops=cluster.get("allocated_flops") or 0.0,
        achieved_flops=cluster.get("achieved_flops") or 0.0,
        gpus_unknown_model=int(cluster.get("gpus_unknown_model") or 0),
        gpus_lost=int(cluster.get("gpus_lost") or 0),
        gpus_unreadable=int(cluster.get("gpus_unreadable") or 0),
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
    out.nodes_total, out.jobs_total = len(view.node_ids), len(view.job_ids)
    out.gpus_total = view.gpus_total
    if not request.page_token:
        # Actors are few (the accounting holds at most MAX_ACTORS): first page only.
        add_actors(out, snap, firing())
    page = _Page(out, limit)
    first = len(view.node_ids) if part == 1 else bisect.bisect_right(view.node_ids, last)
    for node_id in view.node_ids[first:]:
        if (node := aggregator.nodes.get(node_id)) is None:
            continue
        if page.full:
            out.next_page_token = f"n:{page.last}"
            return out
        values = snap.values.get((Scope.NODE, node.node_id), {})
        summary = aggregator.summaries.get(node)  # MIG devices are in their GPU
        if not node.reports:
            state = status_pb2.NODE_STATE_NEVER_SEEN
        elif summary.silent(node, now):
            state = status_pb2.NODE_STATE_SILENT
        else:
            state = status_pb2.NODE_STATE_OK
        node_item = out.nodes.add(
            node_id=node.node_id,
            state=state,
            last_sequence=node.last_sequence,
            last_seen_unix_nanos=int(node.last_received * 1e9),
            gpus=summary.whole,
            gpus_lost=summary.lost,
            gpus_unreadable=summary.unreadable,
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
            node_item.achieved_flops_estimate = achieved
        page.added(node.node_id, node_item.ByteSize())
    by_job: dict[str, list[str]] = {}
    for rule, key in straddling:
        by_job.setdefault(key, []).append(rule)
    if part == 0:
        last = ""
    page.last = ""
    for job_id in view.job_ids[bisect.bisect_right(view.job_ids, last) :]:
        job = aggregator.jobs.get(job_id)
        if job is None:  # forgotten since the view was made
            continue
        if page.full:
            out.next_page_token = f"j:{page.last}"
            return out
        values = snap.values.get((Scope.JOB, job.job_id), {})
        running = snap.job_nodes.get(job.job_id, ())
        item = out.jobs.add(
            job_id=job.job_id,
            cumulative_flop=values.get("cumulative_flop") or 0.0,
            achieved_flops=values.get("achieved_flops") or 0.0,
            gpus=int(values.get("gpus") or 0),
            upper_bound=job.upper_bound,
            node_ids=list(running[:MAX_NODE_IDS_PER_JOB]),
            nodes_total=len(running),
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
            item.cumulative_flop_estimate = cumulative
        if achieved is not None:
            item.achieved_flops_estimate = achieved
        item.actor = snap.job_actors.get(job.job_id, UNKNOWN_ACTOR)
        page.added(job.job_id, item.ByteSize())
    return out


class _Page:
    """Counts what a page holds: full at ``limit`` items or ``PAGE_BYTES``."""

    def __init__(self, out: status_pb2.ClusterStatus, limit: int) -> None:
        self._limit = limit
        self._items = 0
        self._bytes = out.ByteSize()
        self.last = ""

    @property
    def full(self) -> bool:
        return self._items >= self._limit or self._bytes >= PAGE_BYTES

    def added(self, key: str, size: int) -> None:
        self._items += 1
        self._bytes += size + 8  # field tag and length
        self.last = key


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
            job_ids=sorted(running.get(actor, ()))[:MAX_NODE_IDS_PER_JOB],
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
        self._view: StatusView | None = None
        # (rule id, actor) of every actor-scope rule firing now; same wiring.
        self.actor_firing: PossiblyCrossed = _none

    async def GetStatus(
        self,
        request: status_pb2.StatusRequest,
        context: grpc.aio.ServicerContext[status_pb2.StatusRequest, status_pb2.ClusterStatus],
    ) -> status_pb2.ClusterStatus:
        now = self._clock()
        # A first page is always fresh; later pages of a listing reuse its view.
        fresh = self._view is None or not 0 <= now - self._view.time < VIEW_SECONDS
        if not request.page_token or fresh:
            self._view = status_view(self._agg, now)
        try:
            return build_status(
                self._agg,
                self._stats,
                self._ledger.size,
                now,
                request,
                view=self._view,
                possibly_crossed=self.possibly_crossed,
                firing=self.actor_firing,
            )
        except PageTokenError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable") from exc
