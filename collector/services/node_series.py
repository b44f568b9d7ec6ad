"""The per-node series of ``/metrics``: one sample per node and family.

At 5,000 nodes these are 25,000 samples, and ``prometheus_client`` spends
~20 us formatting each (it validates every metric and label name with a
regular expression, per sample): ~0.5 s of the GIL per scrape. ``render``
writes the same lines directly, ~2 us a sample: the label ``node="..."`` is
escaped once per node id and kept, values go through ``floatToGoString`` as
``prometheus_client`` does. The collector's metrics server appends them to
the rest of the exposition (``collector.services.exposition``); ``families`` yields
the same series as ``prometheus_client`` families for any other reader of
the registry. Both formats (Prometheus text and OpenMetrics) write these
families' lines alike except for a counter's ``_total`` in its HELP and TYPE.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import utils
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# One node: its id, its gauges' values in ``FAMILIES`` order (age, achieved,
# upper bound, unmeasured; NaN where unknown; None: it never reported, no
# sample) and its chain breaks (always a sample).
Row = tuple[str, tuple[float, float, float, float] | None, int]

# (name, help, counter) in the order the families are written.
FAMILIES: tuple[tuple[str, str, bool], ...] = (
    (
        "computewatch_node_last_report_age_seconds",
        "Seconds since the node's last committed report.",
        False,
    ),
    (
        "computewatch_node_achieved_flops",
        "Achieved FLOP/s per node (estimate; NaN when unknown).",
        False,
    ),
    (
        "computewatch_node_upper_bound_achieved_flops",
        "Upper bound of achieved FLOP/s per node.",
        False,
    ),
    (
        "computewatch_node_unmeasured_gpu_seconds",
        "GPU-seconds of the node no report measured.",
        False,
    ),
    (
        "computewatch_node_chain_breaks",
        "Reports refused for a broken chain, gap, rollback or equivocation.",
        True,
    ),
)
# How prometheus_client writes a value (untyped there).
_go: Callable[[float], str] = utils.floatToGoString
# Labels rendered, by node id: bounded by the enrolled fleet.
_LABELS: dict[str, str] = {}
_MAX_LABELS = 1 << 17


def _label(node_id: str) -> str:
    label = _LABELS.get(node_id)
    if label is None:
        value = node_id.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
        label = f'{{node="{value}"}} '
        if len(_LABELS) < _MAX_LABELS:
            _LABELS[node_id] = label
    return label


@dataclass
class NodeSeries:
    """Every node's row of one scrape (``Row``), in the registry's order."""

    rows: list[Row] = field(default_factory=list)

    def families(self) -> Iterator[Metric]:
        """The same series as ``prometheus_client`` families."""
        out: list[GaugeMetricFamily | CounterMetricFamily] = [
            CounterMetricFamily(name, text, labels=["node"])
            if counter
            else GaugeMetricFamily(name, text, labels=["node"])
            for name, text, counter in FAMILIES
        ]
        gauges, breaks = out[:-1], out[-1]
        for node_id, values, chain_breaks in self.rows:
            labels = [node_id]
            if values is not None:
                for family, value in zip(gauges, values, strict=True):
                    family.add_metric(labels, value)
            breaks.add_metric(labels, chain_breaks)
        yield from out

    def render(self, *, openmetrics: bool) -> str:
        """The families' lines as ``generate_latest`` writes them (Prometheus
        text format, or OpenMetrics without the ``# EOF``)."""
        reported = [(_label(n), v) for n, v, _ in self.rows if v is not None]
        out: list[str] = []
        for i, (name, text, counter) in enumerate(FAMILIES):
            title = name if openmetrics or not counter else name + "_total"
            doc = text.replace("\\", r"\\").replace("\n", r"\n")
            if openmetrics:
                doc = doc.replace('"', r"\"")
            kind = "counter" if counter else "gauge"
            out.append(f"# HELP {title} {doc}\n# TYPE {title} {kind}\n")
            if counter:
                sample = name + "_total"
                out.extend([f"{sample}{_label(n)}{_go(b)}\n" for n, _, b in self.rows])
            else:
                out.extend([f"{name}{lab}{_go(v[i])}\n" for lab, v in reported])
        return "".join(out)


__all__ = ["FAMILIES", "NodeSeries", "Row"]
