"""Assemble the collector: ledger, ingest, aggregation, gRPC services, ticks.

``create_server(config)`` returns a started ``Collector`` and the bound port;
tests bind ``127.0.0.1:0``. ``await collector.stop()`` shuts down gracefully.

One assembly for both backends. On a SQLite file the collector is a single
candidate that always leads. On a PostgreSQL URL it campaigns for the lead
(``collector.ha.elector``): the ledger is a ``StoreLedger`` fenced by the
leader term, so only the leader sequences reports, signs directives, leases
and checkpoints and logs key events; a standby refuses Telemetry and Control
writes (``ledger_unavailable``: agents move on to the next address), follows
the log into its aggregates and serves Status and Audit from the database.
Health: "" is liveness; Telemetry and Control are SERVING only while this
collector can sequence (the leader, with a writable ledger); Status and Audit
are SERVING on every candidate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from collector.accounting.aggregate import Aggregator
from collector.accounting.jobbounds import JobLimits
from collector.config import CollectorConfig
from collector.nodes.keylog import KeyLog, KeyLogMetrics
from collector.nodes.registry import Registry
from collector.nodes.sessions import Session, Sessions
from collector.services.audit_wiring import AuditHandle, AuditTree, start_audit
from collector.services.auth import AuthInterceptor, AuthPolicy
from collector.services.exposition import start_metrics_server
from collector.services.metrics import CollectorMetrics
from collector.services.status import StatusServicer
from collector.services.tls_metrics import TlsMetrics
from collector.stop.wiring import StopHandle, StopParts, install_stop_protocol
from collector.store.ledger import Ledger, LedgerEntry
from collector.store.log_follow import LogFollower
from collector.store.merkle_log import MerkleLog
from collector.store.sqlite_faults import write_error_reason
from collector.telemetry.binding import registry_key_node
from collector.telemetry.ingest import Ingestor
from collector.telemetry.ingest_pool import ProcessChecks
from collector.telemetry.service import TelemetryServicer, add_telemetry_servicer

if TYPE_CHECKING:
    from collector.ha.candidacy import HaParts
    from collector.store.pg_store import PgStore
    from collector.store.sql import Db
from protos import dsse
from protos.computewatch.v1 import (
    audit_pb2,
    control_pb2,
    status_pb2,
    status_pb2_grpc,
    telemetry_pb2,
)
from protos.errors import ConfigError, DatabaseError, LedgerUnavailableError, VerificationError
from protos.keys import PrivateKey, load_private_key
from protos.tls import ServerTls, warn_plaintext

log = logging.getLogger(__name__)

TELEMETRY = telemetry_pb2.DESCRIPTOR.services_by_name["Telemetry"].full_name
STATUS = status_pb2.DESCRIPTOR.services_by_name["Status"].full_name
CONTROL = control_pb2.DESCRIPTOR.services_by_name["Control"].full_name
AUDIT = audit_pb2.DESCRIPTOR.services_by_name["Audit"].full_name
SERVICES = (TELEMETRY, STATUS, CONTROL, AUDIT, health.SERVICE_NAME, reflection.SERVICE_NAME)
# Readiness of the write side: SERVING only while this collector sequences.
WRITE_SERVICES = (TELEMETRY, CONTROL)
# The read side: SERVING on every candidate.
READ_SERVICES = (STATUS, AUDIT)

# gRPC's own limit sits above ours so oversize envelopes get our typed error;
# anything beyond it is refused by gRPC itself (RESOURCE_EXHAUSTED).
_GRPC_HEADROOM = 4


@dataclass
class Collector:
    """A running collector and its parts (tests and the demo reach into them)."""

    config: CollectorConfig
    server: grpc.aio.Server
    port: int
    key: PrivateKey
    ledger: Ledger
    registry: Registry
    aggregator: Aggregator
    ingestor: Ingestor
    sessions: Sessions
    metrics_registry: CollectorRegistry
    health: health_aio.HealthServicer
    status_servicer: StatusServicer
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _pool: ThreadPoolExecutor | None = None
    _metrics_server: object | None = None
    # Rules, leases, re-sent RESUMEs, effectiveness, the tree's refresh: run each
    # tick while this collector leads and its ledger can write (``_tick_loop``).
    tick_hooks: list[Callable[[float], None]] = field(default_factory=list)
    # Called when a stream binds to a node (its first valid report).
    bind_hooks: list[Callable[[Session], None]] = field(default_factory=list)
    # Directives, Control, leases, effectiveness (``collector.stop.wiring``).
    stop_protocol: StopHandle | None = None
    # The Merkle log's checkpoints and the Audit service (``collector.services.audit_wiring``).
    audit: AuditHandle | None = None
    merkle: MerkleLog | None = None
    # Enrolments, handovers, revocations (``collector.nodes.keylog``).
    keys: KeyLog | None = None
    # Committed entries into the aggregates and the stop protocol (``collector.store.log_follow``).
    follower: LogFollower | None = None
    # The leader election on PostgreSQL (None on SQLite: one collector, always leading).
    ha: HaParts | None = None
    _health_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _stopped: bool = False
    # PostgreSQL: the Audit tree's own store (closed last).
    _tree_store: PgStore | None = None

    @property
    def leading(self) -> bool:
        """True while this collector sequences and signs: always on SQLite;
        on PostgreSQL while it holds the proven lease and its ledger re-read
        what the previous leader wrote."""
        if self.ha is not None and self.ha.elector.current_term() is None:
            return False
        return self.ha is None or self.ledger.writable

    def _write_health_names(self) -> tuple[str, ...]:
        # On SQLite the whole server follows the ledger (nothing can be written
        # anywhere else); on PostgreSQL "" is liveness, the write side readiness.
        return WRITE_SERVICES if self.ha is not None else ("", *WRITE_SERVICES)

    def _ledger_state(self, writable: bool) -> None:
        """Health follows the ledger: the write side is NOT_SERVING while it
        cannot write (a full disk; on PostgreSQL, a standby)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if writable
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        task = asyncio.get_running_loop().create_task(self._set_health(status))
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in self._write_health_names():  # Status and Audit (reads) keep serving
            await self.health.set(name, status)

    @property
    def address(self) -> str:
        host = self.config.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def stop(self, grace: float | None = None, *, resign: bool = True) -> None:
        """Stop serving and close everything. On PostgreSQL the leader hands the
        lease over at once; ``resign=False`` leaves it to lapse (as a crash would).
        A second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.grace_seconds if grace is None else grace)
        if self.stop_protocol is not None:
            await self.stop_protocol.close()
        if self.audit is not None:
            await self.audit.close()
        if self.ha is not None:  # hand the lease over at once: a standby need not wait
            await self.ha.elector.stop(resign=resign)
        for task in list(self._health_tasks):
            task.cancel()
        await asyncio.gather(*self._health_tasks, return_exceptions=True)
        await self.ledger.close()
        if self._tree_store is not None:
            self._tree_store.close()
        if self.ha is not None:
            self.ha.lease.close()
        self.ingestor.close()
        if self.merkle is not None:
            self.merkle.close()
        if self.keys is not None:
            self.keys.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for name in ("shutdown", "server_close"):  # stop serving, then close the socket
            method = getattr(self._metrics_server, name, None)
            if callable(method):
                method()

    async def _tick_loop(self) -> None:
        period = self.config.tick_seconds
        silent: set[str] = set()
        while True:
            await asyncio.sleep(period)
            now = time.time()
            for node_id in self.registry.node_ids():
                self.aggregator.enroll(node_id)
            for node in self.aggregator.nodes.values():
                is_silent = self.aggregator.is_silent(node, now)
                if is_silent and node.node_id not in silent:
                    log.warning(
                        "node %s is silent: no report for %.1f s",
                        node.node_id,
                        now - node.last_received,
                    )
                    silent.add(node.node_id)
                elif not is_silent and node.node_id in silent:
                    log.info("node %s is reporting again", node.node_id)
                    silent.discard(node.node_id)
            self.aggregator.age_out(now)
            if self.follower is not None and not self.leading:
                try:  # a standby: the leader's commits into the aggregates and the book
                    self.follower.catch_up()
                except Exception:
                    log.exception("following the log failed")
            for hook in self.tick_hooks:
                if not (self.leading and self.ledger.writable):
                    continue  # checked before each: a hook's failed write stops the rest
                try:
                    hook(now)
                except Exception:
                    log.exception("tick hook failed")


def report_replayer(
    aggregator: Aggregator, *, max_envelope_bytes: int
) -> Callable[[LedgerEntry], None]:
    """A follower consumer: a committed report (verified when accepted) into the aggregates."""

    def feed(entry: LedgerEntry) -> None:
        try:
            env = dsse.open_envelope(entry.data, max_bytes=max(max_envelope_bytes, len(entry.data)))
            report = dsse.parse_message(telemetry_pb2.NodeReport, env.payload)
        except VerificationError:
            log.exception("ledger entry %d does not parse; skipped in aggregates", entry.index)
            return
        node = aggregator.nodes.get(report.node_id)
        if node is not None and node.last_index >= entry.index:
            return  # already in (this collector ingested it live)
        aggregator.ingest(report, entry.index, entry.received_unix_nanos / 1e9)

    return feed


async def create_server(
    config: CollectorConfig,
    *,
    metrics_registry: CollectorRegistry | None = None,
) -> tuple[Collector, int]:
    """Build, bind and start a collector. Raises ConfigError on bad config and
    LedgerUnavailableError when the ledger cannot be written (a full disk);
    whatever was opened before a failure is closed again."""
    try:
        async with contextlib.AsyncExitStack() as cleanup:
            collector = await _build(config, metrics_registry or CollectorRegistry(), cleanup)
            cleanup.pop_all()  # started: the Collector owns it all now
    except (sqlite3.Error, OSError, DatabaseError) as exc:
        # DatabaseError: the same driver errors, typed by collector.store.sql.
        reason = write_error_reason(exc.__cause__ or exc)
        raise LedgerUnavailableError(
            f"cannot start on the ledger {config.ledger_name()} ({reason}: {exc})"
        ) from exc
    return collector, collector.port


async def _open_ledger(
    config: CollectorConfig, cleanup: contextlib.AsyncExitStack
) -> tuple[Ledger, MerkleLog | None, HaParts | None]:
    """SQLite: the file and its Merkle log, written in the ledger's transactions.
    PostgreSQL: the candidacy and the fenced ``StoreLedger`` (the store writes
    the tree's rows itself)."""
    if config.on_database:
        from collector.ha.candidacy import open_candidacy

        ha, db_ledger = await open_candidacy(config)
        cleanup.callback(ha.lease.close)
        cleanup.push_async_callback(db_ledger.close)
        cleanup.push_async_callback(ha.elector.stop)
        return db_ledger, None, ha
    ledger = Ledger(
        config.ledger_path,
        retry_min_seconds=config.ledger_retry_min_seconds,
        retry_max_seconds=config.ledger_retry_max_seconds,
    )
    cleanup.push_async_callback(ledger.close)
    merkle = MerkleLog(ledger.connection)
    cleanup.callback(merkle.close)
    ledger.attach_tree(merkle)
    return ledger, merkle, None


async def _build(
    config: CollectorConfig, metrics_registry: CollectorRegistry, cleanup: contextlib.AsyncExitStack
) -> Collector:
    key = load_private_key(config.key)
    location = config.ledger_location()  # the URL file is read once, here
    ledger, merkle, ha = await _open_ledger(config, cleanup)
    registry = Registry(location)
    keys = KeyLog(location, ledger, registry, key, poll_seconds=config.key_poll_seconds)
    cleanup.callback(keys.close)
    previous = [load_private_key(p) for p in config.previous_keys]
    if previous and ledger.writable:
        await keys.rotate_from(previous[-1])
    elif previous:  # a standby: the leader (same config) logs the rotation
        log.warning("previous_keys: this standby leaves logging the key rotation to the leader")
    previous_keys = [k.public for k in previous]
    keys.poll()  # enrolments and revocations made while the collector was down
    keys.backfill()
    aggregator = Aggregator(
        silent_after_intervals=config.silent_after_intervals,
        expected_interval_seconds=config.interval_seconds,
        job_limits=JobLimits(
            max_jobs_per_node=config.max_jobs_per_node,
            max_job_states=config.max_job_states,
            ended_job_ttl_seconds=config.ended_job_ttl_seconds,
        ),
    )
    for node_id in registry.node_ids():
        aggregator.enroll(node_id)
    # Committed reports, directives and submissions, in log order: at start,
    # on every gain of the lead, and each tick while a standby.
    follower = LogFollower(ledger)
    follower.add(
        "reports",
        (dsse.REPORT_TYPE,),
        report_replayer(aggregator, max_envelope_bytes=config.max_envelope_bytes),
    )
    pool = None
    checks = None
    if config.ingest_processes:
        checks = ProcessChecks(
            config.ingest_processes, registry.public_keys, max_bytes=config.max_envelope_bytes
        )
        cleanup.callback(checks.close)
    elif config.verify_threads:
        pool = ThreadPoolExecutor(config.verify_threads, thread_name_prefix="verify")
        cleanup.callback(pool.shutdown, wait=False)
    ingestor = Ingestor(
        registry,
        ledger,
        aggregator,
        max_envelope_bytes=config.max_envelope_bytes,
        verify_pool=pool,
        evidence_per_key=config.max_evidence_per_key,
        before_admit=keys.before_admit,
        checks=checks,
    )
    # After ingest's chain book, before the stop protocol's RESUMEs: a new
    # leader reads what the previous one committed before it issues anything.
    ledger.add_state_listener(follower.ledger_state)
    sessions = Sessions()
    server = _grpc_server(config, metrics_registry, keys)
    cleanup.push_async_callback(server.stop, 0)
    bind_hooks: list[Callable[[Session], None]] = []

    def on_bind(session: Session) -> None:
        for hook in bind_hooks:
            hook(session)

    add_telemetry_servicer(
        TelemetryServicer(
            ingestor,
            sessions,
            max_in_flight=config.max_in_flight_per_stream,
            on_bind=on_bind,
            key_node=functools.partial(registry_key_node, registry),
            max_message_bytes=config.max_envelope_bytes,
        ),
        server,
    )
    status_servicer = StatusServicer(aggregator, ingestor.stats, ledger)
    status_pb2_grpc.add_StatusServicer_to_server(status_servicer, server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(SERVICES, server)
    tls = _tls(config)
    try:
        if tls is None:
            port = server.add_insecure_port(config.listen)
        else:
            port = server.add_secure_port(config.listen, tls.credentials())
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {config.listen}: {exc}") from exc
    if port == 0:
        raise ConfigError(f"cannot listen on {config.listen}: address in use or not local")
    collector_metrics = CollectorMetrics(ingestor.stats, ledger, aggregator, sessions)
    metrics_registry.register(collector_metrics)
    metrics_registry.register(KeyLogMetrics(keys))
    if tls is not None:
        metrics_registry.register(TlsMetrics(tls.stats))
    collector = Collector(
        config=config,
        server=server,
        port=port,
        key=key,
        ledger=ledger,
        registry=registry,
        aggregator=aggregator,
        ingestor=ingestor,
        sessions=sessions,
        metrics_registry=metrics_registry,
        health=health_servicer,
        status_servicer=status_servicer,
        _pool=pool,
        bind_hooks=bind_hooks,
        merkle=merkle,
        keys=keys,
        follower=follower,
        ha=ha,
    )
    if ha is not None:
        from collector.ha.metrics import HaMetrics

        metrics_registry.register(HaMetrics(ha.elector))
    collector.stop_protocol = await install_stop_protocol(
        StopParts(
            config=config,
            key=key,
            ledger=ledger,
            sessions=sessions,
            aggregator=aggregator,
            node_ids=registry.node_ids,
            status=status_servicer,
            metrics_registry=metrics_registry,
            follower=follower,
            tick_hooks=collector.tick_hooks,
            bind_hooks=bind_hooks,
        ),
        server,
    )
    keys.on_authority_revoked(collector.stop_protocol.control.revoke_authority)
    bind_hooks.insert(0, keys.send_rotations)  # before the directives in force
    tree: AuditTree
    if merkle is not None:
        tree = merkle
    else:  # its own connections: never the writer's frontier
        from collector.store.pg_store import PgStore
        from collector.store.tree_view import TreeView

        tree_store = PgStore(str(location))
        cleanup.callback(tree_store.close)
        view = tree = TreeView(tree_store)
    collector.audit = await start_audit(
        server,
        location,
        tree,
        key,
        config.log_origin,
        checkpoint_interval_seconds=config.checkpoint_interval_seconds,
        registry=metrics_registry,
        previous_keys=previous_keys,
        leading=lambda: collector.leading,
        fence=None if ha is None else _fence(ha),
    )
    cleanup.push_async_callback(collector.audit.close)
    if merkle is None:

        def follow_tree(_now: float) -> None:
            """The leader's checkpoints cover the tree as committed at the last tick
            (a standby's checkpointer refreshes the tree itself)."""
            view.refresh()

        collector.tick_hooks.insert(0, follow_tree)
        collector._tree_store = tree_store
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    for name in ("", *READ_SERVICES):
        await health_servicer.set(name, serving)
    await collector._set_health(
        serving if ledger.writable else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    ledger.add_state_listener(collector._ledger_state)
    if config.metrics_port:
        collector._metrics_server, _ = start_metrics_server(
            config.metrics_port,
            addr=config.metrics_address,
            registry=metrics_registry,
            metrics=collector_metrics,
            certfile=None if config.tls_cert is None else str(config.tls_cert),
            keyfile=None if config.tls_key is None else str(config.tls_key),
        )
    collector._tasks.append(asyncio.create_task(collector._tick_loop()))
    collector._tasks.append(asyncio.create_task(keys.run()))
    if ha is not None:
        ha.elector.start()
    log.info(
        "collector listening on %s (ledger %s: %d entries, %d reports replayed%s)",
        collector.address,
        config.ledger_name(),
        ledger.size,
        follower.fed["reports"],
        "" if ha is None else f"; {ha.lease.holder}: {ha.elector.role}",
    )
    return collector


def _fence(ha: HaParts) -> Callable[[Db], None]:
    """Checkpoint writes carry the leader term, checked in their transaction."""
    from collector.store.sql import check_term

    def fence(db: Db) -> None:
        check_term(db, ha.elector.current_term())

    return fence


def _tls(config: CollectorConfig) -> ServerTls | None:
    if config.tls_cert is None or config.tls_key is None:
        warn_plaintext(f"the collector on {config.listen} (gRPC and /metrics)")
        return None
    return ServerTls(config.tls_cert, config.tls_key, config.tls_client_ca)


def _grpc_server(
    config: CollectorConfig, metrics_registry: CollectorRegistry, keys: KeyLog
) -> grpc.aio.Server:
    limit = config.max_envelope_bytes * _GRPC_HEADROOM
    interceptors = []
    if config.require_auth:
        policy = AuthPolicy.from_files(config.auditor_keys, config.authority_keys)
        if not policy.principals:
            log.warning(
                "auth is on and no auditor or authority keys are configured:"
                " every Audit, Status and Control call will be refused"
            )
        interceptor = AuthInterceptor(policy, registry=metrics_registry)
        # A key revoked in the log gets no token accepted, now or after a restart.
        keys.on_authority_revoked(interceptor.revoke)
        interceptors.append(interceptor)
    else:
        log.warning(
            "INSECURE: require_auth = false: anyone who reaches %s reads Audit and Status"
            " and calls Control without a token",
            config.listen,
        )
    return grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # A second collector on the same port must fail, not share it.
            ("grpc.so_reuseport", 0),
        ],
    )
