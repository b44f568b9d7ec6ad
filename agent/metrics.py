"""The agent's Prometheus metrics, computed at scrape time from plain counters.

The runner and the stream client update an ``AgentStats``; the collector
registered on the agent's own registry reads it when scraped. Nothing here is
global, so many agents can live in one process, each with its own registry.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from protos.computewatch.v1 import telemetry_pb2
from protos.errors import ConfigError
from protos.reasons import REPORT_REJECT_REASONS, UNSPECIFIED_REASON

# Upper bounds of the sample duration histogram, seconds.
SAMPLE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class AgentStats:
    """Plain counters and the latest readings; read by the metrics collector."""

    # Exported as computewatch_agent_info{node_id, version}: the agent names its
    # node itself, so nothing depends on scrape addresses.
    node_id: str = ""
    version: str = ""
    samples: int = 0
    sample_seconds_sum: float = 0.0
    # Cumulative-by-construction counts per SAMPLE_BUCKETS bound, plus +Inf last.
    sample_buckets: list[int] = field(default_factory=lambda: [0] * (len(SAMPLE_BUCKETS) + 1))
    sample_errors: int = 0
    reports_sealed: int = 0
    reports_dropped: int = 0
    # Sealed but not stored by the spool (disk full, I/O error): never sent.
    reports_unspooled: int = 0
    spool_failing: bool = False
    # Corrected before sealing so the shared validation passes; or unfixable.
    reports_corrected: int = 0
    reports_unsealable: int = 0
    # Refused by the collector for content and replaced at the same sequence.
    refusals_replaced: int = 0
    last_sequence: int = 0
    unacked: int = 0
    acked_sequence: int = 0
    stream_connected: bool = False
    stream_reconnects: int = 0
    envelopes_sent: int = 0
    # Stream messages those went in (a backlog goes several envelopes a message).
    messages_sent: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    directives_received: int = 0
    nvml_up: bool = False
    # GPUs of the latest sample; replaced (never mutated) after each sample.
    gpus: Sequence[telemetry_pb2.GpuSample] = ()

    def observe_sample(self, seconds: float) -> None:
        self.samples += 1
        self.sample_seconds_sum += seconds
        self.sample_buckets[bisect.bisect_left(SAMPLE_BUCKETS, seconds)] += 1


class AgentMetrics(Collector):
    """Custom collector: every value is read from ``stats`` at scrape time."""

    def __init__(self, stats: AgentStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        p = "computewatch_agent_"
        if s.node_id:
            yield InfoMetricFamily(
                "computewatch_agent",
                "The node this agent reports for (its enrolled node_id) and its version.",
                value={"node_id": s.node_id, "version": s.version},
            )
        yield _counter(f"{p}samples", "GPU samples taken.", s.samples)
        yield _counter(
            f"{p}sample_errors", "Samples that failed before a report was built.", s.sample_errors
        )
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*SAMPLE_BUCKETS, float("inf")), s.sample_buckets, strict=True):
            running += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        yield HistogramMetricFamily(
            f"{p}sample_duration_seconds",
            "Time to sample the GPUs and attribute their processes.",
            buckets=buckets,
            sum_value=s.sample_seconds_sum,
        )
        yield _counter(f"{p}reports_sealed", "Reports signed and spooled.", s.reports_sealed)
        yield _counter(
            f"{p}reports_dropped",
            "Samples not sealed because max_unacked reports await acknowledgement;"
            " folded into the next report's interval.",
            s.reports_dropped,
        )
        yield _counter(
            f"{p}reports_unspooled",
            "Reports sealed but not stored by the spool (disk full, I/O error), so never"
            " sent; the next stored report counts them in unspooled_reports.",
            s.reports_unspooled,
        )
        yield _gauge(
            f"{p}spool_failing", "1 while the last report could not be stored.", s.spool_failing
        )
        yield _counter(
            f"{p}reports_corrected",
            "Reports corrected before sealing so they pass the collector's validation.",
            s.reports_corrected,
        )
        yield _counter(
            f"{p}reports_unsealable",
            "Samples for which no valid report could be built (not sealed).",
            s.reports_unsealable,
        )
        yield _counter(
            f"{p}refusals_replaced",
            "Reports the collector refused for their content, kept as local evidence"
            " and replaced by a corrected report at the same sequence.",
            s.refusals_replaced,
        )
        yield _gauge(f"{p}sequence", "Sequence number of the last sealed report.", s.last_sequence)
        yield _gauge(f"{p}unacked_reports", "Reports not yet acknowledged.", s.unacked)
        yield _gauge(f"{p}acked_sequence", "Highest acknowledged sequence.", s.acked_sequence)
        yield _gauge(
            f"{p}stream_connected", "1 while the telemetry stream is up.", s.stream_connected
        )
        yield _counter(
            f"{p}stream_reconnects",
            "Telemetry stream (re)connection attempts.",
            s.stream_reconnects,
        )
        yield _counter(f"{p}envelopes_sent", "Envelopes written to the stream.", s.envelopes_sent)
        rejected = CounterMetricFamily(
            f"{p}rejected", "Reports the collector rejected, by reason.", labels=["reason"]
        )
        # Every reason from 0, so increase() sees the first rejection.
        known = (*REPORT_REJECT_REASONS, UNSPECIFIED_REASON)
        for reason, n in sorted((dict.fromkeys(known, 0) | dict(s.rejected)).items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield _counter(
            f"{p}directives_received",
            "Directives received from the collector.",
            s.directives_received,
        )
        yield _gauge(f"{p}nvml_up", "1 when the last sample could read NVML.", s.nvml_up)
        yield from _gpu_metrics(s.gpus)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def _gpu_metrics(gpus: Sequence[telemetry_pb2.GpuSample]) -> Iterator[Metric]:
    labels = ["gpu", "uuid", "model"]
    util = GaugeMetricFamily(
        "computewatch_gpu_utilization_ratio",
        "NVML utilization.gpu / 100: share of time a kernel ran (an upper bound on activity).",
        labels=labels,
    )
    power = GaugeMetricFamily("computewatch_gpu_power_watts", "GPU power draw.", labels=labels)
    memory = GaugeMetricFamily(
        "computewatch_gpu_memory_used_bytes", "GPU memory in use.", labels=labels
    )
    for gpu in gpus:
        values = [str(gpu.index), gpu.uuid, gpu.product_name]
        # Absent fields are unknown: no series rather than a zero.
        if gpu.HasField("utilization_gpu_percent"):
            util.add_metric(values, gpu.utilization_gpu_percent / 100.0)
        if gpu.HasField("power_watts"):
            power.add_metric(values, gpu.power_watts)
        if gpu.HasField("memory_used_bytes"):
            memory.add_metric(values, float(gpu.memory_used_bytes))
    yield util
    yield power
    yield memory
    yield from _health_metrics(gpus)


_HEALTH_LABELS = {
    telemetry_pb2.GPU_HEALTH_OK: "ok",
    telemetry_pb2.GPU_HEALTH_LOST: "lost",
    telemetry_pb2.GPU_HEALTH_ERROR: "error",
    telemetry_pb2.GPU_HEALTH_UNREADABLE: "unreadable",
}


def _health_metrics(gpus: Sequence[telemetry_pb2.GpuSample]) -> Iterator[Metric]:
    """GPUs by health and failed NVML calls by function, in the last sample."""
    by_health = GaugeMetricFamily(
        "computewatch_agent_gpus",
        "GPUs in the last sample, by health (unreadable: handle or UUID unreadable,"
        " reported under a placeholder uuid).",
        labels=["health"],
    )
    counts = Counter(_HEALTH_LABELS.get(g.health, "unspecified") for g in gpus)
    for health in (*_HEALTH_LABELS.values(), "unspecified"):
        by_health.add_metric([health], float(counts.get(health, 0)))
    errors = GaugeMetricFamily(
        "computewatch_agent_nvml_field_errors",
        "NVML calls that failed in the last sample (summed over GPUs), by function;"
        " the fields they feed are absent (unknown).",
        labels=["function"],
    )
    failed = Counter(e.function for g in gpus for e in g.field_errors)
    for function, n in sorted(failed.items()):
        errors.add_metric([function], float(n))
    yield by_health
    yield errors


def register_metrics(registry: CollectorRegistry, stats: AgentStats) -> AgentMetrics:
    collector = AgentMetrics(stats)
    registry.register(collector)
    return collector


def serve_metrics(
    registry: CollectorRegistry,
    address: str,
    port: int,
    *,
    certfile: Path | None = None,
    keyfile: Path | None = None,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` on http(s)://address:port/metrics in a daemon thread
    (HTTPS when ``certfile`` and ``keyfile`` are given).

    Returns prometheus_client's (server, thread); ``server.shutdown()`` stops it.
    """
    try:
        return start_http_server(
            port,
            addr=address,
            registry=registry,
            certfile=None if certfile is None else str(certfile),
            keyfile=None if keyfile is None else str(keyfile),
        )
    except OSError as exc:
        raise ConfigError(f"metrics endpoint {address}:{port}: cannot listen ({exc})") from exc
