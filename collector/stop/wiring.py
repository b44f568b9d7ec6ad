"""Build the stop protocol into a collector: one call from ``create_server``.

``install_stop_protocol(parts, server)`` (before ``server.start()``): loads
and checks the rule packs (a pack that fails the check raises ``RuleError``:
the collector refuses to start), loads the authority keys, registers the
directives and submissions with the collector's ``LogFollower`` and replays
them (counters, in-force set, approvals, manual-halt nonces, evaluations into
the aggregates), registers the ``Control`` service, adds the tick hooks
(rules -> directives, leases, re-sending lifted halts' RESUMEs,
effectiveness) and the bind hook (in-force directives to nodes that connect
later), and registers the metrics.

One code path for one collector and for several on PostgreSQL: only the
leader (``Collector.leading``; a SQLite collector always leads) runs the tick
hooks (the collector's tick loop gates them), and whenever the ledger becomes
writable again (on PostgreSQL: this collector gained the lead and re-read the
store) the follower first replays
what the other leader committed, then the RESUMEs whose quorum was reached
are issued. A standby's ledger refuses every append, so its Control refuses
halts and approvals with ``ledger_unavailable``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry

from collector.accounting.aggregate import Aggregator
from collector.accounting.snapshot import Scope
from collector.config import CollectorConfig
from collector.nodes.sessions import Session, Sessions
from collector.rules import RuleEngine, RulePack, load_packs
from collector.services.status import StatusServicer
from collector.stop.control import ControlServicer
from collector.stop.decisions import DEFAULT_TERMINATE_GRACE_SECONDS, DecisionHook
from collector.stop.directives import RESUMABLE, DirectiveBook
from collector.stop.effectiveness import EffectTracker, tracker_listener
from collector.stop.leases import DEFAULT_BATCH, LeaseIssuer
from collector.stop.metrics import StopMetrics
from collector.stop.quorum import check_quorum, load_authorities
from collector.stop.scoping import ScopeResolver
from collector.store.ledger import Ledger, LedgerEntry, connect
from collector.store.log_follow import LogFollower
from protos import dsse
from protos.computewatch.v1 import control_pb2, control_pb2_grpc
from protos.keys import PrivateKey, PublicKey

log = logging.getLogger(__name__)

_STOP_TYPES = (
    dsse.DIRECTIVE_TYPE,
    dsse.APPROVAL_TYPE,
    dsse.MANUAL_HALT_TYPE,
    dsse.EVALUATION_TYPE,
)


@dataclass
class StopParts:
    """What the stop protocol needs of the collector (``collector.server`` passes it)."""

    config: CollectorConfig
    key: PrivateKey
    ledger: Ledger
    sessions: Sessions
    aggregator: Aggregator
    node_ids: Callable[[], list[str]]
    status: StatusServicer
    metrics_registry: CollectorRegistry
    follower: LogFollower
    tick_hooks: list[Callable[[float], None]]
    bind_hooks: list[Callable[[Session], None]]


@dataclass
class StopHandle:
    """The stop protocol's parts in a running collector (tests and the demo use them)."""

    engine: RuleEngine
    book: DirectiveBook
    tracker: EffectTracker
    leases: LeaseIssuer
    decisions: DecisionHook
    control: ControlServicer
    resolver: ScopeResolver
    authorities: dict[str, PublicKey]
    _pending: set[asyncio.Task[list[str]]] = field(default_factory=set)

    def gained_lead(self) -> None:
        """The ledger is writable again (a new leader, or a SQLite ledger back
        from a failed write): issue the RESUMEs whose quorum was reached while
        another collector led or before a restart. The follower has already
        replayed what was committed (its listener runs first)."""
        task = asyncio.get_running_loop().create_task(self.control.resume_ready())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)


def stop_entries(path: Path) -> Iterator[LedgerEntry]:  # tests read a SQLite file with it
    """Directive and Control entries of a ledger file, in log order."""
    conn = connect(path, readonly=True)
    try:
        cur = conn.execute(
            "SELECT idx, data, payload_type, node_id, sequence, received_unix_nanos"
            " FROM log WHERE payload_type IN (?, ?, ?, ?) ORDER BY idx",
            _STOP_TYPES,
        )
        for row in cur:
            yield LedgerEntry(row[0], bytes(row[1]), row[2], row[3], row[4], row[5])
    finally:
        conn.close()


