"""One report's contribution to a GPU's cumulative figures, and gaps.

A report's figures stand for its own window: ``interval_seconds`` (time since
the agent's previous sample, as the agent measured it), with no clamp. When
a GPU's activity covers less than that (``activity_window_seconds``: samples
dropped inside the interval), the rest of the interval is *unmeasured*: no
estimate, charged at the GPU's highest peak in the upper bound.

Time between two reports that neither covers (agent down, reports lost, a
chain gap) is a *gap*: sample time minus the previous sample time minus this
report's interval. ``gap_seconds`` ignores clock jitter below a small
tolerance; the aggregator counts the rest as unmeasured GPU-seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from collector.accounting.gpu import GpuFigures

# Jitter between the agent's interval (monotonic clock) and its sample time
# (wall clock) that is not a gap. Absolute: a gap is never hidden in a long
# interval.
GAP_TOLERANCE_SECONDS = 0.05


@dataclass(frozen=True)
class WindowFlop:
    """FLOP of one GPU over one report window."""

    estimate: float
    upper: float
    lower: float
    measured_seconds: float
    unmeasured_seconds: float


def window_flop(fig: GpuFigures, interval: float) -> WindowFlop:
    interval = max(interval, 0.0)
    if fig.achieved is None:
        # Unmeasured for the whole window: the upper bound alone counts it.
        return WindowFlop(0.0, fig.achieved_upper * interval, 0.0, 0.0, interval)
    window = interval if fig.activity_window is None else min(fig.activity_window, interval)
    missing = interval - window
    return WindowFlop(
        estimate=fig.achieved * window,
        upper=fig.achieved_upper * window + fig.max_peak * missing,
        lower=(fig.achieved_lower or 0.0) * window,
        measured_seconds=window,
        unmeasured_seconds=missing,
    )


def gap_seconds(previous_sample: float, sample: float, interval: float) -> float:
    """Seconds between two reports that neither covers (0 within the tolerance)."""
    gap = sample - previous_sample - max(interval, 0.0)
    return gap if gap > GAP_TOLERANCE_SECONDS else 0.0
