"""Metrics of a collector candidate in high availability, computed at scrape time.

- ``computewatch_collector_leader``: 1 while this collector leads (its lease
  proven), else 0. Summed over the candidates it must be exactly 1.
- ``computewatch_collector_leader_term``: the fencing term it last held (0: never).
- ``computewatch_collector_leader_elections_total``: times it became leader.
- ``computewatch_collector_leader_lease_errors_total``: renewals or takeover
  attempts that could not reach the database.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector.ha.elector import Elector


class HaMetrics(Collector):
    def __init__(self, elector: Elector) -> None:
        self._elector = elector

    def collect(self) -> Iterator[Metric]:
        e = self._elector
        yield GaugeMetricFamily(
            "computewatch_collector_leader",
            "1 while this collector holds the leader lease (sequences, signs), else 0.",
            value=1 if e.current_term() is not None else 0,
        )
        yield GaugeMetricFamily(
            "computewatch_collector_leader_term",
            "Fencing term of the leader lease this collector last held (0: never).",
            value=e.term or e.last_term,
        )
        yield CounterMetricFamily(
            "computewatch_collector_leader_elections",
            "Times this collector became the leader.",
            value=e.elections,
        )
        yield CounterMetricFamily(
            "computewatch_collector_leader_lease_errors",
            "Lease renewals or takeovers that could not reach the database.",
            value=e.errors,
        )
