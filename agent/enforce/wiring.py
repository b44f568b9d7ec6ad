"""Builds an ``Enforcer`` from ``AgentConfig`` and connects it to the agent's hooks.

The runner calls ``AgentEnforcement.start(...)`` when it opens its spool,
``on_tick(snapshot)`` after each sample (before sealing the report), and
routes directive bytes from the stream to ``on_directive``. Accepted
directives trigger an out-of-cycle report, so the receipt goes out at once;
refusals ride along with the next regular report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from agent.config import AgentConfig
from agent.enforce.actions import ProcessController
from agent.enforce.enforcer import Enforcer
from agent.enforce.metrics import register_enforcement_metrics
from agent.enforce.state import StateStore
from agent.enforce.verify import DirectiveVerifier
from agent.nvml.backend import GpuBackend, Snapshot
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import ConfigError, QuorumError
from protos.keys import load_public_key

log = logging.getLogger(__name__)


def build_enforcer(
    config: AgentConfig,
    *,
    backend: GpuBackend,
    sample: Callable[[], Snapshot],
    store: StateStore,
    clock_ns: Callable[[], int] = time.time_ns,
    monotonic: Callable[[], float] = time.monotonic,
) -> Enforcer:
    """The enforcer ``config`` describes. Raises ConfigError for a bad key or setting."""
    if config.collector_key is None:
        raise ConfigError("collector_key: required to verify directives and leases")
    collector_key = load_public_key(config.collector_key)
    authorities = [load_public_key(p) for p in config.authority_keys]
    try:
        verifier = DirectiveVerifier(
            config.node_id,
            collector_key,
            authority_keys=authorities,
            quorum=config.quorum,
            cluster=config.cluster,
        )
    except QuorumError as exc:
        raise ConfigError(f"authority_keys/quorum: {exc}") from exc
    processes = ProcessController(
        config.scheduler,
        suspend_command=config.suspend_command,
        resume_command=config.resume_command,
        procfs_root=config.procfs_root,
    )
    return Enforcer(
        node_id=config.node_id,
        verifier=verifier,
        backend=backend,
        processes=processes,
        sample=sample,
        store=store,
        fail_mode=config.fail_mode,
        lease_grace_seconds=config.lease_grace_seconds,
        terminate_grace_seconds=config.terminate_grace_seconds,
        clock_ns=clock_ns,
        monotonic=monotonic,
    )


class AgentEnforcement:
    """Enforcement for one agent: built on ``open(store)`` (each time the agent
    opens its spool), fed by the agent's directive and tick hooks."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        backend: GpuBackend,
        sample: Callable[[], Snapshot],
        registry: CollectorRegistry,
        add_receipt: Callable[[telemetry_pb2.EnforcementReceipt], None],
        request_report_now: Callable[[], None],
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.collector_key is None:
            raise ConfigError("collector_key: required to verify directives and leases")
        self.config = config
        self._backend = backend
        self._sample = sample
        self._add_receipt = add_receipt
        self._report_now = request_report_now
        self._clock_ns = clock_ns
        self._monotonic = monotonic
        self.enforcer: Enforcer | None = None
        register_enforcement_metrics(registry, lambda: self.enforcer)

    def open(self, store: StateStore) -> Enforcer:
        """Build the enforcer over ``store`` and re-apply what it saved."""
        self.enforcer = build_enforcer(
            self.config,
            backend=self._backend,
            sample=self._sample,
            store=store,
            clock_ns=self._clock_ns,
            monotonic=self._monotonic,
        )
        self._deliver(self.enforcer.restore())
        return self.enforcer

    async def on_directive(self, envelope: bytes) -> None:
        if self.enforcer is None:
            log.warning("%s: directive before the spool was opened; ignored", self.config.node_id)
            return
        self._deliver(self.enforcer.handle(envelope))

    def on_tick(self, snapshot: Snapshot | None) -> None:
        if self.enforcer is not None:
            self._deliver(self.enforcer.tick(snapshot=snapshot), urgent=False)

    def state(self) -> telemetry_pb2.EnforcementState:
        if self.enforcer is None:
            return telemetry_pb2.EnforcementState(fail_mode=self.config.fail_mode)
        return self.enforcer.state()

    def _deliver(
        self, receipts: list[telemetry_pb2.EnforcementReceipt], *, urgent: bool = True
    ) -> None:
        for r in receipts:
            self._add_receipt(r)
        if urgent and any(not r.refused_reason for r in receipts):
            self._report_now()
