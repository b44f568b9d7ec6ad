"""``unattributed`` is per node: never pooled across nodes, never a halt across nodes."""

from __future__ import annotations

import pytest

from collector.aggregate import Aggregator
from collector.scoping import ScopeResolver
from collector.snapshot import Scope
from protos import devices
from protos.computewatch.v1 import control_pb2, telemetry_pb2
from protos.errors import ScopeError
from protos.jobs import is_unattributed, job_key, unattributed_id, unattributed_node
from tests.support import gpu

H100 = devices.lookup("NVIDIA H100 80GB HBM3")
assert H100 is not None


def report(node: str, *jobs: str, seq: int = 1) -> telemetry_pb2.NodeReport:
    gpus = [gpu(i, util=100.0, job=j, pid=100 + i) for i, j in enumerate(jobs)]
    for g in gpus:
        g.processes[0].attribution = (
            "unattributed" if is_unattributed(g.processes[0].job_id) else "slurm"
        )
    return telemetry_pb2.NodeReport(node_id=node, sequence=seq, interval_seconds=1.0, gpus=gpus)


def two_nodes() -> Aggregator:
    agg = Aggregator()
    # "a" runs an old agent (bare "unattributed"); "b" a new one; "c" claims a's pseudo-job.
    agg.ingest(report("a", "unattributed", "4242"), 0, 100.0)
    agg.ingest(report("b", "unattributed@b", "4242"), 1, 100.0)
    agg.ingest(report("c", "unattributed@a", ""), 2, 100.0)
    return agg


def test_ids_round_trip() -> None:
    assert unattributed_id("n-1") == "unattributed@n-1"
    assert unattributed_node("unattributed@n-1") == "n-1"
    assert unattributed_node("unattributed") is None
    assert unattributed_node("4242") is None
    assert job_key("", "n") == job_key("unattributed@x", "n") == "unattributed@n"
    assert job_key("4242", "n") == "4242"


def test_unattributed_compute_is_counted_per_node_never_pooled() -> None:
    assert H100 is not None
    agg = two_nodes()
    assert "unattributed" not in agg.jobs
    assert sorted(j for j in agg.jobs if is_unattributed(j)) == [
        "unattributed@a",
        "unattributed@b",
        "unattributed@c",
    ]
    # Node c's claim on a's pseudo-job (and its empty id) count as c's own.
    assert set(agg.jobs["unattributed@a"].per_node) == {"a"}
    assert set(agg.jobs["unattributed@c"].per_node) == {"c"}
    assert agg.jobs["unattributed@c"].cumulative_flop == pytest.approx(2 * H100.peak_flops)
    assert set(agg.jobs["4242"].per_node) == {"a", "b"}
    snap = agg.snapshot(100.5)
    assert snap.job_nodes["unattributed@b"] == ("b",)
    assert snap.get(Scope.JOB, "unattributed@a", "gpus") == 1.0


def test_a_job_halt_on_an_unattributed_pseudo_job_reaches_its_node_only() -> None:
    agg = two_nodes()
    resolver = ScopeResolver(agg, lambda: ["a", "b", "c"])
    scope = resolver.for_targets(Scope.JOB, ["unattributed@a"])
    assert list(scope.node_ids) == ["a"]
    asked = control_pb2.Scope(kind=control_pb2.SCOPE_KIND_JOB, job_ids=["unattributed@b"])
    assert list(resolver.requested(asked).node_ids) == ["b"]


def test_a_job_halt_on_the_bare_unattributed_name_is_refused() -> None:
    agg = two_nodes()
    resolver = ScopeResolver(agg, lambda: ["a", "b", "c"])
    asked = control_pb2.Scope(kind=control_pb2.SCOPE_KIND_JOB, job_ids=["unattributed", "4242"])
    with pytest.raises(ScopeError, match="unattributed@<node_id>"):
        resolver.requested(asked)
    # Even a state that pooled nodes under one pseudo-job (restored, replayed) is narrowed.
    agg.jobs["unattributed@a"].per_node["b"] = (1.0, 1.0, 1, 0)
    assert list(resolver.jobs(["unattributed@a"]).node_ids) == ["a"]
    assert list(resolver.jobs(["unattributed"]).node_ids) == []
