"""Collector metrics, computed at scrape time from the live objects.

Per-job detail stays out of label sets (it is in the signed stream and the
Status API); per-node series are bounded by the enrolled fleet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector.aggregate import Aggregator
from collector.ingest import IngestStats
from collector.ledger import Ledger
from collector.sessions import Sessions
from collector.snapshot import CLUSTER_KEY, Scope


def _nan(value: float | None) -> float:
    """Unknown is NaN in Prometheus, never zero."""
    return float("nan") if value is None else value


class CollectorMetrics(Collector):
    def __init__(
        self,
        stats: IngestStats,
        ledger: Ledger,
        aggregator: Aggregator,
        sessions: Sessions,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stats = stats
        self._ledger = ledger
        self._agg = aggregator
        self._sessions = sessions
        self._clock = clock

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        yield CounterMetricFamily(
            "computewatch_collector_reports_accepted",
            "Reports verified, chained and committed to the ledger.",
            value=s.accepted,
        )
        yield CounterMetricFamily(
            "computewatch_collector_reports_replayed",
            "Envelopes received again after acceptance (acknowledged, not written).",
            value=s.replayed,
        )
        rejected = CounterMetricFamily(
            "computewatch_collector_rejected",
            "Envelopes refused, by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(s.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield GaugeMetricFamily(
            "computewatch_collector_ledger_entries",
            "Entries committed to the ledger (= Merkle log size).",
            value=self._ledger.size,
        )
        yield CounterMetricFamily(
            "computewatch_collector_ledger_commits",
            "Ledger transactions committed.",
            value=self._ledger.batches,
        )
        yield CounterMetricFamily(
            "computewatch_collector_ledger_write_errors",
            "Ledger transactions that failed (their reports were not acknowledged).",
            value=self._ledger.write_errors,
        )
        yield GaugeMetricFamily(
            "computewatch_collector_streams_open",
            "Agent telemetry streams bound to a node.",
            value=len(self._sessions),
        )
        yield from self._density()

    def _density(self) -> Iterator[Metric]:
        now = self._clock()
        snap = self._agg.snapshot(now)
        cluster = snap.values[(Scope.CLUSTER, CLUSTER_KEY)]
        for name, help_text in (
            ("installed_flops", "Dense peak FLOP/s of every GPU of a known model."),
            ("allocated_flops", "Peak FLOP/s of GPUs held by a compute process (live nodes)."),
            ("achieved_flops", "Peak x activity, FLOP/s (live nodes); see method in docs."),
        ):
            value = cluster.get(name)
            yield GaugeMetricFamily(
                f"computewatch_cluster_{name}",
                help_text,
                value=float("nan") if value is None else value,
            )
        yield GaugeMetricFamily(
            "computewatch_cluster_cumulative_flop",
            "FLOP integrated over all jobs since the ledger began.",
            value=cluster.get("cumulative_flop") or 0.0,
        )
        nodes = GaugeMetricFamily(
            "computewatch_nodes", "Enrolled nodes by state.", labels=["state"]
        )
        counts = {"ok": 0, "silent": 0, "never_seen": 0}
        age = GaugeMetricFamily(
            "computewatch_node_last_report_age_seconds",
            "Seconds since the node's last committed report.",
            labels=["node"],
        )
        achieved = GaugeMetricFamily(
            "computewatch_node_achieved_flops", "Achieved FLOP/s per node.", labels=["node"]
        )
        breaks = CounterMetricFamily(
            "computewatch_node_chain_breaks",
            "Reports refused for a broken chain, gap, rollback or equivocation.",
            labels=["node"],
        )
        nodes_now = list(self._agg.nodes.values())  # the event loop may add nodes meanwhile
        for node in nodes_now:
            breaks.add_metric([node.node_id], node.chain_breaks)
            if not node.reports:
                counts["never_seen"] += 1
                continue
            counts["silent" if self._agg.is_silent(node, now) else "ok"] += 1
            age.add_metric([node.node_id], max(0.0, now - node.last_received))
            value = snap.get(Scope.NODE, node.node_id, "achieved_flops")
            achieved.add_metric([node.node_id], _nan(value))
        for state, n in counts.items():
            nodes.add_metric([state], n)
        yield nodes
        yield age
        yield achieved
        yield breaks
        gpus = GaugeMetricFamily("computewatch_gpus", "GPUs by state.", labels=["state"])
        lost = int(cluster.get("gpus_lost") or 0)
        unknown = int(cluster.get("gpus_unknown_model") or 0)
        total = sum(sum(not g.parent_uuid for g in n.gpus) for n in nodes_now)
        gpus.add_metric(["lost"], lost)
        gpus.add_metric(["unknown_model"], unknown)
        gpus.add_metric(["total"], total)
        yield gpus
        yield GaugeMetricFamily(
            "computewatch_jobs", "Jobs the collector has seen.", value=len(self._agg.jobs)
        )
