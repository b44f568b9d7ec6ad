"""Build the stop protocol into a collector: one call from ``create_server``.

``install_stop_protocol(collector, server)`` (before ``server.start()``):
loads and checks the rule packs (a pack that fails the check raises
``RuleError``: the collector refuses to start), loads the authority keys,
replays the ledger's directives and submissions (counters, in-force set,
approvals, manual-halt nonces, evaluations into the aggregates), registers
the ``Control`` service, adds the tick hooks (rules -> directives, leases,
re-sending lifted halts' RESUMEs, effectiveness) and the bind hook (in-force
directives to nodes that connect later), and registers the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from collector.control_service import ControlServicer
from collector.decisions import DEFAULT_TERMINATE_GRACE_SECONDS, DecisionHook
from collector.directives import RESUMABLE, DirectiveBook
from collector.effectiveness import EffectTracker, tracker_listener
from collector.leases import DEFAULT_BATCH, LeaseIssuer
from collector.ledger import LedgerEntry, connect
from collector.quorum import check_quorum, load_authorities
from collector.rules import RuleEngine, RulePack, load_packs
from collector.scoping import ScopeResolver
from collector.snapshot import Scope
from collector.stop_metrics import StopMetrics
from protos import dsse
from protos.computewatch.v1 import control_pb2, control_pb2_grpc
from protos.keys import PublicKey

if TYPE_CHECKING:
    from collector.server import Collector

log = logging.getLogger(__name__)

_STOP_TYPES = (
    dsse.DIRECTIVE_TYPE,
    dsse.APPROVAL_TYPE,
    dsse.MANUAL_HALT_TYPE,
    dsse.EVALUATION_TYPE,
)


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


def stop_entries(path: Path) -> Iterator[LedgerEntry]:
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
    collector: Collector,
    server: grpc.aio.Server,
    *,
    packs: Iterable[RulePack] | None = None,
    evaluator_keys: Iterable[Path] = (),
    terminate_grace_seconds: float = DEFAULT_TERMINATE_GRACE_SECONDS,
    lease_batch: int = DEFAULT_BATCH,
) -> StopHandle:
    """Wire the stop protocol into ``collector``; call before ``server.start()``.

    ``packs`` overrides ``config.rule_packs`` (tests build packs in code).
    Raises ``RuleError`` for a pack that fails the check and ``ConfigError``
    for unreadable keys or a quorum the authorities cannot reach.
    """
    config = collector.config
    engine = RuleEngine(load_packs(config.rule_packs) if packs is None else packs)
    authorities = load_authorities(config.authority_keys)
    check_quorum(config.quorum, authorities)
    evaluators = load_authorities(evaluator_keys)
    aggregator = collector.aggregator
    resolver = ScopeResolver(aggregator, collector.registry.node_ids)
    book = DirectiveBook(
        collector.key,
        collector.ledger,
        collector.sessions,
        lease_seconds=config.lease_seconds,
        cluster=config.cluster,
    )
    tracker = EffectTracker(
        collector.ledger, aggregator, timeout_seconds=config.effective_timeout_seconds
    )
    control = ControlServicer(
        book,
        collector.ledger,
        resolver,
        authorities,
        quorum=config.quorum,
        ingest_evaluation=aggregator.ingest_evaluation,
        progress=tracker.progress,
        evaluators=evaluators,
        max_envelope_bytes=config.max_envelope_bytes,
    )
    restored = 0
    for entry in stop_entries(collector.ledger.path):
        restored += 1
        if entry.payload_type == dsse.DIRECTIVE_TYPE:
            book.restore(entry)
        else:
            control.restore(entry)
    now = time.time()
    for record in book.in_force():
        if record.action in RESUMABLE:
            tracker.track(record, now, from_index=collector.ledger.size)
    book.add_commit_listener(tracker_listener(tracker, time.time))
    decisions = DecisionHook(
        engine, aggregator, book, resolver, terminate_grace_seconds=terminate_grace_seconds
    )
    leases = LeaseIssuer(
        book,
        collector.sessions,
        aggregator,
        interval_seconds=config.interval_seconds,
        batch=lease_batch,
        start=time.time(),
    )
    control_pb2_grpc.add_ControlServicer_to_server(control, server)

    def reconcile(now: float) -> None:
        for node_id in collector.sessions.connected_nodes():
            state = aggregator.nodes.get(node_id)
            if state is not None and state.enforcement.active_directive_ids:
                book.reconcile(node_id, state.enforcement.active_directive_ids, now)

    collector.tick_hooks.extend((decisions, leases, reconcile, tracker.tick))

    def possibly_crossed() -> list[tuple[str, str]]:
        return [(rule.id, key) for rule, key in engine.possibly_crossed()]

    collector.status_servicer.possibly_crossed = possibly_crossed

    def actor_firing() -> list[tuple[str, str]]:
        return [(rule.id, key) for rule, key in engine.firing() if rule.scope is Scope.ACTOR]

    collector.status_servicer.actor_firing = actor_firing
    collector.bind_hooks.append(book.on_bind)
    handle = StopHandle(engine, book, tracker, leases, decisions, control, resolver, authorities)
    collector.metrics_registry.register(StopMetrics(decisions, book, tracker, leases, control))
    resumed = await control.resume_ready()
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
