"""Per-node figures kept between snapshots, so a snapshot costs O(nodes + jobs),
not O(GPUs).

Everything a snapshot needs from a node's GPUs (its totals, its row of
figures while it reports, its GPUs' rows) changes only when the node's state
does: a report, a chain break. ``NodeSummary`` holds them, computed once from
the node's state with the same arithmetic, in the same order, as a
from-scratch build; ``SummaryCache`` hands out a node's summary and
recomputes it when any of the state it rests on changed (the ``Fingerprint``:
the GPU list's identity, reports, chain breaks, last log index, interval and
unmeasured seconds), so a caller that changes a node's state needs no hook.
What depends on the clock (silence, a silent node's pending time) is worked
out per snapshot; a silent node's rows are built then (few nodes).

Totals across nodes are summed per snapshot over the summaries, in the
nodes' order, never kept as running sums: adding a report's figures and
subtracting the previous ones would drift from the from-scratch figures in
the last bits, and the figures must equal them exactly (rules compare them
with thresholds; the signed log publishes them).

Read from the metrics thread while the event loop ingests: a summary is
built from the node's fields as they are read; its fingerprint is read
first, so a field that changes during the build makes the next lookup
rebuild it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from collector.accounting.gpu import METHOD_UNMEASURED, GpuFigures
from collector.accounting.mig import counts_in_totals
from collector.accounting.snapshot import Scope
from collector.accounting.state import NodeState, worst_method

Key = tuple[Scope, str]
Row = dict[str, float | None]
# reports, chain breaks, last log index, unmeasured GPU-seconds, interval
Fingerprint = tuple[int, int, int, float, float]


def _sum(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def never_seen_row(chain_breaks: int) -> Row:
    return {
        "installed_flops": None,
        "installed_flops_upper_bound": None,
        "allocated_flops": None,
        "achieved_flops": None,
        "achieved_flops_upper_bound": None,
        "unmeasured_gpu_seconds": None,
        "silent_seconds": None,
        "gpus_lost": None,
        "gpus_unreadable": None,
        "chain_breaks": float(chain_breaks),
    }


@dataclass
class NodeSummary:
    """A node's figures from its last report (``collector.accounting.figures``)."""

    node_id: str
    gpus: list[GpuFigures]
    fingerprint: Fingerprint
    # Silent when ``now - last_received`` exceeds this (``Aggregator.is_silent``).
    silent_after: float
    chain_breaks: int
    reports: int
    last_index: int
    lost: int = 0
    unreadable: int = 0
    unknown_model: int = 0
    installed: float | None = None
    installed_upper: float = 0.0
    unmeasured: float = 0.0
    whole: int = 0
    methods: frozenset[str] = frozenset()
    method: str = METHOD_UNMEASURED
    allocated: float | None = None
    achieved: float | None = None
    upper: float = 0.0
    # Upper bound while silent: every GPU at its highest peak.
    quiet_upper: float = 0.0
    # The node's row and evidence while it reports.
    row: Row = field(default_factory=dict)
    evidence: tuple[int, ...] = ()
    # (key, row, method) per GPU while the node reports, built on first use.
    gpu_rows: list[tuple[Key, Row, str]] | None = None

    def silent(self, node: NodeState, now: float) -> bool:
        return bool(self.reports) and now - node.last_received > self.silent_after

    def live_gpu_rows(self) -> list[tuple[Key, Row, str]]:
        rows = self.gpu_rows
        if rows is None:
            rows = self.gpu_rows = [
                (
                    (Scope.GPU, g.uuid),
                    {
                        "installed_flops": g.installed,
                        "installed_flops_upper_bound": g.max_peak,
                        "achieved_flops": g.achieved,
                        "achieved_flops_upper_bound": g.achieved_upper,
                        "utilization_percent": g.utilization,
                        "power_watts": g.power_watts,
                    },
                    g.method,
                )
                for g in self.gpus
            ]
        return rows

    def quiet_gpu_rows(self) -> list[tuple[Key, Row, str]]:
        return [
            (
                (Scope.GPU, g.uuid),
                {
                    "installed_flops": g.installed,
                    "installed_flops_upper_bound": g.max_peak,
                    "achieved_flops": None,
                    "achieved_flops_upper_bound": g.max_peak,
                    "utilization_percent": None,
                    "power_watts": None,
                },
                METHOD_UNMEASURED,
            )
            for g in self.gpus
        ]


