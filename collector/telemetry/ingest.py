"""Ingest: verify the received bytes, then parse, then check the chain, then
append. Nothing reaches the ledger or the aggregates unless every check passed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from collector.accounting.aggregate import Aggregator, GpuFigures
from collector.nodes.registry import Registry
from collector.store.ledger import Entry, Ledger
from collector.telemetry.batchverify import BatchVerifier
from collector.telemetry.chain import ChainBook
from collector.telemetry.ingest_pool import Outcome, ProcessChecks
from protos import dsse
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import (
    ChainError,
    EquivocationError,
    KeyMismatchError,
    LedgerUnavailableError,
    OversizeError,
    ReplayError,
    RollbackError,
    StreamBindingError,
    UnknownKeyError,
    UnknownNodeError,
    VerificationError,
)
from protos.keys import PublicKey
from protos.reports import validate_report

log = logging.getLogger(__name__)

# What a refused envelope raises: a bad envelope, or a ledger that cannot write now.
Refusal = VerificationError | LedgerUnavailableError
# An envelope's check under way (``Ingestor.begin``): in verify threads, in
# worker processes (None: the pool failed, check it here), or done inline.
Checking = asyncio.Future[dsse.Verified] | asyncio.Future[Outcome | None]


@dataclass
class IngestStats:
    """Plain counters; the metrics collector reads them at scrape time."""

    accepted: int = 0
    replayed: int = 0
    bytes_accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    suppressed_logs: int = 0
    # Conflicting envelopes counted but not kept (the key's evidence is full).
    evidence_counted_only: int = 0


@dataclass(frozen=True)
class Accepted:
    node_id: str
    sequence: int
    # Resolves to the report's log index once committed. Each Accepted has its
    # own (``_follow``): cancelling it, as a stream that ends does while its
    # ack pump awaits, never cancels the commit that others share.
    committed: asyncio.Future[int]
    duplicate: bool = False
    keyid: str = ""


def _follow(commit: asyncio.Future[int]) -> asyncio.Future[int]:
    """A future of this waiter's own that resolves as ``commit`` does.

    One commit is shared by the ingestor (which aggregates the report when it
    commits) and by every stream that admitted or resent that report. A task
    cancelled while it awaits a future cancels that future (``Task.cancel``),
    so handing out ``commit`` itself let one ending stream make the shared
    commit read as cancelled: a report on disk never aggregated, its resent
    duplicate never acknowledged. Cancelling the follower leaves ``commit`` as
    it is; a follower nobody awaits any more does not log its error as lost.
    """
    follower: asyncio.Future[int] = commit.get_loop().create_future()

    def resolve(done: asyncio.Future[int]) -> None:
        if follower.done():
            return
        if done.cancelled():
            follower.cancel()
        elif (exc := done.exception()) is not None:
            follower.set_exception(exc)
        else:
            follower.set_result(done.result())

    def retrieve(done: asyncio.Future[int]) -> None:
        if not done.cancelled():
            done.exception()  # whoever awaits it still gets it

    commit.add_done_callback(resolve)
    follower.add_done_callback(retrieve)
    return follower


class _RejectLog:
    """One log line per rejection, at most ``per_second`` lines a second."""

    def __init__(self, per_second: int = 20) -> None:
        self._per_second = per_second
        self._window = 0
        self._count = 0

    def allow(self) -> bool:
        now = int(time.monotonic())
        if now != self._window:
            self._window, self._count = now, 0
        self._count += 1
        return self._count <= self._per_second


class Ingestor:
    """Verifies and appends NodeReport envelopes."""

    def __init__(
        self,
        registry: Registry,
        ledger: Ledger,
        aggregator: Aggregator,
        *,
        max_envelope_bytes: int = dsse.DEFAULT_MAX_ENVELOPE_BYTES,
        verify_pool: Executor | None = None,
        verify_jobs: int | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        evidence_per_key: int = 1,
        before_admit: Callable[[], None] | None = None,
        checks: ProcessChecks | None = None,
    ) -> None:
        """``before_admit``: called on the event loop before a report is
        appended (``collector.nodes.keylog.KeyLog.before_admit``: key events first).
        ``verify_pool``: threads that check signatures in batches
        (``collector.telemetry.batchverify``), at most ``verify_jobs`` batches at once
        (default: the pool's thread count); None checks on the event loop.
        ``checks``: worker processes that verify, parse and validate
        (``collector.telemetry.ingest_pool``); when given, ``verify_pool`` is not used."""
        self._registry = registry
        self._ledger = ledger
        self._aggregator = aggregator
        self._max = max_envelope_bytes
        self.batcher: BatchVerifier | None = None
        self.checks = checks
        if verify_pool is not None and checks is None:
            self.batcher = BatchVerifier(
                verify_pool,
                self._check,
                jobs=verify_jobs or int(getattr(verify_pool, "_max_workers", 2)),
            )
        self._clock_ns = clock_ns
        self._evidence_per_key = evidence_per_key
        self._before_admit = before_admit
        heads = ledger.chain_heads()
        self.chains = ChainBook(
            {k: (h.last_sequence, h.last_digest) for k, h in heads.items()}, self._stored_digest
        )
        # (key id, sequence) -> (commit future, envelope bytes) of accepted
        # reports not yet committed.
        self._in_flight: dict[tuple[str, int], tuple[asyncio.Future[int], bytes]] = {}
        self.stats = IngestStats()
        self._reject_log = _RejectLog()
        # (key id, kind) whose kept evidence is full: later conflicts are counted only.
        self._evidence_full: set[tuple[str, str]] = set()
        self.resyncs = 0
        ledger.add_state_listener(self._ledger_state)

    def _ledger_state(self, writable: bool) -> None:
        """The ledger stopped or resumed. On resume (before any new append) the
        chain book and in-flight map are rebuilt from what is on disk: links
        admitted on top of a failed write are forgotten, so a resend of them is
        the next link again, never a gap, a rollback or evidence."""
        if not writable:
            return
        heads = self._ledger.chain_heads()
        self.chains.reset({k: (h.last_sequence, h.last_digest) for k, h in heads.items()})
        self._in_flight.clear()
        self.resyncs += 1

    def stored_sequence(self, keyid: str) -> int:
        """The last sequence durably stored for ``keyid`` (0 if none)."""
        return self._ledger.stored_sequence(keyid) if keyid else 0

    def _stored_digest(self, keyid: str, sequence: int) -> bytes | None:
        data = self._ledger.report_bytes(keyid, sequence)
        return None if data is None else dsse.digest(data)

    def _resolve(self, keyid: str) -> PublicKey | None:
        node = self._registry.by_keyid(keyid)
        return None if node is None else node.key

    def _check(self, data: bytes) -> dsse.Verified:
        if len(data) > self._max:
            raise OversizeError(f"envelope is {len(data)} bytes; the limit is {self._max}")
        return dsse.verify(data, self._resolve, expected_type=dsse.REPORT_TYPE, max_bytes=self._max)

    def close(self) -> None:
        """Stop the worker processes, if any."""
        if self.checks is not None:
            self.checks.close()

    def begin(self, data: bytes) -> Checking:
        """Start checking ``data``'s signature (in the pool, or here and now
        without one); hand the future to ``finish``. A stream can begin its
        next envelopes while earlier ones are checked."""
        if self.checks is not None:
            return self.checks.submit(data)
        if self.batcher is not None:
            return self.batcher.submit(data)
        fut: asyncio.Future[dsse.Verified] = asyncio.get_running_loop().create_future()
        try:
            fut.set_result(self._check(data))
        except Exception as exc:  # noqa: BLE001 - raised again by ``finish``
            fut.set_exception(exc)
        return fut

    def reject(self, exc: Refusal, peer: str) -> None:
        """Count a rejection and log one line (rate-limited)."""
        self.stats.rejected[exc.reason] += 1
        if self._reject_log.allow():
            log.warning("rejected envelope from %s: %s: %s", peer, exc.reason, exc)
        else:
            self.stats.suppressed_logs += 1

    async def accept(self, data: bytes, bound_node: str | None = None) -> Accepted:
        """Verify and queue one envelope; raise a VerificationError subclass on
        anything wrong. The caller counts and logs rejections via ``reject``."""
        return await self.finish(data, self.begin(data), bound_node)

    async def finish(
        self,
        data: bytes,
        checking: Checking,
        bound_node: str | None = None,
    ) -> Accepted:
        """``accept`` for an envelope whose check ``begin`` started. Every
        refusal after the signature verified carries the key's stored sequence."""
        # A worker's outcome: the report validated (or refused) ahead.
        validated: Outcome | None = None
        try:
            got = await checking
            if isinstance(got, dsse.Verified):
                verified = got
            else:
                verified, validated = self._adopt(data, got)
        except UnknownKeyError as exc:
            raise UnknownNodeError(f"no enrolled node holds the signing key: {exc}") from exc
        try:
            report = verified.parse(telemetry_pb2.NodeReport)
        except VerificationError as exc:
            exc.stored_sequence = self.stored_sequence(verified.signer.keyid)
            raise
        try:
            return self._admit(data, verified, report, bound_node, validated)
        except (VerificationError, LedgerUnavailableError) as exc:
            exc.sequence = report.sequence  # signed by the sender: safe to echo back
            exc.stored_sequence = self.stored_sequence(verified.signer.keyid)
            raise

    def _adopt(self, data: bytes, outcome: Outcome | None) -> tuple[dsse.Verified, Outcome | None]:
        """A worker's answer, taken only where the registry agrees with the
        keys the worker held; otherwise (a key enrolled or revoked since, a
        failed pool) ``data`` is checked here, as without workers. Returns the
        verified envelope and, when the worker validated the report, its outcome."""
        if outcome is None:
            return self._check(data), None
        agrees = True
        for keyid, held in outcome.asked.items():
            node = self._registry.by_keyid(keyid)
            if (node is not None) == held:
                continue
            agrees = False
            if self.checks is not None:
                if node is None:
                    self.checks.forget(keyid)
                else:
                    self.checks.learn(node.key)
        signer = self._resolve(outcome.keyid) if outcome.keyid else None
        if not agrees or (outcome.keyid and signer is None):
            return self._check(data), None
        if outcome.error is not None:
            if outcome.keyid:  # signed: the refusal carries the key's stored sequence
                outcome.error.stored_sequence = self.stored_sequence(outcome.keyid)
            raise outcome.error
        assert signer is not None  # a verified outcome names its signer
        return dsse.Verified(outcome.payload_type, outcome.payload, signer, data), outcome

    def _admit(
        self,
        data: bytes,
        verified: dsse.Verified,
        report: telemetry_pb2.NodeReport,
        bound_node: str | None,
        validated: Outcome | None = None,
    ) -> Accepted:
        if not self._ledger.writable:
            # Checked before the chain: nothing is admitted on state that a
            # failed write may have left behind in memory.
            raise LedgerUnavailableError(
                f"the ledger cannot write ({self._ledger.unavailable_reason}); resend later"
            )
        keyid = verified.signer.keyid
        if self._before_admit is not None:
            self._before_admit()
        node = self._registry.by_keyid(keyid)
        if node is None:  # revoked, handed over or un-enrolled between verify and here
            raise UnknownNodeError(f"key {keyid[:16]} is no longer enrolled")
        if report.node_id != node.node_id:
            raise KeyMismatchError(
                f"report claims node {report.node_id!r} but is signed by the key of {node.node_id}"
            )
        if bound_node is not None and bound_node != node.node_id:
            raise StreamBindingError(
                f"this stream carries node {bound_node}; a report for {node.node_id} arrived on it"
            )
        now_ns = self._clock_ns()
        if validated is None:
            validate_report(report, now_ns=now_ns)
        elif validated.invalid is not None:  # found by the worker, refused here in order
            raise validated.invalid
        digest = validated.digest if validated is not None else dsse.digest(data)
        try:
            self.chains.check(keyid, report.sequence, report.previous_digest, digest)
        except ReplayError:
            return self._duplicate(node.node_id, keyid, report.sequence)
        except (EquivocationError, RollbackError) as exc:
            # Two different signed statements for one sequence: keep both.
            # Counts only grow: once read as full, a (key, kind) stays full, and
            # each later conflict from that key costs its counting write, no reads.
            slot = (keyid, exc.reason)
            full = slot in self._evidence_full or (
                self._ledger.evidence_seen(keyid, exc.reason) >= self._evidence_per_key
            )
            kept = self._ledger.record_evidence(
                exc.reason,
                node.node_id,
                report.sequence,
                # Read the accepted bytes only for evidence that keeps them.
                None if full else self._accepted_bytes(keyid, report.sequence),
                data,
                keyid=keyid,
                keep=self._evidence_per_key,
            )
            if full:
                self._evidence_full.add(slot)
            if not kept:
                self.stats.evidence_counted_only += 1
            self._aggregator.note_chain_break(node.node_id)
            raise
        except ChainError:
            self._aggregator.note_chain_break(node.node_id)
            raise
        job_ids = None if validated is None else validated.job_ids
        self._aggregator.admit_jobs(
            node.node_id, Aggregator.report_job_ids(report) if job_ids is None else job_ids
        )
        fut = self._ledger.append(
            Entry(
                data=data,
                payload_type=verified.payload_type,
                node_id=node.node_id,
                keyid=keyid,
                sequence=report.sequence,
                digest=digest,
            )
        )
        self.chains.advance(keyid, report.sequence, digest)
        key = (keyid, report.sequence)
        self._in_flight[key] = (fut, data)
        figures = None if validated is None else validated.figures
        fut.add_done_callback(
            functools.partial(self._committed, key, report, len(data), now_ns, figures=figures)
        )
        return Accepted(node.node_id, report.sequence, _follow(fut), keyid=keyid)

    def _committed(
        self,
        key: tuple[str, int],
        report: telemetry_pb2.NodeReport,
        size: int,
        received_ns: int,
        fut: asyncio.Future[int],
        *,
        figures: list[GpuFigures] | None = None,
    ) -> None:
        held = self._in_flight.get(key)
        if held is not None and held[0] is fut:
            self._in_flight.pop(key)
        if fut.cancelled() or fut.exception() is not None:
            # The ledger is unavailable now and re-syncs the chain book from
            # disk before it accepts again (``_ledger_state``); resetting here,
            # later than new admissions could read the book, is what let a
            # report commit on top of a hole.
            return
        self.stats.accepted += 1
        self.stats.bytes_accepted += size
        self._aggregator.ingest(report, fut.result(), received_ns / 1e9, figures)

    def _accepted_bytes(self, keyid: str, sequence: int) -> bytes | None:
        """The accepted envelope for (key, sequence), committed or still in flight."""
        pending = self._in_flight.get((keyid, sequence))
        return pending[1] if pending is not None else self._ledger.report_bytes(keyid, sequence)

    def _duplicate(self, node_id: str, keyid: str, sequence: int) -> Accepted:
        self.stats.replayed += 1
        pending = self._in_flight.get((keyid, sequence))
        if pending is not None:
            return Accepted(node_id, sequence, _follow(pending[0]), duplicate=True, keyid=keyid)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        fut.set_result(self._ledger.report_index(keyid, sequence))
        return Accepted(node_id, sequence, fut, duplicate=True, keyid=keyid)