async def install_stop_protocol(
    parts: StopParts,
    server: grpc.aio.Server,
    *,
    packs: Iterable[RulePack] | None = None,
    evaluator_keys: Iterable[Path] = (),
    terminate_grace_seconds: float = DEFAULT_TERMINATE_GRACE_SECONDS,
    lease_batch: int = DEFAULT_BATCH,
) -> StopHandle:
    """Wire the stop protocol into the collector; call before ``server.start()``.

    ``packs`` overrides ``config.rule_packs`` (tests build packs in code).
    Raises ``RuleError`` for a pack that fails the check and ``ConfigError``
    for unreadable keys or a quorum the authorities cannot reach.
    """
    config = parts.config
    engine = RuleEngine(load_packs(config.rule_packs) if packs is None else packs)
    authorities = load_authorities(config.authority_keys)
    check_quorum(config.quorum, authorities)
    evaluators = load_authorities(evaluator_keys)
    aggregator = parts.aggregator
    ledger = parts.ledger
    resolver = ScopeResolver(aggregator, parts.node_ids)
    book = DirectiveBook(
        parts.key,
        ledger,
        parts.sessions,
        lease_seconds=config.lease_seconds,
        cluster=config.cluster,
    )
    tracker = EffectTracker(ledger, aggregator, timeout_seconds=config.effective_timeout_seconds)
    control = ControlServicer(
        book,
        ledger,
        resolver,
        authorities,
        quorum=config.quorum,
        ingest_evaluation=aggregator.ingest_evaluation,
        progress=tracker.progress,
        evaluators=evaluators,
        max_envelope_bytes=config.max_envelope_bytes,
    )
    follower = parts.follower
    follower.add("directives", (dsse.DIRECTIVE_TYPE,), book.restore)
    follower.add("control", _STOP_TYPES[1:], control.restore)
    follower.catch_up()  # the aggregates' reports too, in log order
    restored = follower.fed["directives"] + follower.fed["control"]
    now = time.time()
    for record in book.in_force():
        if record.action in RESUMABLE:
            tracker.track(record, now, from_index=ledger.size)
    book.add_commit_listener(tracker_listener(tracker, time.time))
    decisions = DecisionHook(
        engine, aggregator, book, resolver, terminate_grace_seconds=terminate_grace_seconds
    )
    leases = LeaseIssuer(
        book,
        parts.sessions,
        aggregator,
        interval_seconds=config.interval_seconds,
        batch=lease_batch,
        start=time.time(),
    )
    control_pb2_grpc.add_ControlServicer_to_server(control, server)

    def reconcile(now: float) -> None:
        for node_id in parts.sessions.connected_nodes():
            state = aggregator.nodes.get(node_id)
            if state is not None and state.enforcement.active_directive_ids:
                book.reconcile(node_id, state.enforcement.active_directive_ids, now)

    # Rules, leases, re-sent RESUMEs and effectiveness: the leader's alone (the
    # collector's tick loop runs its hooks only while it leads and can write).
    parts.tick_hooks.extend([decisions, leases, reconcile, tracker.tick])

    def possibly_crossed() -> list[tuple[str, str]]:
        return [(rule.id, key) for rule, key in engine.possibly_crossed()]

    parts.status.possibly_crossed = possibly_crossed

    def actor_firing() -> list[tuple[str, str]]:
        return [(rule.id, key) for rule, key in engine.firing() if rule.scope is Scope.ACTOR]

    parts.status.actor_firing = actor_firing
    parts.bind_hooks.append(book.on_bind)
    handle = StopHandle(engine, book, tracker, leases, decisions, control, resolver, authorities)
    parts.metrics_registry.register(StopMetrics(decisions, book, tracker, leases, control))

    def ledger_state(writable: bool) -> None:
        if not writable:
            return
        # Halts another leader issued (replayed just now) are judged from here on.
        now = time.time()
        for record in book.in_force():
            if record.action in RESUMABLE and not tracker.tracks(record.directive.id):
                tracker.track(record, now, from_index=ledger.size)
        handle.gained_lead()

    ledger.add_state_listener(ledger_state)
    resumed = await control.resume_ready() if ledger.writable else []
    log.info(
        "stop protocol: %d rules, %d authority keys (quorum %d), %d entries replayed,"
        " %d directives in force, counters action=%d lease=%d%s",
        len(engine.rules),
        len(authorities),
        config.quorum,
        restored,
        len(book.in_force()),
        book.counters.last(control_pb2.ACTION_HALT),
        book.counters.last(control_pb2.ACTION_LEASE),
        f", {len(resumed)} RESUMEs completed after restart" if resumed else "",
    )
    if not authorities:
        log.warning("no authority keys configured: manual halts and resumes are impossible")
    return handle