def summarize(node: NodeState, print_: Fingerprint, silent_after: float) -> NodeSummary:
    """``node``'s summary; ``print_`` is its fingerprint read before."""
    gpus = node.gpus
    s = NodeSummary(
        node.node_id,
        gpus,
        print_,
        silent_after,
        chain_breaks=node.chain_breaks,
        reports=node.reports,
        last_index=node.last_index,
    )
    if not s.reports:
        s.row = never_seen_row(s.chain_breaks)
        return s
    # One pass over the GPUs; the sums are ``sum()`` over lists in GPU order,
    # as a from-scratch build takes them (``sum`` of floats is not plain
    # left-to-right addition on every Python: the same call, the same bits).
    installed: list[float | None] = []
    allocated: list[float | None] = []
    achieved: list[float | None] = []
    peaks: list[float] = []
    uppers: list[float] = []
    methods: set[str] = set()
    for g in gpus:
        if not counts_in_totals(g):
            continue
        s.lost += g.lost
        s.unreadable += g.unreadable
        s.unknown_model += g.model is None
        installed.append(g.installed)
        allocated.append(g.allocated)
        achieved.append(g.achieved)
        peaks.append(g.max_peak)
        uppers.append(g.achieved_upper)
        methods.add(g.method)
    s.whole = len(peaks)
    s.installed = _sum(installed)
    s.installed_upper = s.quiet_upper = sum(peaks)
    s.unmeasured = node.unmeasured_gpu_seconds
    s.methods = frozenset(methods)
    s.method = worst_method(methods)
    s.allocated = _sum(allocated)
    s.achieved = _sum(achieved)
    s.upper = sum(uppers)
    s.evidence = (s.last_index,)
    s.row = {
        "installed_flops": s.installed,
        "installed_flops_upper_bound": s.installed_upper,
        "allocated_flops": s.allocated,
        "achieved_flops": s.achieved,
        "achieved_flops_upper_bound": s.upper,
        "unmeasured_gpu_seconds": s.unmeasured,
        "silent_seconds": 0.0,
        "gpus_lost": float(s.lost),
        "gpus_unreadable": float(s.unreadable),
        "chain_breaks": float(s.chain_breaks),
    }
    return s


class SummaryCache:
    """node id -> its ``NodeSummary``, rebuilt when the node's state changed."""

    def __init__(self, silent_after_intervals: float, expected_interval: float) -> None:
        self._silent_after = silent_after_intervals
        self._expected_interval = expected_interval
        self._by_node: dict[str, NodeSummary] = {}
        # Summaries (re)built: a test reads how many were reused.
        self.built = 0

    def silent_after(self, node: NodeState) -> float:
        """Seconds after its last report at which ``node`` is silent."""
        interval = max(self._expected_interval, *node.recent_intervals, node.interval)
        return self._silent_after * interval

    def get(self, node: NodeState) -> NodeSummary:
        print_: Fingerprint = (  # what a summary rests on besides the GPU list
            node.reports,
            node.chain_breaks,
            node.last_index,
            node.unmeasured_gpu_seconds,
            node.interval,
        )
        s = self._by_node.get(node.node_id)
        if s is not None and s.fingerprint == print_ and s.gpus is node.gpus:
            return s
        s = summarize(node, print_, self.silent_after(node))
        self._by_node[node.node_id] = s
        self.built += 1
        return s


__all__ = ["NodeSummary", "SummaryCache", "never_seen_row", "summarize"]
