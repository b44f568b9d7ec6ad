"""Collector metrics, computed at scrape time from the live objects.

Per-job detail stays out of label sets (it is in the signed stream and the
Status API); per-node series are bounded by the enrolled fleet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector.actor_metrics import actor_families
from collector.aggregate import Aggregator
from collector.ingest import IngestStats
from collector.ledger import Ledger
from collector.sessions import Sessions
from collector.snapshot import CLUSTER_KEY, Scope
from protos.reasons import REPORT_REJECT_REASONS


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
        # Every reason from 0, so increase() sees the first rejection.
        counts = dict.fromkeys(REPORT_REJECT_REASONS, 0) | dict(s.rejected)
        for reason, n in sorted(counts.items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield CounterMetricFamily(
            "computewatch_collector_evidence_not_kept",
            "Conflicting envelopes only counted: their signing key already has"
            " max_evidence_per_key kept as evidence.",
            value=s.evidence_counted_only,
        )
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
        write_errors = CounterMetricFamily(
            "computewatch_collector_ledger_write_errors",
            "Ledger writes that failed, by reason (disk_full, io_error, ...); their reports"
            " were refused, never acknowledged.",
            labels=["reason"],
        )
        for reason, n in sorted(self._ledger.write_errors.items()):
            write_errors.add_metric([reason], n)
        yield write_errors
        yield GaugeMetricFamily(
            "computewatch_collector_ledger_writable",
            "1 while the ledger accepts appends; 0 from a failed write until the recovery"
            " probe has re-read the disk (reports are refused meanwhile).",
            value=1 if self._ledger.writable else 0,
        )
        yield CounterMetricFamily(
            "computewatch_collector_ledger_recoveries",
            "Times the ledger became writable again after a failed write.",
            value=self._ledger.recoveries,
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
            "FLOP integrated over all jobs since the ledger began (estimate).",
            value=cluster.get("cumulative_flop") or 0.0,
        )
        for name, key, help_text in (
            (
                "upper_bound_achieved_flops",
                "achieved_flops_upper_bound",
                "Upper bound of achieved FLOP/s: activity at each GPU's highest dense peak"
                " at any precision; silent nodes' GPUs at peak.",
            ),
            (
                "upper_bound_cumulative_flop",
                "cumulative_flop_upper_bound",
                "Upper bound of cumulative FLOP over all jobs, unmeasured time at peak.",
            ),
            (
                "unmeasured_gpu_seconds",
                "unmeasured_gpu_seconds",
                "GPU-seconds no report measured (gaps, silence, unknown models, errors).",
            ),
        ):
            yield GaugeMetricFamily(
                f"computewatch_cluster_{name}", help_text, value=_nan(cluster.get(key))
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
            "computewatch_node_achieved_flops",
            "Achieved FLOP/s per node (estimate; NaN when unknown).",
            labels=["node"],
        )
        achieved_upper = GaugeMetricFamily(
            "computewatch_node_upper_bound_achieved_flops",
            "Upper bound of achieved FLOP/s per node.",
            labels=["node"],
        )
        unmeasured = GaugeMetricFamily(
            "computewatch_node_unmeasured_gpu_seconds",
            "GPU-seconds of the node no report measured.",
            labels=["node"],
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
            upper = snap.get(Scope.NODE, node.node_id, "achieved_flops_upper_bound")
            achieved_upper.add_metric([node.node_id], _nan(upper))
            gap = snap.get(Scope.NODE, node.node_id, "unmeasured_gpu_seconds")
            unmeasured.add_metric([node.node_id], _nan(gap))
        for state, n in counts.items():
            nodes.add_metric([state], n)
        yield nodes
        yield age
        yield achieved
        yield achieved_upper
        yield unmeasured
        yield breaks
        gpus = GaugeMetricFamily("computewatch_gpus", "GPUs by state.", labels=["state"])
        lost = int(cluster.get("gpus_lost") or 0)
        unknown = int(cluster.get("gpus_unknown_model") or 0)
        total = sum(sum(not g.parent_uuid for g in n.gpus) for n in nodes_now)
        gpus.add_metric(["lost"], lost)
        gpus.add_metric(["unreadable"], int(cluster.get("gpus_unreadable") or 0))
        gpus.add_metric(["unknown_model"], unknown)
        gpus.add_metric(["total"], total)
        yield gpus
        yield GaugeMetricFamily(
            "computewatch_jobs",
            "Job states the collector holds in memory.",
            value=len(self._agg.jobs),
        )
        yield GaugeMetricFamily(
            "computewatch_jobs_ended",
            "Job states held whose jobs ended (forgotten after ended_job_ttl_seconds).",
            value=self._agg.bounds.ended_jobs,
        )
        forgotten = CounterMetricFamily(
            "computewatch_job_states_forgotten",
            "Ended jobs' states dropped from memory (their reports stay in the ledger):"
            " aged (past the TTL, or oldest over max_job_states) or room (for a new job).",
            labels=["cause"],
        )
        forgotten.add_metric(["aged"], self._agg.bounds.aged_out)
        forgotten.add_metric(["room"], self._agg.bounds.evicted)
        yield forgotten
        yield from actor_families(snap, self._agg.actors)
