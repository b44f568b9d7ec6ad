"""What the aggregator keeps per node and per job between reports."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from collector.accounting.gpu import (
    METHOD_PIPES,
    METHOD_TENSOR,
    METHOD_UNKNOWN_MODEL,
    METHOD_UNMEASURED,
    METHOD_UTILIZATION,
    GpuFigures,
)
from protos.computewatch.v1 import telemetry_pb2

_EVIDENCE_PER_JOB = 32
# Methods from the best estimate to none; a figure names the worst it used.
_METHOD_ORDER = (
    METHOD_PIPES,
    METHOD_TENSOR,
    METHOD_UTILIZATION,
    METHOD_UNKNOWN_MODEL,
    METHOD_UNMEASURED,
)


def worst_method(methods: set[str]) -> str:
    for m in reversed(_METHOD_ORDER):
        if m in methods:
            return m
    return METHOD_UNMEASURED


@dataclass
class NodeState:
    node_id: str
    last_received: float = 0.0
    last_index: int = -1
    last_sequence: int = 0
    # The agent's sample time of the last report (unix seconds), 0 before one.
    last_sample: float = 0.0
    interval: float = 1.0
    # Intervals of the last few reports: silence is judged on the longest, so
    # an out-of-cycle report (an enforcement receipt, a few ms after the last
    # one) does not make a node look silent before its next regular report.
    recent_intervals: deque[float] = field(default_factory=lambda: deque(maxlen=8))
    gpus: list[GpuFigures] = field(default_factory=list)
    enforcement: telemetry_pb2.EnforcementState = field(
        default_factory=telemetry_pb2.EnforcementState
    )
    nvml_status: int = 0
    chain_breaks: int = 0
    reports: int = 0
    # Jobs with a process on this node in its last report.
    jobs: set[str] = field(default_factory=set)
    # GPU-seconds of this node no report measured (gaps, short activity
    # windows, unmeasurable GPUs), since the collector first saw it.
    unmeasured_gpu_seconds: float = 0.0


@dataclass
class NodeShare:
    """A job's part of one node's last report (rates, FLOP/s)."""

    achieved: float
    upper: float
    allocated: float
    gpus: int
    gpus_unknown_model: int
    gpus_unmeasured: int
    # Sum of the job's GPUs' highest peaks: its bound while the node is silent.
    max_peak: float


@dataclass
class JobState:
    """A job's figures. ``upper_bound``: some of its GPUs report no GPM
    activity now, so its estimate rests on ``utilization.gpu``."""

    job_id: str
    # Estimate over the measured GPU-seconds.
    cumulative_flop: float = 0.0
    cumulative_flop_upper: float = 0.0
    cumulative_flop_lower: float = 0.0
    measured_gpu_seconds: float = 0.0
    # Kept after the job leaves a node: a job's history is never made smaller.
    unmeasured_gpu_seconds: float = 0.0
    # Nodes whose last report measured this job with utilization.gpu (no GPM
    # activity): its current estimate there is itself an upper bound.
    upper_nodes: set[str] = field(default_factory=set)
    per_node: dict[str, NodeShare] = field(default_factory=dict)
    # Every estimate method the job's cumulative figures used (its ``method``
    # is the worst of them: the cumulative figure rests on all).
    methods: set[str] = field(default_factory=set)
    parents: tuple[str, ...] = ()
    model_id: str = ""
    evidence: deque[int] = field(default_factory=lambda: deque(maxlen=_EVIDENCE_PER_JOB))
    capability: dict[str, float] = field(default_factory=dict)

    @property
    def upper_bound(self) -> bool:
        return bool(self.upper_nodes)

    @property
    def method(self) -> str:
        return worst_method(self.methods)

    @property
    def cumulative_estimate(self) -> float | None:
        """The estimate, or None when nothing of the job was ever measured."""
        if self.measured_gpu_seconds <= 0 and self.unmeasured_gpu_seconds > 0:
            return None
        return self.cumulative_flop
