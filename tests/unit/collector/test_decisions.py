"""The rules tick hook: a firing halt rule issues a directive, and the cyclic
garbage collector never runs while the snapshot is built and evaluated.

Real aggregator, rule engine, ledger and directive book; collections are
counted with ``gc.callbacks`` (those started with the snapshot or the engine
on the stack) under a threshold that collects on almost every allocation.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from collector.accounting.aggregate import Aggregator
from collector.accounting.snapshot import CLUSTER_KEY, Scope
from collector.nodes.sessions import Sessions
from collector.rules import Action, Bound, Comparison, Rule, RuleEngine, RulePack, load_packs
from collector.stop.decisions import DecisionHook, evidence_for, gc_paused
from collector.stop.directives import DirectiveBook
from collector.stop.scoping import ScopeResolver
from collector.store.ledger import Ledger
from protos.computewatch.v1 import control_pb2
from protos.keys import PrivateKey
from tests.stop_support import write_pack
from tests.support import Node, gpu

NODES = 40
PACK = """
pack: test-decisions
version: "1"
description: One cluster rule.
rules:
  - id: busy-cluster
    description: Allocated cluster capacity above a line halts the cluster.
    metric: allocated_flops
    scope: cluster
    comparison: ">"
    threshold: {threshold}
    unit: FLOP/s
    action: halt
"""


def fleet(nodes: int = NODES) -> Aggregator:
    """An aggregator holding one report of 8 busy GPUs from each node."""
    agg = Aggregator()
    for i in range(nodes):
        node = Node(f"node-{i:03d}", PrivateKey.generate())
        gpus = [gpu(g, job=f"job-{i // 8}", pid=1000 + g) for g in range(8)]
        agg.ingest(node.report(gpus), i, time.time())
    return agg


EVALUATION = {Aggregator.snapshot.__code__, RuleEngine.evaluate.__code__}


def _in_evaluation() -> bool:
    """Whether the snapshot or the rule engine is on the calling stack."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code in EVALUATION:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


@contextmanager
def collections_in_evaluation() -> Iterator[list[int]]:
    """Collections that start while the snapshot or the engine runs, with
    the collector set to run on almost every allocation; thresholds and
    state restored afterwards."""
    started: list[int] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and _in_evaluation():
            started.append(info["generation"])

    thresholds = gc.get_threshold()
    was_enabled = gc.isenabled()
    gc.collect()
    gc.set_threshold(1, 1, 1)
    gc.enable()
    gc.callbacks.append(callback)
    try:
        yield started
    finally:
        gc.callbacks.remove(callback)
        gc.set_threshold(*thresholds)
        if not was_enabled:
            gc.disable()


def with_hook(
    tmp: Path,
    threshold: float,
    body: Callable[[DecisionHook, Aggregator, DirectiveBook], Awaitable[None]],
) -> None:
    async def main() -> None:
        ledger = Ledger(tmp / "ledger.db")
        try:
            agg = fleet()
            engine = RuleEngine(load_packs([write_pack(tmp, PACK.format(threshold=threshold))]))
            book = DirectiveBook(PrivateKey.generate(), ledger, Sessions(), lease_seconds=10.0)
            resolver = ScopeResolver(agg, lambda: sorted(agg.nodes))
            await body(DecisionHook(engine, agg, book, resolver), agg, book)
        finally:
            await ledger.close()

    asyncio.run(main())


def test_gc_paused_restores_the_collector_as_it_was() -> None:
    was_enabled = gc.isenabled()
    try:
        gc.enable()
        with gc_paused():
            assert not gc.isenabled()
        assert gc.isenabled()
        with pytest.raises(RuntimeError), gc_paused():
            raise RuntimeError("boom")
        assert gc.isenabled()
        gc.disable()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # off before, off after
    finally:
        if was_enabled:
            gc.enable()
        else:
            gc.disable()


def test_no_collection_runs_during_an_evaluation(tmp_path: Path) -> None:
    async def body(hook: DecisionHook, agg: Aggregator, book: DirectiveBook) -> None:
        hook(time.time())  # warm: the engine's first pass sets up its state
        with collections_in_evaluation() as during_hook:
            hook(time.time())
        with collections_in_evaluation() as during_bare_snapshot:
            agg.snapshot(time.time())
        assert during_hook == []
        # The same work without the pause collects: the check above can fail.
        assert len(during_bare_snapshot) > 0
        assert hook.stats.directives == 0
        assert sum(hook.stats.decisions.values()) == 0

    with_hook(tmp_path, 1e30, body)


def test_a_crossing_still_issues_one_halt_for_the_cluster(tmp_path: Path) -> None:
    async def body(hook: DecisionHook, agg: Aggregator, book: DirectiveBook) -> None:
        hook(time.time())
        hook(time.time())  # still firing: no second directive
        assert gc.isenabled()
        assert hook.stats.directives == 1
        assert hook.stats.decisions[("busy-cluster", "fire", "halt")] == 1
        for _ in range(200):  # the directive commits on the ledger's writer thread
            if book.records():
                break
            await asyncio.sleep(0.01)
        (record,) = book.records()
        d = record.directive
        assert d.action == control_pb2.ACTION_HALT
        assert d.scope.kind == control_pb2.SCOPE_KIND_CLUSTER
        assert len(d.scope.node_ids) == NODES
        measured = agg.snapshot(time.time()).get(Scope.CLUSTER, CLUSTER_KEY, "allocated_flops")
        assert measured is not None
        assert d.evidence.measured_value == pytest.approx(measured)

    with_hook(tmp_path, 1.0, body)


def test_evidence_carries_both_bounds_the_method_and_unmeasured_time() -> None:
    agg = Aggregator()
    node = Node("node-x", PrivateKey.generate())
    g = gpu(0, util=100.0, tensor=100.0, job="fp8-run")
    g.hmma_tensor_activity_percent = 100.0
    g.activity_window_seconds = 0.5  # half of the 1 s interval measured
    agg.ingest(node.report([g]), 0, time.time())
    rule = Rule(
        id="big",
        description="big job",
        metric="cumulative_flop",
        scope=Scope.JOB,
        comparison=Comparison.GT,
        threshold=1e14,
        unit="FLOP",
        action=Action.HALT,
        bound=Bound.UPPER_BOUND,
    )
    (decision,) = RuleEngine([RulePack("p", "1", "p", (rule,))]).evaluate(agg.snapshot(time.time()))
    ev = evidence_for(decision)
    assert ev.bound == "upper_bound"
    assert ev.method == "gpm_pipes"
    assert ev.estimate == pytest.approx(0.5 * 989.4e12)
    assert ev.upper_bound == pytest.approx(1978.9e12)  # FP8 peak over the whole second
    assert ev.measured_value == ev.upper_bound
    assert ev.unmeasured_gpu_seconds == pytest.approx(0.5)
