"""``audit subscribe``: follow ``Audit.Subscribe`` into a verified local copy.

Entries are held in memory until the checkpoint that covers them arrives;
then, before anything is stored: the note must verify under the collector
key (and the pinned origin); it may not be smaller than the newest stored
checkpoint (``checkpoint_shrank``) nor give another root for the same size
(``split_view``); it must cover exactly the entries sent (``dropped_entry``
if it covers more); and the entries must hash to its root. If they do not, a
consistency proof from the newest stored checkpoint tells a rewritten history
(``inconsistent_log``) from entries served with other bytes than logged
(``rewritten_entry``). Signed notes that prove misbehaviour are saved under
``DIR/evidence/``. Then every entry's signature and chain is checked and the
round is stored in one transaction; a chain finding stops the run after the
round is stored (the copy mirrors the log; ``audit verify`` names it again).

Resumes from the local size. A stream closed for falling behind
(RESOURCE_EXHAUSTED) or a lost connection is retried with backoff.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, cast

import grpc
from grpc.aio import EOF  # type: ignore[attr-defined]

from computewatch.audit.entries import EntryChecker
from computewatch.audit.store import FollowState, LocalStore
from computewatch.audit.trust import Trust
from protos import checkpoint as cpmod
from protos import dsse, merkle
from protos.checkpoint import RESUME_FROM_KEY
from protos.computewatch.v1 import audit_pb2, audit_pb2_grpc
from protos.errors import (
    CheckpointError,
    CheckpointShrankError,
    DroppedEntryError,
    Error,
    InconsistentLogError,
    LogError,
    ProofError,
    RewrittenEntryError,
    SplitViewError,
    StaleCheckpointError,
    VerificationError,
)

log = logging.getLogger(__name__)

NANOS = 1_000_000_000
T = TypeVar("T")
_RETRY_CODES = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


@dataclass(frozen=True)
class FollowOptions:
    # Stop once caught up with the checkpoint that was newest at the start;
    # False: follow until an error (or the caller cancels).
    once: bool = True
    # No checkpoint newer than this (seconds, by its timestamp): stale_checkpoint.
    max_age_seconds: float | None = None
    # Entries held while waiting for their checkpoint.
    max_pending_bytes: int = 256 << 20
    # Reconnects in a row (no checkpoint stored in between) after
    # RESOURCE_EXHAUSTED / UNAVAILABLE / the stream ending, then give up.
    max_retries: int = 5
    retry_backoff_seconds: float = 1.0
    verify_threads: int = 2


@dataclass
class FollowResult:
    entries_added: int = 0
    rounds: int = 0
    latest: cpmod.SignedCheckpoint | None = None


def resume_hint(exc: grpc.aio.AioRpcError) -> int | None:
    """The ``from_index`` a collector gave when it closed a stream that fell
    behind (``RESUME_FROM_KEY`` trailing metadata), if any.

    The follower resumes from its local size, which equals the hint once it
    stored every checkpoint sent; the hint is logged so an operator can see
    how far the collector got."""
    for item in exc.trailing_metadata() or ():
        key, value = cast(tuple[str, object], item)
        if key == RESUME_FROM_KEY and isinstance(value, str) and value.isdigit():
            return int(value)
    return None


class _Retry(Exception):  # noqa: N818 - control flow, never escapes
    pass


class Follower:
    """Keeps ``store`` a verified copy of the log behind ``stub``."""

    def __init__(
        self,
        stub: audit_pb2_grpc.AuditStub,
        store: LocalStore,
        trust: Trust,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._stub = stub
        self._store = store
        self._trust = trust
        self._clock = clock
        state = store.follow_state()
        self._origin = trust.origin or state.origin
        if trust.origin and state.origin and trust.origin != state.origin:
            raise CheckpointError(f"the copy follows log {state.origin!r}, not {trust.origin!r}")
        self._state = state
        self._bound: float | None = None
        self._newest_ts: int | None = None
        stored = store.latest_checkpoint()
        self._latest: cpmod.SignedCheckpoint | None = None
        if stored is not None:
            self._latest = cpmod.open_note(stored.note, [trust.collector], origin=self._origin)

    def _open(self, note: bytes) -> cpmod.SignedCheckpoint:
        signed = cpmod.open_note(note, [self._trust.collector], origin=self._origin)
        self._origin = self._origin or signed.checkpoint.origin
        return signed

    def _evidence(self, exc: VerificationError, notes: list[bytes]) -> VerificationError:
        folder = self._store.write_evidence(exc.reason, notes, str(exc))
        log.error("%s: %s (evidence in %s)", exc.reason, exc, folder)
        return type(exc)(f"{exc}; signed notes saved in {folder}")

    def compare(self, signed: cpmod.SignedCheckpoint) -> None:
        """Raise if ``signed`` contradicts the newest stored checkpoint."""
        last = self._latest
        if last is None:
            return
        if signed.size < last.size:
            raise self._evidence(
                CheckpointShrankError(
                    f"the collector signed size {signed.size} after size {last.size}"
                ),
                [last.note, signed.note],
            )
        if signed.size == last.size and signed.root != last.root:
            raise self._evidence(
                SplitViewError(f"two checkpoints of size {signed.size} with different roots"),
                [last.note, signed.note],
            )
        if signed.timestamp_unix_nanos < last.timestamp_unix_nanos:
            raise CheckpointError(
                f"checkpoint timestamp {signed.timestamp_unix_nanos} is before the stored"
                f" {last.timestamp_unix_nanos}"
            )

    def check_fresh(self) -> None:
        """Raise StaleCheckpointError if no checkpoint seen is within the bound."""
        if self._bound is None or self._newest_ts is None:
            return
        age = (self._clock() - self._newest_ts) / NANOS
        if age > self._bound:
            raise StaleCheckpointError(
                f"the newest checkpoint is {age:.3g} s old; the bound is {self._bound:g} s:"
                " the log may be frozen"
            )

    def _seen(self, signed: cpmod.SignedCheckpoint) -> None:
        if self._newest_ts is None or signed.timestamp_unix_nanos > self._newest_ts:
            self._newest_ts = signed.timestamp_unix_nanos

    async def run(self, options: FollowOptions) -> FollowResult:
        """Follow until caught up (``once``) or until an error; raises typed errors.

        Starts with GetCheckpoint: the head must not contradict the copy and,
        with a freshness bound, must be fresh. Freshness is checked again
        whenever no newer checkpoint has arrived within the bound, once the
        copy has caught up with that head.
        """
        self._bound = options.max_age_seconds
        result = FollowResult(latest=self._latest)
        reply = await self._call(self._stub.GetCheckpoint(audit_pb2.GetCheckpointRequest()))
        head = self._open(reply.note)
        self.compare(head)
        self._seen(head)
        self.check_fresh()
        retries = 0
        with concurrent.futures.ThreadPoolExecutor(
            max(1, options.verify_threads), thread_name_prefix="audit-verify"
        ) as pool:
            while True:
                rounds = result.rounds
                try:
                    await self._stream(options, head.size, result, pool)
                except _Retry:
                    retries = 1 if result.rounds > rounds else retries + 1
                    if retries > options.max_retries:
                        raise LogError(f"gave up after {options.max_retries} reconnects") from None
                    await asyncio.sleep(options.retry_backoff_seconds * retries)
                    continue
                self.check_fresh()
                return result

    @staticmethod
    async def _call(call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise LogError(f"collector answered {exc.code().name}: {exc.details()}") from exc

    async def _stream(
        self,
        options: FollowOptions,
        head_size: int,
        result: FollowResult,
        pool: concurrent.futures.Executor,
    ) -> None:
        """One Subscribe call; returns when done, raises _Retry to reconnect."""
        base = self._store.size
        call = self._stub.Subscribe(audit_pb2.SubscribeRequest(from_index=base))
        pending: list[bytes] = []
        pending_bytes = 0
        reading: asyncio.Future[object] | None = None
        try:
            while True:
                if reading is None:
                    reading = asyncio.ensure_future(call.read())
                timeout = None
                if self._bound is not None and self._newest_ts is not None and base >= head_size:
                    age = (self._clock() - self._newest_ts) / NANOS
                    timeout = max(0.0, self._bound - age) + 0.01
                done, _ = await asyncio.wait({reading}, timeout=timeout)
                if not done:
                    self.check_fresh()
                    continue
                msg, reading = reading.result(), None
                if msg is EOF:
                    log.warning("the collector ended the stream; resuming")
                    raise _Retry
                resp = cast(audit_pb2.SubscribeResponse, msg)
                kind = resp.WhichOneof("body")
                if kind == "entry":
                    expected = base + len(pending)
                    if resp.entry.index != expected:
                        raise DroppedEntryError(
                            f"the collector sent entry {resp.entry.index} where {expected} was next"
                        )
                    pending.append(resp.entry.data)
                    pending_bytes += len(resp.entry.data)
                    if pending_bytes > options.max_pending_bytes:
                        raise LogError(
                            f"{len(pending)} entries ({pending_bytes} bytes) arrived without"
                            " a checkpoint covering them"
                        )
                elif kind == "checkpoint":
                    signed = self._open(resp.checkpoint.note)
                    await self._round(base, pending, signed, pool)
                    self._seen(signed)
                    result.entries_added += len(pending)
                    result.rounds += 1
                    result.latest = signed
                    base += len(pending)
                    pending, pending_bytes = [], 0
                    if options.once and signed.size >= head_size:
                        return
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _RETRY_CODES:
                hint = resume_hint(exc)
                log.warning(
                    "stream closed (%s: %s); resuming from %d (collector's hint: %s)",
                    exc.code().name,
                    exc.details(),
                    self._store.size,
                    "none" if hint is None else hint,
                )
                raise _Retry from exc
            raise LogError(f"collector answered {exc.code().name}: {exc.details()}") from exc
        finally:
            if reading is not None:
                reading.cancel()
            call.cancel()

    async def _round(
        self,
        base: int,
        pending: list[bytes],
        signed: cpmod.SignedCheckpoint,
        pool: concurrent.futures.Executor,
    ) -> None:
        self.compare(signed)
        covered = base + len(pending)
        if signed.size > covered:
            raise DroppedEntryError(
                f"checkpoint {signed.size} covers entries {covered}..{signed.size - 1},"
                " which the collector did not send"
            )
        if signed.size < covered:
            raise LogError(f"checkpoint {signed.size} arrived after entries up to {covered - 1}")
        frontier = self._state.frontier.copy()
        frontier.extend(merkle.leaf_hash(d) for d in pending)
        if frontier.root() != signed.root:
            raise await self._diagnose(signed)
        checker = EntryChecker(
            self._trust,
            self._state.heads,
            self._state.directive_counter,
            self._state.lease_counter,
        )
        loop = asyncio.get_running_loop()
        chunks = [pending[i : i + 512] for i in range(0, len(pending), 512)]
        futures = [
            loop.run_in_executor(pool, _authenticate_all, checker, base + 512 * n, chunk)
            for n, chunk in enumerate(chunks)
        ]
        finding: Error | None = None
        index = base
        for fut in futures:
            for result in await fut:
                try:
                    if isinstance(result, Error):
                        raise result
                    checker.advance(index, result)
                except Error as exc:
                    finding = finding or exc
                index += 1
        state = FollowState(
            frontier, checker.heads, checker.directive_counter, self._origin, checker.lease_counter
        )
        await asyncio.to_thread(self._store.commit, base, pending, signed, state)
        self._state = state
        self._latest = signed
        log.info("stored entries up to %d (checkpoint %d)", covered, signed.size)
        if finding is not None:
            raise finding

    async def _diagnose(self, signed: cpmod.SignedCheckpoint) -> VerificationError:
        last = self._latest
        if last is None or last.size == 0:
            return RewrittenEntryError(
                f"the entries sent do not hash to the root of checkpoint {signed.size}"
            )
        try:
            proof = await self._stub.GetConsistencyProof(
                audit_pb2.ConsistencyProofRequest(old_size=last.size, new_size=signed.size)
            )
            merkle.verify_consistency(
                last.size, signed.size, list(proof.hashes), last.root, signed.root
            )
        except (ProofError, grpc.aio.AioRpcError) as exc:
            return self._evidence(
                InconsistentLogError(
                    f"checkpoint {signed.size} does not extend checkpoint {last.size}:"
                    f" the log was rewritten ({exc})"
                ),
                [last.note, signed.note],
            )
        return RewrittenEntryError(
            f"entries {last.size}..{signed.size - 1} as sent do not hash to the signed root"
            " although the tree extends the stored checkpoint: the collector serves other"
            " bytes than it logged"
        )


def _authenticate_all(
    checker: EntryChecker, first: int, datas: list[bytes]
) -> list[dsse.Verified | Error]:
    out: list[dsse.Verified | Error] = []
    for i, data in enumerate(datas):
        try:
            out.append(checker.authenticate(first + i, data))
        except Error as exc:
            out.append(exc)
    return out
