"""One call that puts the public record on a collector's gRPC server.

``start_audit`` builds the checkpointer, the subscription hub and the Audit
service, registers the service (call it before ``server.start()``), signs a
first checkpoint and starts the task that keeps checkpoints fresh. Token
checks must be installed when the server is built (grpc.aio takes
interceptors only then): ``auth_interceptor`` makes the one to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import grpc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from collector.services.audit import AuditLimits, AuditServicer, LogReader, SubscriptionHub
from collector.services.auth import AuthInterceptor, AuthPolicy
from collector.store.checkpoints import Checkpointer
from collector.store.sql import DB_ERRORS, Db, Location, open_db
from protos.computewatch.v1 import audit_pb2_grpc
from protos.errors import Error
from protos.keys import PrivateKey, PublicKey

log = logging.getLogger(__name__)

# A failed signing or refresh: counted and logged, the task goes on.
_FAILURES: tuple[type[Exception], ...] = (Error, *DB_ERRORS)


def auth_interceptor(
    auditor_keys: Sequence[Path],
    authority_keys: Sequence[Path] = (),
    *,
    max_skew_seconds: float = 300.0,
    clock: Callable[[], int] = time.time_ns,
    registry: CollectorRegistry | None = None,
) -> AuthInterceptor:
    """The token check for ``grpc.aio.server(interceptors=[...])``."""
    policy = AuthPolicy.from_files(auditor_keys, authority_keys, max_skew_seconds=max_skew_seconds)
    return AuthInterceptor(policy, clock, registry)


class AuditTree(Protocol):
    """The Merkle log as the Audit service reads it: ``MerkleLog`` on the
    single collector, ``TreeView`` (refreshed from the database) on HA ones."""

    @property
    def size(self) -> int: ...

    def snapshot(self) -> tuple[int, bytes]: ...

    def root(self, size: int | None = None) -> bytes: ...

    def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...

    def consistency_proof(self, old: int, new: int) -> list[bytes]: ...


class AuditHandle:
    """What ``start_audit`` built; ``close()`` stops the checkpoint task."""

    def __init__(
        self,
        servicer: AuditServicer,
        checkpointer: Checkpointer,
        hub: SubscriptionHub,
        reader: LogReader,
        store: Db,
        *,
        tick: float,
        leading: Callable[[], bool] | None = None,
    ) -> None:
        self.servicer = servicer
        self.checkpointer = checkpointer
        self.hub = hub
        self.checkpoint_failures = 0
        self._reader = reader
        self._store = store
        self._tick = tick
        self._leading = leading
        self._task = asyncio.create_task(self._run(), name="audit-checkpoints")

    async def _run(self) -> None:
        cps = self.checkpointer
        while True:
            try:
                if self._leading is not None and self._leading() != cps.writer:
                    await asyncio.to_thread(cps.set_writer, not cps.writer)
                signed = await asyncio.to_thread(cps.maybe_checkpoint)
            except _FAILURES:
                self.checkpoint_failures += 1
                log.exception("signing a checkpoint failed")
            else:
                if signed is not None:
                    self.hub.publish(signed)
            await asyncio.sleep(min(self._tick, cps.due_in()) or self._tick)

    def set_writer(self, writer: bool) -> None:
        """Sign checkpoints from now on (this collector became the leader), or
        only follow the leader's (it lost the lead). Blocks on the database:
        call it off the event loop."""
        self.checkpointer.set_writer(writer)

    async def close(self) -> None:
        """Stop the checkpoint task and close the audit's own connections."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        # A cancelled asyncio.to_thread keeps running in its thread: let it finish
        # before the connection it uses is closed under it.
        await asyncio.to_thread(self.checkpointer.shutdown)
        self._reader.close()
        self._store.close()


