"""Compute accounting: every figure an interval with its method named.

- ``gpu``: one GPU sample's rate, as an estimate, an upper bound and (where
  the per-pipe activity allows) a lower bound, FLOP/s;
- ``window``: one report's contribution to a GPU's cumulative figures,
  integrated over the report's own window, with the time it does not cover
  counted as unmeasured GPU-seconds;
- ``jobs``: the per-job state the aggregator keeps (cumulative estimate,
  upper bound, unmeasured GPU-seconds), which a job keeps after it leaves a
  node.
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
