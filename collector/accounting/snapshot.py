"""What the rule engine sees each tick: figures by (scope, key, metric).

The aggregator builds one ``Snapshot`` per tick; rules read it. A value of
``None`` means *unknown* (no data, a silent node, a lost GPU): it never
satisfies a comparison.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Scope(StrEnum):
    CLUSTER = "cluster"
    NODE = "node"
    JOB = "job"
    GPU = "gpu"
    # Who the jobs run for (collector.accounting.actors).
    ACTOR = "actor"


# Metrics the aggregator publishes, by scope. Units in the name's suffix:
# _flops is FLOP/s, _flop is a count, _seconds, _watts; plain names are counts.
METRICS: Mapping[Scope, tuple[str, ...]] = {
    Scope.CLUSTER: (
        "installed_flops",
        "installed_flops_upper_bound",
        "allocated_flops",
        "achieved_flops",
        "achieved_flops_upper_bound",
        "cumulative_flop",
        "cumulative_flop_upper_bound",
        "unmeasured_gpu_seconds",
        "nodes_silent",
        "gpus_lost",
        "gpus_unreadable",
        "gpus_unknown_model",
        "chain_breaks",
    ),
    Scope.NODE: (
        "installed_flops",
        "installed_flops_upper_bound",
        "allocated_flops",
        "achieved_flops",
        "achieved_flops_upper_bound",
        "unmeasured_gpu_seconds",
        "silent_seconds",
        "gpus_lost",
        "gpus_unreadable",
        "chain_breaks",
    ),
    Scope.JOB: (
        "cumulative_flop",
        "cumulative_flop_upper_bound",
        "achieved_flops",
        "achieved_flops_upper_bound",
        "allocated_flops",
        "gpus",
        "gpus_unknown_model",
        "unmeasured_gpu_seconds",
    ),
    Scope.GPU: (
        "installed_flops",
        "installed_flops_upper_bound",
        "achieved_flops",
        "achieved_flops_upper_bound",
        "utilization_percent",
        "power_watts",
    ),
    Scope.ACTOR: (
        "cumulative_flop",
        "cumulative_flop_upper_bound",
        "cumulative_7d_flop",
        "cumulative_7d_flop_upper_bound",
        "cumulative_30d_flop",
        "cumulative_30d_flop_upper_bound",
        "cumulative_90d_flop",
        "cumulative_90d_flop_upper_bound",
        "achieved_flops",
        "achieved_flops_upper_bound",
        "allocated_flops",
        "gpus",
        "jobs",
        "unmeasured_gpu_seconds",
    ),
}

# Compute metrics published as an interval: the estimate under the metric's
# own name, the upper bound under ``<metric>_upper_bound``.
BOUNDED_METRICS: frozenset[str] = frozenset(
    {
        "installed_flops",
        "achieved_flops",
        "cumulative_flop",
        "lineage_cumulative_flop",
        "cumulative_7d_flop",
        "cumulative_30d_flop",
        "cumulative_90d_flop",
    }
)
UPPER_SUFFIX = "_upper_bound"

# The cluster scope has exactly one key.
CLUSTER_KEY = "cluster"


@dataclass(frozen=True)
class Snapshot:
    """Aggregates at one instant (``time`` in unix seconds)."""

    time: float
    # (scope, key) -> metric -> value (None: unknown)
    values: Mapping[tuple[Scope, str], Mapping[str, float | None]]
    # (scope, key) -> log indices of the reports the figures rest on
    evidence: Mapping[tuple[Scope, str], tuple[int, ...]] = field(default_factory=dict)
    # job id -> parent job ids (declared lineage)
    lineage: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # job id -> node ids the job ran on at this instant
    job_nodes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # (scope, key) -> the estimate's method (collector.accounting.gpu METHOD_*)
    methods: Mapping[tuple[Scope, str], str] = field(default_factory=dict)
    # job id -> the actor it counts under (collector.accounting.actors)
    job_actors: Mapping[str, str] = field(default_factory=dict)

    def get(self, scope: Scope, key: str, metric: str) -> float | None:
        return self.values.get((scope, key), {}).get(metric)

    def keys(self, scope: Scope) -> Iterator[str]:
        return (k for (s, k) in self.values if s is scope)
