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
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import grpc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from collector.audit_service import (
    AuditLimits,
    AuditServicer,
    LogReader,
    MerkleReader,
    SubscriptionHub,
)
from collector.auth import AuthInterceptor, AuthPolicy
from collector.checkpoints import Checkpointer, TreeHead
from collector.store.sql import Db, open_db
from protos.computewatch.v1 import audit_pb2_grpc
from protos.errors import Error
from protos.keys import PrivateKey, PublicKey

log = logging.getLogger(__name__)


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


class AuditHandle:
    """What ``start_audit`` built; ``close()`` stops the checkpoint task."""

    def __init__(
        self,
        servicer: AuditServicer,
        checkpointer: Checkpointer,
        hub: SubscriptionHub,
        reader: LogReader,
        store: sqlite3.Connection | Db,
        *,
        tick: float,
        leading: Callable[[], bool] = lambda: True,
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
            if not self._leading():  # only the leader signs checkpoints
                await asyncio.sleep(self._tick)
                continue
            try:
                signed = await asyncio.to_thread(cps.maybe_checkpoint)
            except (Error, sqlite3.Error):  # a DatabaseError is an Error
                self.checkpoint_failures += 1
                log.exception("signing a checkpoint failed")
            else:
                if signed is not None:
                    self.hub.publish(signed)
            await asyncio.sleep(min(self._tick, cps.due_in()) or self._tick)

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


class AuditTree(TreeHead, MerkleReader, Protocol):
    """What the Audit service reads of the Merkle log: ``MerkleLog`` on SQLite,
    ``collector.store.tree_view.TreeView`` on PostgreSQL."""


async def start_audit(
    server: grpc.aio.Server,
    ledger: Path | str,
    merkle: AuditTree,
    key: PrivateKey,
    origin: str,
    *,
    checkpoint_interval_seconds: float,
    min_checkpoint_interval_seconds: float = 1.0,
    limits: AuditLimits | None = None,
    clock: Callable[[], int] = time.time_ns,
    registry: CollectorRegistry | None = None,
    previous_keys: Sequence[PublicKey] = (),
    leading: Callable[[], bool] = lambda: True,
) -> AuditHandle:
    """Register the Audit service on ``server`` and start checkpointing.

    ``ledger`` is the SQLite file or the PostgreSQL URL the checkpoints and
    log rows are read from; ``merkle`` the ledger's tree; ``key`` the collector key (signs
    checkpoints under key name ``origin``). A checkpoint is signed at most
    every ``min_checkpoint_interval_seconds`` while entries arrive, and at
    least every ``checkpoint_interval_seconds`` regardless; only while
    ``leading()`` (in high availability, the leader alone signs).
    """
    limits = limits or AuditLimits()
    store: sqlite3.Connection | Db
    if isinstance(ledger, str):
        store = open_db(ledger)
    else:
        store = sqlite3.connect(ledger, isolation_level=None, check_same_thread=False)
    try:
        if isinstance(store, sqlite3.Connection):
            store.execute("PRAGMA busy_timeout=5000")
        checkpointer = Checkpointer(
            merkle,
            key,
            origin,
            store,
            clock,
            interval_seconds=checkpoint_interval_seconds,
            min_interval_seconds=min_checkpoint_interval_seconds,
            history_stride=limits.round_entries,
            previous_keys=previous_keys,
        )
        if leading():
            await asyncio.to_thread(checkpointer.maybe_checkpoint)
        reader = LogReader(ledger)
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
    def __init__(self, handle: AuditHandle, merkle: TreeHead) -> None:
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
