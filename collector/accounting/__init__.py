"""Compute accounting: every figure an interval with its method named.

- ``aggregate``: the aggregator: installed, allocated and achieved FLOP/s and
  cumulative FLOP per GPU, node, job, actor and cluster, from each accepted
  report;
- ``gpu``: one GPU sample's rate, as an estimate, an upper bound and (where
  the per-pipe activity allows) a lower bound, FLOP/s; ``mig``: MIG slices;
- ``window``: one report's contribution to a GPU's cumulative figures,
  integrated over the report's own window, with the time it does not cover
  counted as unmeasured GPU-seconds;
- ``state``, ``shares``, ``jobbounds``: the per-job state the aggregator
  keeps, how a GPU's figures split between its jobs, and the bounds on how
  much job state a node can make the collector hold;
- ``actors``, ``actor_metrics``: per-actor windows and their bounded
  ``/metrics`` families;
- ``snapshot``, ``figures``: what the rule engine sees each tick, figures by
  (scope, key, metric).

Imports no other part of the collector.
"""

from collector.accounting.gpu import (
    METHOD_PIPES,
    METHOD_TENSOR,
    METHOD_UNKNOWN_MODEL,
    METHOD_UNMEASURED,
    METHOD_UTILIZATION,
    GpuFigures,
    gpu_figures,
)
from collector.accounting.window import WindowFlop, gap_seconds, window_flop

__all__ = [
    "METHOD_PIPES",
    "METHOD_TENSOR",
    "METHOD_UNKNOWN_MODEL",
    "METHOD_UNMEASURED",
    "METHOD_UTILIZATION",
    "GpuFigures",
    "WindowFlop",
    "gap_seconds",
    "gpu_figures",
    "window_flop",
]
