"""Start-up "no data yet": the unknowns of keys no report has reached are
marked, said in one log line per tick, and become a finding (a warning) once
reports arrive with the value still unknown or a grace runs out.

Real aggregator (nodes enrolled before they report, as the collector does),
the shipped operator-default pack and a cluster rule; the clock is the
snapshot's time.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from collector.accounting.aggregate import Aggregator
from collector.accounting.snapshot import CLUSTER_KEY, Scope
from collector.nodes.sessions import Sessions
from collector.rules import (
    Action,
    Comparison,
    Decision,
    DecisionKind,
    Rule,
    RuleEngine,
    RulePack,
    load_packs,
)
from collector.stop.decisions import DecisionHook, awaiting_summary
from collector.stop.directives import DirectiveBook
from collector.stop.scoping import ScopeResolver
from collector.store.ledger import Ledger
from protos.keys import PrivateKey
from tests.support import Node, gpu

NODES = ("n0", "n1", "n2")
DENSITY = Rule(
    id="density",
    description="cluster achieved rate",
    metric="achieved_flops",
    scope=Scope.CLUSTER,
    comparison=Comparison.GT,
    threshold=1e30,
    unit="FLOP/s",
    action=Action.HALT,
)

NODE_RATE = Rule(
    id="node-rate",
    description="node achieved rate",
    metric="achieved_flops",
    scope=Scope.NODE,
    comparison=Comparison.GT,
    threshold=1e30,
    unit="FLOP/s",
    action=Action.HALT,
)


def engine(grace: float = 30.0) -> RuleEngine:
    packs = [*load_packs(["operator-default"]), RulePack("p", "1", "p", (DENSITY, NODE_RATE))]
    return RuleEngine(packs, no_data_grace_seconds=grace)


def enrolled() -> tuple[Aggregator, dict[str, Node]]:
    agg = Aggregator()
    for n in NODES:
        agg.enroll(n)
    return agg, {n: Node(n, PrivateKey.generate()) for n in NODES}


def report(agg: Aggregator, node: Node, index: int, t: float, product: str | None = None) -> None:
    g = gpu(0) if product is None else gpu(0, product=product)
    node.sequence += 1
    agg.ingest(node.report([g], sample_ns=int(t * 1e9)), index, t)


def unknowns(decisions: list[Decision]) -> list[tuple[str, str, bool]]:
    return sorted(
        (d.rule.id, d.key, d.awaiting_data) for d in decisions if d.kind is DecisionKind.UNKNOWN
    )


def test_before_the_first_reports_every_unknown_is_awaiting_data_and_one_line() -> None:
    agg, _ = enrolled()
    out = engine().evaluate(agg.snapshot(100.0))
    found = unknowns(out)
    assert ("density", CLUSTER_KEY, True) in found
    for n in NODES:
        assert ("op-node-silent", n, True) in found
        assert ("op-gpu-lost", n, True) in found
    assert all(awaiting for _, _, awaiting in found)
    line = awaiting_summary(out)
    assert line is not None
    assert line.startswith(f"no data yet: {len(found)} rule checks wait for a first report")
    assert "op-node-silent: 3 nodes" in line
    assert "density: 1 cluster" in line
    assert "node-rate: 3 nodes" in line
    assert "\n" not in line


def test_nothing_more_is_said_when_the_reports_arrive() -> None:
    agg, nodes = enrolled()
    e = engine()
    e.evaluate(agg.snapshot(100.0))
    for i, n in enumerate(NODES):
        report(agg, nodes[n], i, 100.5)
    assert unknowns(e.evaluate(agg.snapshot(101.0))) == []
    assert awaiting_summary(e.evaluate(agg.snapshot(200.0))) is None


def test_a_node_that_never_reports_is_a_finding_after_the_grace() -> None:
    agg, nodes = enrolled()
    e = engine(grace=10.0)
    e.evaluate(agg.snapshot(100.0))
    for t in range(1, 10):
        for i, n in enumerate(NODES[:2]):
            report(agg, nodes[n], 10 * t + i, 100.0 + t)
        assert unknowns(e.evaluate(agg.snapshot(100.0 + t + 0.1))) == []
    for i, n in enumerate(NODES[:2]):
        report(agg, nodes[n], 200 + i, 110.0)
    late = e.evaluate(agg.snapshot(110.1))
    # Said again, unmarked: n2 never reported (the cluster sums the others).
    assert unknowns(late) == [
        ("node-rate", "n2", False),
        ("op-gpu-lost", "n2", False),
        ("op-gpu-unreadable", "n2", False),
        ("op-node-silent", "n2", False),
    ]
    assert all("after it was first listed" in d.reason for d in late)
    assert awaiting_summary(late) is None
    # Once.
    assert unknowns(e.evaluate(agg.snapshot(111.0))) == []


def test_reports_that_leave_the_value_unknown_are_a_finding_at_once() -> None:
    agg, nodes = enrolled()
    e = engine()
    e.evaluate(agg.snapshot(100.0))
    report(agg, nodes["n0"], 0, 100.5)
    report(agg, nodes["n1"], 1, 100.5)
    # A GPU of a model not in the device table: its rate stays unknown.
    report(agg, nodes["n2"], 2, 100.5, product="NVIDIA RTX PRO 6000 Blackwell Server Edition")
    (finding,) = (d for d in e.evaluate(agg.snapshot(101.0)) if d.kind is DecisionKind.UNKNOWN)
    assert (finding.rule.id, finding.key, finding.awaiting_data) == ("node-rate", "n2", False)
    assert finding.reason.endswith("; reports arrived")


def test_the_hook_logs_start_up_as_one_info_line_and_real_unknowns_as_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agg, nodes = enrolled()

    async def main() -> DecisionHook:
        ledger = Ledger(tmp_path / "ledger.db")
        try:
            book = DirectiveBook(PrivateKey.generate(), ledger, Sessions(), lease_seconds=10.0)
            resolver = ScopeResolver(agg, lambda: sorted(agg.nodes))
            hook = DecisionHook(engine(grace=5.0), agg, book, resolver)
            with caplog.at_level(logging.INFO, logger="collector.stop.decisions"):
                hook(100.0)
                start = [r for r in caplog.records if r.name == "collector.stop.decisions"]
                caplog.clear()
                for i, n in enumerate(NODES[:2]):
                    report(agg, nodes[n], i, 104.0)
                hook(105.0)
            assert [r.levelno for r in start] == [logging.INFO]
            assert start[0].getMessage().startswith("no data yet: 13 rule checks wait")
            return hook
        finally:
            await ledger.close()

    hook = asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4, warnings  # n2: silent, GPUs lost, GPUs unreadable, rate
    assert all("no report 5 s after it was first listed" in w for w in warnings)
    # Counted as before: each unknown, start-up or not, is a decision.
    assert hook.stats.decisions[("op-node-silent", "unknown", "alert")] == 4
