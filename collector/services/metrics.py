"""Collector metrics, computed at scrape time from the live objects.

Per-job detail stays out of label sets (it is in the signed stream and the
Status API); per-node series are bounded by the enrolled fleet.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector.accounting.actor_metrics import actor_families
from collector.accounting.aggregate import Aggregator
from collector.accounting.snapshot import CLUSTER_KEY, Scope
from collector.nodes.sessions import Sessions
from collector.services.node_series import NodeSeries
from collector.store.ledger import Ledger
from collector.telemetry.ingest import IngestStats
from protos.reasons import REPORT_REJECT_REASONS

# What the scrape reads: no GPU rows; the job rows only inside the actors'.
_SCOPES = frozenset({Scope.CLUSTER, Scope.NODE, Scope.ACTOR})


def _nan(value: float | None) -> float:
    """Unknown is NaN in Prometheus, never zero."""
    return float("nan") if value is None else value


class _Deferred(threading.local):
    """Per scraping thread: whether the per-node series are deferred, and them."""

    on: bool = False
    series: NodeSeries | None = None


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
        self._deferred = _Deferred()

    @contextlib.contextmanager
    def deferring_node_series(self) -> Iterator[_Deferred]:
        """While open, a ``collect`` in this thread leaves the per-node series
        out and puts them in the yielded box, for the caller to write
        (``NodeSeries.render``: the same lines, ~10x faster)."""
        box = self._deferred
        box.on, box.series = True, None
        try:
            yield box
        finally:
            box.on = False

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
        snap = self._agg.snapshot(now, _SCOPES)
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
        series = NodeSeries()
        rows = series.rows
        total = 0
        values = snap.values
        summary = self._agg.summaries.get
        nodes_now = list(self._agg.nodes.values())  # the event loop may add nodes meanwhile
        for node in nodes_now:
            s = summary(node)
            total += s.whole  # physical GPUs: a MIG device is counted in its GPU
            if not s.reports:
                counts["never_seen"] += 1
                rows.append((s.node_id, None, s.chain_breaks))
                continue
            counts["silent" if s.silent(node, now) else "ok"] += 1
            row = values.get((Scope.NODE, s.node_id), {})
            sample = (
                max(0.0, now - node.last_received),
                _nan(row.get("achieved_flops")),
                _nan(row.get("achieved_flops_upper_bound")),
                _nan(row.get("unmeasured_gpu_seconds")),
            )
            rows.append((s.node_id, sample, s.chain_breaks))
        for state, n in counts.items():
            nodes.add_metric([state], n)
        yield nodes
        if self._deferred.on:
            self._deferred.series = (
                series  # written by the metrics server (collector.services.exposition)
            )
        else:
            yield from series.families()
        gpus = GaugeMetricFamily("computewatch_gpus", "GPUs by state.", labels=["state"])
        lost = int(cluster.get("gpus_lost") or 0)
        unknown = int(cluster.get("gpus_unknown_model") or 0)
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
