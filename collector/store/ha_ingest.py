"""The ingest side of a collector in high availability, on PostgreSQL.

``start_ha_ingest`` assembles what takes reports from agents, on a
``StoreLedger`` fenced by this candidate's ``Elector``: the real ``Ingestor``
and ``TelemetryServicer`` over gRPC, with enrolments from a registry file.
A standby refuses reports (``ledger_unavailable``: agents move on to the next
address); on taking the lead the ledger re-reads what the old leader
committed, ingest rebuilds its chain book, and sequencing resumes.

This is what ``collector serve`` will run on PostgreSQL once the rest of the
collector (rules, directives, audit, checkpoints) reads the store instead of
the SQLite file; the HA tests and ``bench/bench_failover.py`` run it today.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc.aio
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from collector.aggregate import Aggregator
from collector.binding import registry_key_node
from collector.ingest import Ingestor
from collector.registry import Registry
from collector.sessions import Sessions
from collector.store.elector import Elector
from collector.store.ha_metrics import HaMetrics
from collector.store.ha_stop import HaStop
from collector.store.leader import LeaderLease
from collector.store.pg_store import PgStore
from collector.store.sequencer import StoreLedger
from collector.telemetry_service import TelemetryServicer, add_telemetry_servicer
from protos.computewatch.v1 import control_pb2_grpc, telemetry_pb2
from protos.errors import ConfigError
from protos.keys import PrivateKey, PublicKey
from protos.tls import ServerTls, warn_plaintext

TELEMETRY = telemetry_pb2.DESCRIPTOR.services_by_name["Telemetry"].full_name


@dataclass
class HaIngest:
    """One candidate: its lease, elector, ledger and gRPC server."""

    name: str
    lease: LeaderLease
    elector: Elector
    ledger: StoreLedger
    ingestor: Ingestor
    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    leases: HaStop | None = None
    _health_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _stopped: bool = False

    def _ledger_state(self, writable: bool) -> None:
        """Readiness: Telemetry is SERVING on the leader only (the agent-facing
        Service routes to it); the server itself ("") stays SERVING (liveness)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if writable
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        task = asyncio.get_running_loop().create_task(self.health.set(TELEMETRY, status))
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    async def stop(self, *, resign: bool = True) -> None:
        """Stop serving; ``resign=False`` leaves the lease to lapse (as a crash would).
        Every PostgreSQL connection and the gRPC server are closed here, so
        nothing is left for the garbage collector (after the loop is gone).
        A second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        try:
            await self.elector.stop(resign=resign)
            if self.leases is not None:
                await self.leases.stop()
            for task in list(self._health_tasks):
                task.cancel()
            await asyncio.gather(*self._health_tasks, return_exceptions=True)
        finally:
            try:
                await self.server.stop(0)
            finally:
                try:
                    await self.ledger.close()
                finally:
                    self.lease.close()


async def start_ha_ingest(
    name: str,
    url: str,
    registry_path: Path,
    listen: str,
    *,
    lease_seconds: float = 5.0,
    renew_seconds: float = 1.0,
    metrics_registry: CollectorRegistry | None = None,
    key: PrivateKey | None = None,
    agent_lease_seconds: float = 10.0,
    lease_interval_seconds: float = 1.0,
    authorities: Mapping[str, PublicKey] | None = None,
    quorum: int = 2,
    tls: ServerTls | None = None,
    insecure_plaintext: bool = False,
    cluster: str = "default",
) -> HaIngest:
    """Campaign for the lead and serve Telemetry on ``listen``. With ``key``
    (the collector key, the same on every candidate) the leader also signs a
    LEASE to every healthy node each ``lease_interval_seconds``, valid
    ``agent_lease_seconds``; a new leader first replays the directives in the
    store, so lease counters go on rising across a failover. With
    ``authorities`` too, the Control service takes manual halts and approvals
    (``quorum`` distinct keys resume a halt) on the leader, and a new leader
    replays them: a halt in force stays in force, and a RESUME whose quorum
    was reached is issued by whichever collector leads.

    The same secure defaults as ``collector serve``: Telemetry and Control are
    served over ``tls`` (required unless ``insecure_plaintext``, an explicit
    opt-out that is logged loudly); every stream is bound only by the agent's
    proof for the collector's challenge (``collector.binding``); and every
    directive names ``cluster`` (agents refuse other clusters')."""
    if tls is None and not insecure_plaintext:
        raise ConfigError(
            f"the HA collector on {listen} needs TLS (a certificate and key),"
            " or insecure_plaintext to opt out explicitly"
        )
    if tls is not None and insecure_plaintext:
        raise ConfigError("TLS and insecure_plaintext exclude each other: choose one")
    if tls is None:
        warn_plaintext(f"the HA collector {name} on {listen}")
    lease = LeaderLease(url, name, lease_seconds=lease_seconds)
    elector = Elector(lease, renew_seconds=renew_seconds)
    try:
        await elector.step()
        store = PgStore(url)
    except BaseException:
        await elector.stop()
        lease.close()
        raise
    ledger = StoreLedger(
        store, term=elector.current_term, retry_min_seconds=0.02, retry_max_seconds=0.2
    )
    elector.add_listener(ledger.leadership_changed)
    if metrics_registry is not None:
        metrics_registry.register(HaMetrics(elector))
    registry = Registry(registry_path)
    aggregator = Aggregator()
    for node_id in registry.node_ids():
        aggregator.enroll(node_id)
    ingestor = Ingestor(registry, ledger, aggregator)
    sessions = Sessions()
    leases: HaStop | None = None
    if key is not None:
        leases = HaStop(
            key,
            ledger,
            sessions,
            aggregator,
            agent_lease_seconds=agent_lease_seconds,
            interval_seconds=lease_interval_seconds,
            authorities=authorities or {},
            quorum=quorum,
            node_ids=registry.node_ids,
            cluster=cluster,
        )
    server = grpc.aio.server()
    add_telemetry_servicer(
        TelemetryServicer(
            ingestor,
            sessions,
            on_bind=None if leases is None else leases.book.on_bind,
            key_node=functools.partial(registry_key_node, registry),
        ),
        server,
    )
    if leases is not None and leases.control is not None:
        control_pb2_grpc.add_ControlServicer_to_server(leases.control, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    try:
        if tls is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, tls.credentials())
    except RuntimeError as exc:
        port = 0
        reason: object = exc
    else:
        reason = "address in use or not local"
    if port == 0:
        if leases is not None:
            await leases.stop()
        await elector.stop()
        await server.stop(0)
        await ledger.close()
        lease.close()
        raise ConfigError(f"cannot listen on {listen}: {reason}")
    await server.start()
    ha = HaIngest(name, lease, elector, ledger, ingestor, server, port, health)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    serving = health_pb2.HealthCheckResponse.SERVING
    await health.set(
        TELEMETRY, serving if ledger.writable else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    ledger.add_state_listener(ha._ledger_state)
    if leases is not None:
        ha.leases = leases
        leases.start()
    elector.start()
    return ha
