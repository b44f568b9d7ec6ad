"""``unattributed`` is per node: never pooled across nodes, never a halt across nodes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from collector.accounting.aggregate import Aggregator
from collector.accounting.snapshot import Scope
from collector.nodes.sessions import Sessions
from collector.stop.directives import DirectiveBook
from collector.stop.effectiveness import EffectTracker, tracker_listener
from collector.stop.scoping import ScopeResolver
from collector.store.ledger import Entry, Ledger
from protos import devices, dsse
from protos.computewatch.v1 import control_pb2, telemetry_pb2
from protos.errors import ScopeError
from protos.jobs import is_unattributed, job_key, unattributed_id, unattributed_node
from protos.keys import PrivateKey
from tests.support import Node, gpu

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


def test_terminating_a_nodes_unattributed_processes_counts_an_old_agents_bare_name(
    tmp_path: Path,
) -> None:
    node = Node("a", PrivateKey.generate())
    key = PrivateKey.generate()

    def sealed(job: str | None) -> bytes:
        g = gpu(0, job=job)
        if job is not None:
            g.processes[0].attribution = "unattributed"
        return node.seal(node.report([g]))

    async def append(ledger: Ledger, agg: Aggregator, data: bytes) -> None:
        index = await ledger.append(
            Entry(data, dsse.REPORT_TYPE, node_id=node.node_id, keyid=node.key.keyid)
        )
        rep = telemetry_pb2.NodeReport()
        rep.ParseFromString(dsse.open_envelope(data).payload)
        agg.ingest(rep, index, 0.0)

    async def body() -> None:
        ledger = Ledger(tmp_path / "ledger.db")
        try:
            agg = Aggregator()
            await append(ledger, agg, sealed("unattributed"))  # an agent before per-node ids
            book = DirectiveBook(key, ledger, Sessions(), lease_seconds=10.0)
            tracker = EffectTracker(ledger, agg, timeout_seconds=100.0)
            book.add_commit_listener(tracker_listener(tracker, lambda: 0.0))
            scope = ScopeResolver(agg, lambda: ["a"]).for_targets(Scope.JOB, ["unattributed@a"])
            assert list(scope.node_ids) == ["a"]
            terminate = await book.issue(control_pb2.ACTION_TERMINATE, scope, grace_seconds=1.0)
            rep = node.report([gpu(0, job="unattributed")])
            rep.receipts.add(directive_id=terminate.id)
            await append(ledger, agg, node.seal(rep))
            tracker.tick(1.0)
            # Its unattributed process still runs: not terminated.
            assert tracker.progress(terminate.id).effective_unix_nanos == 0
            await append(ledger, agg, sealed(None))
            tracker.tick(2.0)
            assert tracker.progress(terminate.id).effective_unix_nanos > 0
        finally:
            await ledger.close()

    asyncio.run(body())
