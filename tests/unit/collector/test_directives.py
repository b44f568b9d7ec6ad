"""Directive issuing, counters, the in-force set, restart, and effectiveness.

A real ledger file and real sessions; reports are sealed like an agent's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from collector.accounting.aggregate import Aggregator
from collector.nodes.sessions import Session, Sessions
from collector.stop.directives import Counters, DirectiveBook
from collector.stop.effectiveness import EffectTracker, tracker_listener
from collector.stop.leases import LeaseIssuer
from collector.stop.wiring import stop_entries
from collector.store.ledger import Entry, Ledger
from protos import dsse
from protos.computewatch.v1 import control_pb2, telemetry_pb2
from protos.keys import PrivateKey
from tests.stop_support import node_scope, open_directive
from tests.support import Node, gpu

HALT = control_pb2.ACTION_HALT
LEASE = control_pb2.ACTION_LEASE
KEY = PrivateKey.generate()


def run(tmp: Path, body: Callable[[Ledger, Sessions], Awaitable[None]]) -> None:
    async def main() -> None:
        ledger = Ledger(tmp / "ledger.db")
        try:
            await body(ledger, Sessions())
        finally:
            await ledger.close()

    asyncio.run(main())


def bound(sessions: Sessions, node_id: str) -> Session:
    session = Session(f"peer-{node_id}")
    sessions.bind(session, node_id)
    return session


def queued(session: Session) -> list[control_pb2.Directive]:
    out = []
    while not session._out.empty():
        msg = session._out.get_nowait()
        assert msg is not None
        if isinstance(msg, bytes):  # a frame, serialised once for every stream
            msg = telemetry_pb2.CollectorMessage.FromString(msg)
        out.append(open_directive(msg.directive, KEY.public))
    return out


def test_counters_are_strictly_increasing_per_class() -> None:
    counters = Counters()
    assert [counters.next(LEASE) for _ in range(3)] == [1, 2, 3]
    assert counters.next(HALT) == 1
    assert counters.next(control_pb2.ACTION_RESUME) == 2
    counters.observe(HALT, 10)
    counters.observe(HALT, 4)  # never goes back
    assert counters.next(control_pb2.ACTION_THROTTLE) == 11
    assert counters.last(LEASE) == 3


def test_a_directive_is_logged_before_it_is_pushed_to_the_nodes_in_scope(tmp_path: Path) -> None:
    async def body(ledger: Ledger, sessions: Sessions) -> None:
        book = DirectiveBook(KEY, ledger, sessions, lease_seconds=10.0)
        a, b = bound(sessions, "a"), bound(sessions, "b")
        fut = book.issue(HALT, node_scope("a"), rule_id="r", reason="because")
        assert queued(a) == []  # not before the commit
        directive = await fut
        assert ledger.size == 1
        (entry,) = ledger.entries(0, 1)
        assert entry.payload_type == dsse.DIRECTIVE_TYPE
        assert open_directive(entry.data, KEY.public) == directive
        assert queued(a) == [directive]
        assert queued(b) == []
        record = book.get(directive.id)
        assert record is not None
        assert record.log_index == 0
        assert [r.id for r in book.in_force()] == [directive.id]
        assert book.pending_for_rule("r", HALT, node_scope("a")) == directive.id
        assert book.pending_for_rule("r", HALT, node_scope("b")) is None
        lease = await book.issue(LEASE, node_scope("a", "b"))
        assert lease.counter == 1
        assert lease.not_after_unix_nanos - lease.issued_unix_nanos == 10 * 10**9
        assert queued(a) == [lease]
        assert queued(b) == [lease]
        assert book.get(lease.id) is None  # leases are counted, not kept
        cluster = await book.issue(HALT, control_pb2.Scope(kind=control_pb2.SCOPE_KIND_CLUSTER))
        assert cluster.counter == 2
        assert queued(b) == [cluster]

    run(tmp_path, body)


def test_the_issued_scope_keeps_every_target_and_names_the_cluster(tmp_path: Path) -> None:
    async def body(ledger: Ledger, sessions: Sessions) -> None:
        book = DirectiveBook(KEY, ledger, sessions, lease_seconds=10.0, cluster="site-1")
        a = bound(sessions, "a")
        scope = control_pb2.Scope(
            kind=control_pb2.SCOPE_KIND_ACTOR,
            actor_ids=["c:" + "ab" * 16],
            job_ids=["j1", "j2"],
            node_ids=["a"],
        )
        directive = await book.issue(HALT, scope, rule_id="actor-rule", reason="split run")
        # What is logged and pushed names the actor (an agent refuses an
        # ACTOR scope without one) and the cluster, and nothing else changed.
        expected = control_pb2.Scope()
        expected.CopyFrom(scope)
        expected.cluster = "site-1"
        assert directive.scope == expected
        (entry,) = ledger.entries(0, 1)
        assert open_directive(entry.data, KEY.public).scope == expected
        assert queued(a) == [directive]
        assert scope.cluster == ""  # the caller's scope is not modified

    run(tmp_path, body)


def test_on_bind_sends_what_is_in_force_in_counter_order(tmp_path: Path) -> None:
    async def body(ledger: Ledger, sessions: Sessions) -> None:
        book = DirectiveBook(KEY, ledger, sessions, lease_seconds=10.0)
        first = await book.issue(HALT, node_scope("a"))
        await book.issue(HALT, node_scope("b"))
        lifted = await book.issue(control_pb2.ACTION_THROTTLE, node_scope("a"), power_cap_watts=100)
        await book.issue(
            control_pb2.ACTION_RESUME, node_scope("a"), resumes=lifted.id, approvals=[b"x"]
        )
        cluster = await book.issue(HALT, control_pb2.Scope(kind=control_pb2.SCOPE_KIND_CLUSTER))
        late = bound(sessions, "a")
        book.on_bind(late)
        assert [d.id for d in queued(late)] == [first.id, cluster.id]
        record = book.get(lifted.id)
        assert record is not None
        assert not record.in_force(0)

    run(tmp_path, body)


def test_counters_and_state_are_restored_from_the_ledger(tmp_path: Path) -> None:
    ids: dict[str, str] = {}

    async def before(ledger: Ledger, sessions: Sessions) -> None:
        book = DirectiveBook(KEY, ledger, sessions, lease_seconds=10.0)
        for _ in range(3):
            await book.issue(LEASE, node_scope("a"))
        halt = await book.issue(HALT, node_scope("a"), rule_id="r")
        lifted = await book.issue(HALT, node_scope("b"), rule_id="q")
        await book.issue(control_pb2.ACTION_RESUME, node_scope("b"), resumes=lifted.id)
        ids.update(halt=halt.id, lifted=lifted.id)

    async def after(ledger: Ledger, sessions: Sessions) -> None:
        book = DirectiveBook(KEY, ledger, sessions, lease_seconds=10.0)
        for entry in stop_entries(ledger.path):
            book.restore(entry)
        assert book.counters.last(LEASE) == 3
        assert book.counters.last(HALT) == 3
        assert [r.id for r in book.in_force()] == [ids["halt"]]
        assert (await book.issue(HALT, node_scope("a"), rule_id="z")).counter == 4
        assert (await book.issue(LEASE, node_scope("a"))).counter == 4
        # The rule already has its halt in force; the lifted one was acknowledged.
        assert book.pending_for_rule("r", HALT, node_scope("a")) == ids["halt"]
        assert book.acknowledged("q", node_scope("b"))
        assert not book.acknowledged("r", node_scope("a"))

    run(tmp_path, before)
    run(tmp_path, after)


def test_reconcile_resends_the_resume_a_node_missed(tmp_path: Path) -> None:
    async def body(ledger: Ledger, sessions: Sessions) -> None:
        book = DirectiveBook(KEY, ledger, sessions, lease_seconds=10.0)
        halt = await book.issue(HALT, node_scope("a"))
        resume = await book.issue(control_pb2.ACTION_RESUME, node_scope("a"), resumes=halt.id)
        session = bound(sessions, "a")
        book.reconcile("a", [halt.id], now=100.0)
        book.reconcile("a", [halt.id], now=101.0)  # rate-limited
        assert queued(session) == [resume]
        book.reconcile("a", [halt.id], now=110.0)
        assert queued(session) == [resume]
        book.reconcile("a", ["unknown-id"], now=200.0)
        assert queued(session) == []

    run(tmp_path, body)


# -- effectiveness --------------------------------------------------------------------


def _report(
    node: Node,
    *,
    mode: int = telemetry_pb2.COMPUTE_MODE_DEFAULT,
    util: float = 90.0,
    power_limit: float | None = None,
    receipt: str = "",
    refused: str = "",
    processes: bool = True,
) -> bytes:
    gpus = [gpu(0, job="j" if processes else None), gpu(1, job="k" if processes else None)]
    for g in gpus:
        g.compute_mode = mode  # type: ignore[assignment]
        g.utilization_gpu_percent = util
        if power_limit is not None:
            g.power_limit_watts = power_limit
    rep = node.report(gpus)
    if receipt:
        rep.receipts.add(directive_id=receipt, refused_reason=refused)
    return node.seal(rep)


async def _append(ledger: Ledger, agg: Aggregator, node: Node, data: bytes) -> None:
    index = await ledger.append(
        Entry(data, dsse.REPORT_TYPE, node_id=node.node_id, keyid=node.key.keyid)
    )
    rep = telemetry_pb2.NodeReport()
    rep.ParseFromString(dsse.open_envelope(data).payload)
    agg.ingest(rep, index, 0.0)


def test_halt_is_effective_only_with_receipt_and_idle_prohibited_gpus(tmp_path: Path) -> None:
    node = Node("a", PrivateKey.generate())

    async def body(ledger: Ledger, sessions: Sessions) -> None:
        agg = Aggregator()
        await _append(ledger, agg, node, _report(node))
        book = DirectiveBook(KEY, ledger, sessions, lease_seconds=10.0)
        tracker = EffectTracker(ledger, agg, timeout_seconds=100.0)
        book.add_commit_listener(tracker_listener(tracker, lambda: 0.0))
        halt = await book.issue(HALT, node_scope("a"))
        steps: list[tuple[bytes, bool]] = [
            (_report(node, mode=telemetry_pb2.COMPUTE_MODE_PROHIBITED, util=0.0), False),
            (_report(node, receipt=halt.id, refused="stale_counter"), False),
            (_report(node, receipt=halt.id, util=0.0), False),  # mode still default
            (_report(node, mode=telemetry_pb2.COMPUTE_MODE_PROHIBITED, util=9.0), False),
            (_report(node, mode=telemetry_pb2.COMPUTE_MODE_PROHIBITED, util=1.0), True),
        ]
        for data, effective in steps:
            await _append(ledger, agg, node, data)
            tracker.tick(1.0)
            assert (tracker.progress(halt.id).effective_unix_nanos > 0) is effective
        assert tracker.progress(halt.id).receipt_node_ids == ("a",)
        assert tracker.not_effective() == 0
        assert tracker.stats.effective == 1

    run(tmp_path, body)


def test_throttle_and_terminate_and_the_alert(tmp_path: Path) -> None:
    node = Node("a", PrivateKey.generate())

    async def body(ledger: Ledger, sessions: Sessions) -> None:
        agg = Aggregator()
        await _append(ledger, agg, node, _report(node))
        book = DirectiveBook(KEY, ledger, sessions, lease_seconds=10.0)
        tracker = EffectTracker(ledger, agg, timeout_seconds=5.0)
        book.add_commit_listener(tracker_listener(tracker, lambda: 0.0))
        throttle = await book.issue(
            control_pb2.ACTION_THROTTLE, node_scope("a"), power_cap_watts=300.0
        )
        job = control_pb2.Scope(kind=control_pb2.SCOPE_KIND_JOB, job_ids=["j"], node_ids=["a"])
        terminate = await book.issue(control_pb2.ACTION_TERMINATE, job, grace_seconds=1.0)
        await _append(ledger, agg, node, _report(node, receipt=throttle.id, power_limit=450.0))
        tracker.tick(1.0)
        assert tracker.progress(throttle.id).effective_unix_nanos == 0
        tracker.tick(6.0)  # past the timeout: both alert
        assert tracker.not_effective() == 2
        assert tracker.progress(terminate.id).not_effective
        await _append(ledger, agg, node, _report(node, receipt=throttle.id, power_limit=300.0))
        tracker.tick(7.0)
        assert tracker.progress(throttle.id).effective_unix_nanos > 0
        # The job's processes are still there: not terminated.
        await _append(ledger, agg, node, _report(node, receipt=terminate.id))
        tracker.tick(8.0)
        assert tracker.progress(terminate.id).effective_unix_nanos == 0
        await _append(ledger, agg, node, _report(node, processes=False))
        tracker.tick(9.0)
        assert tracker.progress(terminate.id).effective_unix_nanos > 0
        assert tracker.not_effective() == 0
        assert tracker.stats.alerts == 2

    run(tmp_path, body)


def test_leases_skip_silent_and_disconnected_nodes(tmp_path: Path) -> None:
    nodes = [Node(n, PrivateKey.generate()) for n in ("a", "b", "c", "d")]

    async def body(ledger: Ledger, sessions: Sessions) -> None:
        agg = Aggregator(silent_after_intervals=3.0)
        for node, received in zip(nodes, (100.0, 100.0, 90.0, 100.0), strict=True):
            rep = node.report([gpu(0)], interval=1.0)
            agg.ingest(rep, 0, received)
        sessions_by = {n.node_id: bound(sessions, n.node_id) for n in nodes[:3]}  # d: no stream
        book = DirectiveBook(KEY, ledger, sessions, lease_seconds=10.0)
        leases = LeaseIssuer(book, sessions, agg, interval_seconds=1.0, batch=1)
        assert leases.healthy(100.5) == ["a", "b"]  # c is silent, d not connected
        leases(100.5)
        leases(100.6)  # within the interval: nothing
        await asyncio.sleep(0.05)
        for _ in range(100):
            if ledger.size == 2:
                break
            await asyncio.sleep(0.01)
        got = {n: queued(s) for n, s in sessions_by.items()}
        assert [list(d.scope.node_ids) for d in got["a"]] == [["a"]]
        assert [list(d.scope.node_ids) for d in got["b"]] == [["b"]]
        assert got["c"] == []
        assert leases.stats.nodes_last_round == 2

    run(tmp_path, body)


def test_a_lost_gpu_counts_as_halted_an_unreadable_one_does_not(tmp_path: Path) -> None:
    node = Node("a", PrivateKey.generate())

    def halted_report(health: int, receipt: str) -> bytes:
        gpus = [gpu(0, util=0.0), gpu(1, util=None)]
        gpus[0].compute_mode = telemetry_pb2.COMPUTE_MODE_PROHIBITED
        gpus[1].health = health  # type: ignore[assignment]
        rep = node.report(gpus)
        rep.receipts.add(directive_id=receipt)
        return node.seal(rep)

    async def body(ledger: Ledger, sessions: Sessions) -> None:
        agg = Aggregator()
        book = DirectiveBook(KEY, ledger, sessions, lease_seconds=10.0)
        tracker = EffectTracker(ledger, agg, timeout_seconds=100.0)
        book.add_commit_listener(tracker_listener(tracker, lambda: 0.0))
        halt = await book.issue(HALT, node_scope("a"))
        await _append(ledger, agg, node, halted_report(telemetry_pb2.GPU_HEALTH_ERROR, halt.id))
        tracker.tick(1.0)
        assert tracker.progress(halt.id).effective_unix_nanos == 0
        # A GPU whose identity is unreadable may run anything: unknown, not halted.
        unreadable = halted_report(telemetry_pb2.GPU_HEALTH_UNREADABLE, halt.id)
        await _append(ledger, agg, node, unreadable)
        tracker.tick(1.5)
        assert tracker.progress(halt.id).effective_unix_nanos == 0
        await _append(ledger, agg, node, halted_report(telemetry_pb2.GPU_HEALTH_LOST, halt.id))
        tracker.tick(2.0)
        assert tracker.progress(halt.id).effective_unix_nanos > 0

    run(tmp_path, body)
