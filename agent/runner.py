"""The agent: sample -> attribute -> jobs -> build -> seal -> spool -> stream.

Everything an agent needs is passed in (config, backend, key, clocks,
registry), so many agents can run in one event loop, as the demo does with a
fake NVML for each. Samples are taken on a fixed monotonic schedule: a late
tick does not push later ones back, and ticks missed while the loop was busy
are skipped rather than bunched up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import grpc
from prometheus_client import CollectorRegistry

from agent.actors import add_actors
from agent.config import AgentConfig
from agent.correct import correct, seal_bounded
from agent.enforce.wiring import AgentEnforcement
from agent.metrics import AgentStats, register_metrics
from agent.nvml.backend import GpuBackend, Snapshot
from agent.refusal import RefusalHandler
from agent.report import add_members, build_report, job_ids, read_boot_id
from agent.spool import Spool
from agent.stream import DirectiveHandler, StreamClient, log_directive
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import BackendError, Error, InvalidReportError, SpoolError
from protos.keys import PrivateKey
from protos.reports import MAX_INTERVAL_SECONDS
from protos.tls import channel_credentials, warn_plaintext

log = logging.getLogger(__name__)

# Receipts waiting for a report; beyond this the oldest are dropped (and logged).
MAX_PENDING_RECEIPTS = 1024


def channel_credentials_for(cfg: AgentConfig) -> Callable[[], grpc.ChannelCredentials] | None:
    """TLS to the collector, read from the files at each connection (renewed
    certificates need no restart), or None (plain text) when the config opts out."""
    if cfg.insecure_plaintext:
        warn_plaintext(f"agent {cfg.node_id} -> collector {cfg.collector}")
        return None
    channel_credentials(cfg.tls_ca, cfg.tls_cert, cfg.tls_key)  # unreadable: fail at start
    return functools.partial(channel_credentials, cfg.tls_ca, cfg.tls_cert, cfg.tls_key)


class Attributor(Protocol):
    """Fills ``job_id``/``attribution`` of every process on ``gpus`` in place
    (``agent.attribution.JobAttributor``)."""

    def fill(self, gpus: list[telemetry_pb2.GpuSample]) -> None: ...


class JobMetadata(Protocol):
    """Lineage and model of running jobs (``agent.jobmeta.JobMetadataDir``)."""

    def jobs(self, job_ids: list[str]) -> list[telemetry_pb2.JobInfo]: ...


@dataclass(frozen=True)
class _Sample:
    snapshot: Snapshot
    jobs: list[telemetry_pb2.JobInfo]
    time_ns: int
    mono: float
    seconds: float


def agent_version() -> str:
    try:
        return importlib.metadata.version("computewatch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Agent:
    """One node's agent. ``await run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        config: AgentConfig,
        backend: GpuBackend,
        attributor: Attributor | None,
        jobmeta: JobMetadata | None,
        key: PrivateKey,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
        sample_in_thread: bool = False,
        version: str | None = None,
    ) -> None:
        self.config = config
        self._backend = backend
        self._attributor = attributor
        self._jobmeta = jobmeta
        self._key = key
        self._clock_ns = clock_ns
        self._monotonic = monotonic
        self._sample_in_thread = sample_in_thread
        self._version = version or agent_version()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.stats = AgentStats(node_id=config.node_id, version=self._version)
        register_metrics(self.registry, self.stats)
        self._receipts: list[telemetry_pb2.EnforcementReceipt] = []
        self._enforcement: Callable[[], telemetry_pb2.EnforcementState] = self._default_enforcement
        self._on_directive: DirectiveHandler = log_directive
        self._report_now = asyncio.Event()
        self._last_sealed_mono: float | None = None
        self._boot_id = ""
        # Since the last report that reached the spool: reports sealed but not
        # stored, and samples not sealed at all. The next stored report says so.
        self._unspooled = 0
        self._skipped = 0
        self.spool: Spool | None = None
        self.stream: StreamClient | None = None
        # Directive enforcement, when a collector key is configured to verify them.
        self.enforcement: AgentEnforcement | None = None
        if config.collector_key is not None:
            self.enforcement = AgentEnforcement(
                config,
                backend=backend,
                sample=self._enforcement_snapshot,
                registry=self.registry,
                add_receipt=self.add_receipt,
                request_report_now=self.request_report_now,
                clock_ns=clock_ns,
                monotonic=monotonic,
            )
            self._enforcement = self.enforcement.state
            self._on_directive = self.enforcement.on_directive

    # --- hooks for enforcement -----------------------------------------------
    def request_report_now(self) -> None:
        """Seal a report as soon as possible, outside the regular schedule."""
        self._report_now.set()

    def add_receipt(self, receipt: telemetry_pb2.EnforcementReceipt) -> None:
        """Include ``receipt`` in the next sealed report."""
        self._receipts.append(receipt)
        if len(self._receipts) > MAX_PENDING_RECEIPTS:
            dropped = self._receipts.pop(0)
            log.error(
                "%s: too many receipts waiting; dropped the one for directive %s",
                self.config.node_id,
                dropped.directive_id,
            )

    def set_enforcement_provider(self, fn: Callable[[], telemetry_pb2.EnforcementState]) -> None:
        self._enforcement = fn

    def set_directive_handler(self, handler: DirectiveHandler) -> None:
        self._on_directive = handler
        if self.stream is not None:
            self.stream.set_directive_handler(handler)

    def enforcement_state(self) -> telemetry_pb2.EnforcementState:
        return self._enforcement()

    def _default_enforcement(self) -> telemetry_pb2.EnforcementState:
        return telemetry_pb2.EnforcementState(fail_mode=self.config.fail_mode)

    # --- the loop ------------------------------------------------------------------
    def open(self) -> Spool:
        """Open the spool and read the boot id (``run`` does this when needed)."""
        if self.spool is None:
            self._boot_id = read_boot_id(self.config.boot_id_path)
            self.spool = Spool(
                self.config.state_dir,
                node_id=self.config.node_id,
                keyid=self._key.keyid,
                max_unacked=self.config.max_unacked,
            )
            self.stats.last_sequence = self.spool.last_sequence
            self.stats.unacked = self.spool.unacked
            self.stats.acked_sequence = self.spool.acked_sequence
            if self.enforcement is not None:
                try:
                    self.enforcement.open(self.spool)
                except Error:
                    self.close()  # release the spool's lock: nothing runs half-configured
                    raise
        return self.spool

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        self.stream = None

    async def run(self, stop: asyncio.Event) -> None:
        spool = self.open()
        cfg = self.config
        self.stream = StreamClient(
            cfg.collector,
            cfg.node_id,
            spool,
            self.stats,
            on_directive=self._on_directive,
            on_refused=RefusalHandler(
                spool, self._key, self.stats, node_id=cfg.node_id, clock_ns=self._clock_ns
            ),
            backoff_min_seconds=cfg.backoff_min_seconds,
            backoff_max_seconds=cfg.backoff_max_seconds,
            max_in_flight=cfg.max_in_flight,
            key=self._key,
            credentials=channel_credentials_for(cfg),
        )
        streamer = asyncio.create_task(self.stream.run(stop), name=f"stream-{cfg.node_id}")
        try:
            await self._schedule(stop)
        finally:
            stop.set()
            await asyncio.gather(streamer, return_exceptions=True)
            self.close()

    async def _schedule(self, stop: asyncio.Event) -> None:
        interval = self.config.interval_seconds
        deadline = self._monotonic()
        while not stop.is_set():
            self._report_now.clear()
            await self.tick()
            deadline += interval
            now = self._monotonic()
            if deadline <= now:  # fell behind: skip the missed ticks
                deadline += interval * ((now - deadline) // interval + 1)
            while not stop.is_set():
                timeout = deadline - self._monotonic()
                if timeout <= 0:
                    break
                if await _first(stop, self._report_now, timeout) is self._report_now:
                    self._report_now.clear()
                    await self.tick()

    async def tick(self) -> None:
        """Take one sample and seal it (or count a drop)."""
        try:
            if self._sample_in_thread:
                sample = await asyncio.to_thread(self._sample)
            else:
                sample = self._sample()
        except Exception:
            self.stats.sample_errors += 1
            self._skipped += 1
            log.exception("%s: sampling failed", self.config.node_id)
            return
        self.stats.observe_sample(sample.seconds)
        self.stats.nvml_up = sample.snapshot.status == telemetry_pb2.NVML_STATUS_OK
        self.stats.gpus = tuple(sample.snapshot.gpus)
        if self.enforcement is not None:
            self.enforcement.on_tick(sample.snapshot)
        self._seal(sample)

    def _sample(self) -> _Sample:
        start = self._monotonic()
        time_ns = self._clock_ns()
        try:
            snapshot = self._backend.sample()
        except BackendError as exc:
            log.warning("%s: NVML unusable: %s", self.config.node_id, exc)
            snapshot = Snapshot(status=telemetry_pb2.NVML_STATUS_ERROR, error=str(exc)[:512])
        gpus = list(snapshot.gpus)
        if self._attributor is not None:
            try:
                self._attributor.fill(gpus)
            except Error as exc:
                log.warning("%s: job attribution failed: %s", self.config.node_id, exc)
        ids = job_ids(gpus)
        jobs = add_actors(add_members(self._jobs(ids), gpus), gpus)
        end = self._monotonic()
        return _Sample(snapshot, jobs, time_ns, start, end - start)

    def _enforcement_snapshot(self) -> Snapshot:
        """A fresh attributed sample for enforcement (raises BackendError)."""
        # No activity: the report's GPM and utilization windows are not cut short.
        snapshot = self._backend.sample(activity=False)
        if self._attributor is not None:
            try:
                self._attributor.fill(list(snapshot.gpus))
            except Error as exc:
                log.warning("%s: job attribution failed: %s", self.config.node_id, exc)
        return snapshot

    def _jobs(self, ids: list[str]) -> list[telemetry_pb2.JobInfo]:
        if self._jobmeta is not None and ids:
            try:
                return self._jobmeta.jobs(ids)
            except Error as exc:
                log.warning("%s: job metadata unreadable: %s", self.config.node_id, exc)
        return [telemetry_pb2.JobInfo(job_id=j) for j in ids]

    def _seal(self, sample: _Sample) -> None:
        spool = self.spool
        assert spool is not None, "run() or open() first"
        if spool.room() <= 0:
            # The chain stays intact: this sample folds into the next report.
            self.stats.reports_dropped += 1
            self._skipped += 1
            return
        if self._last_sealed_mono is None:
            interval = self.config.interval_seconds
        else:
            interval = min(max(0.0, sample.mono - self._last_sealed_mono), MAX_INTERVAL_SECONDS)
        receipts = list(self._receipts)
        link = spool.next_link()
        report = build_report(
            self.config.node_id,
            self._boot_id,
            link,
            sample_time_ns=sample.time_ns,
            interval_s=interval,
            snapshot=sample.snapshot,
            jobs=sample.jobs,
            enforcement=self.enforcement_state(),
            receipts=receipts,
            version=self._version,
        )
        report.unspooled_reports = self._unspooled
        report.skipped_samples = self._skipped
        try:
            report, notes = correct(report, now_ns=self._clock_ns())
            envelope, trimmed = seal_bounded(report, self._key)
        except InvalidReportError as exc:
            self.stats.reports_unsealable += 1
            self._skipped += 1
            log.error("%s: no valid report could be built: %s", self.config.node_id, exc)  # noqa: TRY400
            return
        notes += trimmed
        if notes:
            self.stats.reports_corrected += 1
            log.warning(
                "%s: report %d corrected before sealing: %s",
                self.config.node_id,
                link[0],
                "; ".join(notes),
            )
        try:
            spool.append(link[0], envelope)
        except SpoolError as exc:
            self._not_spooled(link[0], exc)
            return
        if self._unspooled:
            log.warning(
                "%s: spool writable again; report %d says %d reports could not be stored",
                self.config.node_id,
                link[0],
                self._unspooled,
            )
        self._unspooled = 0
        self._skipped = 0
        self.stats.spool_failing = False
        del self._receipts[: len(receipts)]
        self._last_sealed_mono = sample.mono
        self.stats.reports_sealed += 1
        self.stats.last_sequence = spool.last_sequence
        self.stats.unacked = spool.unacked
        if self.stream is not None:
            self.stream.notify()

    def _not_spooled(self, sequence: int, exc: SpoolError) -> None:
        """A sealed report could not be stored. It was never sent (the stream
        sends only what the spool holds), so nothing chains onto it: the next
        report reuses its sequence and says how many were lost this way.
        One log line when the fault starts; the recovery logs another."""
        self._unspooled += 1
        self.stats.reports_unspooled += 1
        self.stats.spool_failing = True
        if self._unspooled == 1:
            log.error(
                "%s: report %d not stored, so not sent (%s): %s; counting until the spool"
                " recovers (computewatch_agent_reports_unspooled_total)",
                self.config.node_id,
                sequence,
                exc.reason,
                exc,
            )


async def _first(a: asyncio.Event, b: asyncio.Event, timeout: float) -> asyncio.Event | None:
    """Wait until ``a`` or ``b`` is set (returned, ``a`` preferred) or ``timeout``."""
    if a.is_set():
        return a
    if b.is_set():
        return b
    tasks = [asyncio.create_task(a.wait()), asyncio.create_task(b.wait())]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
    if a.is_set():
        return a
    if b.is_set():
        return b
    return None
