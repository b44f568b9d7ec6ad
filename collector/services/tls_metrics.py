"""Certificate reloads of the collector's TLS listener, for Prometheus."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from protos.tls import TlsStats


class TlsMetrics(Collector):
    def __init__(self, stats: TlsStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "computewatch_collector_tls_reloads",
            "Re-reads of the TLS certificate files after they changed, by result.",
            labels=["result"],
        )
        family.add_metric(["ok"], self._stats.reloads)
        family.add_metric(["error"], self._stats.reload_errors)
        yield family