async def start_audit(
    server: grpc.aio.Server,
    location: Location,
    merkle: AuditTree,
    key: PrivateKey,
    origin: str,
    *,
    writer: bool = True,
    leading: Callable[[], bool] | None = None,
    fence: Callable[[Db], None] | None = None,
    checkpoint_interval_seconds: float,
    min_checkpoint_interval_seconds: float = 1.0,
    limits: AuditLimits | None = None,
    clock: Callable[[], int] = time.time_ns,
    registry: CollectorRegistry | None = None,
    previous_keys: Sequence[PublicKey] = (),
) -> AuditHandle:
    """Register the Audit service on ``server`` and start checkpointing.

    ``location`` is the collector's database (a ledger path or URL,
    ``collector.store.sql``); ``merkle`` the Merkle log (``AuditTree``);
    ``key`` the collector key (signs checkpoints under key name ``origin``).
    A ``writer`` signs a checkpoint at most every
    ``min_checkpoint_interval_seconds`` while entries arrive, and at least
    every ``checkpoint_interval_seconds`` regardless, each write fenced by
    ``fence`` (``Checkpointer``); a reader (an HA standby) refreshes its tree
    and serves and publishes the checkpoints the leader stored. ``leading``
    (in HA, e.g. ``lambda: collector.leading``) overrides ``writer``: it is
    asked every tick and the checkpointer switches role when it changes.
    """
    limits = limits or AuditLimits()
    if leading is not None:
        writer = leading()
    store = open_db(location)
    try:
        checkpointer = Checkpointer(
            merkle,
            key,
            origin,
            store,
            clock,
            writer=writer,
            fence=fence,
            interval_seconds=checkpoint_interval_seconds,
            min_interval_seconds=min_checkpoint_interval_seconds,
            history_stride=limits.round_entries,
            previous_keys=previous_keys,
        )
        await asyncio.to_thread(checkpointer.maybe_checkpoint)
        reader = LogReader(location)
    except BaseException:
        # A refused start (another key or origin, a rewritten ledger) leaves nothing open.
        store.close()
        raise
    hub = SubscriptionHub(limits.subscriber_queue)
    servicer = AuditServicer(merkle, checkpointer, reader, hub, limits)
    audit_pb2_grpc.add_AuditServicer_to_server(servicer, server)
    tick = max(0.01, min(min_checkpoint_interval_seconds, checkpoint_interval_seconds))
    handle = AuditHandle(servicer, checkpointer, hub, reader, store, tick=tick, leading=leading)
    if registry is not None:
        registry.register(_AuditMetrics(handle, merkle))
    return handle


class _AuditMetrics(Collector):
    def __init__(self, handle: AuditHandle, merkle: AuditTree) -> None:
        self._h = handle
        self._merkle = merkle

    def collect(self) -> Iterator[Metric]:
        h = self._h
        yield GaugeMetricFamily(
            "computewatch_log_entries", "Entries in the Merkle log.", value=self._merkle.size
        )
        latest = h.checkpointer.latest()
        if latest is not None:
            yield GaugeMetricFamily(
                "computewatch_log_checkpoint_entries",
                "Tree size of the newest signed checkpoint.",
                value=latest.size,
            )
            yield GaugeMetricFamily(
                "computewatch_log_checkpoint_timestamp_seconds",
                "Signing time of the newest checkpoint (unix seconds).",
                value=latest.timestamp_unix_nanos / 1e9,
            )
        yield CounterMetricFamily(
            "computewatch_log_checkpoints_signed",
            "Checkpoints signed.",
            value=h.checkpointer.signed_total,
        )
        yield CounterMetricFamily(
            "computewatch_log_checkpoint_failures",
            "Checkpoint signings that failed.",
            value=h.checkpoint_failures,
        )
        yield GaugeMetricFamily(
            "computewatch_audit_subscribers", "Open Audit.Subscribe streams.", value=h.hub.active
        )
        yield CounterMetricFamily(
            "computewatch_audit_subscribers_dropped",
            "Subscribers closed for falling behind.",
            value=h.hub.dropped_total,
        )
        yield CounterMetricFamily(
            "computewatch_audit_subscribers_cut_off",
            "Subscribers closed for falling behind that did not read their closing status.",
            value=h.hub.cut_off_total,
        )
        rejected = CounterMetricFamily(
            "computewatch_audit_requests_rejected",
            "Audit requests refused, by method and status code.",
            labels=["method", "code"],
        )
        for (method, code), n in sorted(h.servicer.rejected.items()):
            rejected.add_metric([method, code], n)
        yield rejected
