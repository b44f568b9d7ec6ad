"""The ``Audit`` gRPC service: the public record, read-only.

``Subscribe(from_index)`` streams entries in index order, each run of
entries followed by a signed checkpoint whose tree covers exactly the
entries sent so far; it is resumable from any index. Entries are read from
the collector's database (the SQLite file or, on a standby too, the shared
PostgreSQL) with a separate read-only connection, in short reads, at the
pace the subscriber reads: ingestion never waits for a subscriber. New
checkpoints reach each live stream through a bounded queue; a subscriber
stuck for ``subscriber_queue`` checkpoints, or (once caught up) more than
``max_lag_entries`` behind the log, is closed with RESOURCE_EXHAUSTED and
told the index to resume from (in the details and the
``computewatch-resume-from`` trailing metadata). Its handler ends at once,
whether or not it reads: a status that cannot reach it within
``close_grace_seconds`` leaves it queued behind the unread messages (grpc
holds that one write, nothing more) and the handler returns.

Bad requests get INVALID_ARGUMENT (malformed: empty range, old > new, size
0) or OUT_OF_RANGE (beyond the log), a counter and a log line; never a crash.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import grpc

from collector.store.sql import Location, open_db
from protos import checkpoint as cpmod
from protos.checkpoint import RESUME_FROM_KEY
from protos.computewatch.v1 import audit_pb2, audit_pb2_grpc
from protos.errors import LogError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    _Ctx = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class AuditLimits:
    # GetEntries answers at most this many entries / bytes (fewer is not an error).
    max_entries_per_response: int = 1000
    max_response_bytes: int = 3 << 20
    # Entries read from the ledger per step of a stream.
    stream_chunk_entries: int = 256
    # During catch-up, a covering checkpoint about every this many entries.
    round_entries: int = 4096
    # Checkpoints a live stream may have pending before it is closed.
    subscriber_queue: int = 16
    # A caught-up stream that falls further behind than this is closed.
    max_lag_entries: int = 100_000
    # Seconds a closed stream's status may wait behind unread messages; a
    # subscriber that does not read even then is cut off (the call is cancelled).
    close_grace_seconds: float = 5.0


class MerkleReader(Protocol):
    @property
    def size(self) -> int: ...

    def inclusion_proof(self, index: int, size: int) -> list[bytes]: ...

    def consistency_proof(self, old: int, new: int) -> list[bytes]: ...


class CheckpointSource(Protocol):
    def latest(self) -> cpmod.SignedCheckpoint | None: ...

    def covering(self, after: int, upto: int) -> cpmod.SignedCheckpoint | None: ...


class LogReader:
    """Reads entry bytes from the ``log`` table on its own read-only handle on
    the collector's database (the SQLite file, or the PostgreSQL database a
    standby shares with the leader), a few rows per query so one call holds at
    most ``max_bytes`` plus one small batch in memory."""

    _ROWS_PER_QUERY = 32

    def __init__(self, location: Location) -> None:
        self._db = open_db(location, readonly=True)

    def entries(self, start: int, end: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """Entries ``[start, end)`` in order, stopping before ``max_bytes`` (at least one)."""
        out: list[tuple[int, bytes]] = []
        total = 0
        pos = start
        while pos < end:
            stop = min(end, pos + self._ROWS_PER_QUERY)
            rows = self._db.execute(
                "SELECT idx, data FROM log WHERE idx >= ? AND idx < ? ORDER BY idx", (pos, stop)
            )
            for idx, data in rows:
                if out and total + len(data) > max_bytes:
                    return out
                if idx != start + len(out):
                    raise LogError(f"log entry {start + len(out)} is missing from the ledger")
                out.append((int(idx), bytes(data)))
                total += len(data)
            if len(rows) < stop - pos:
                break  # the next one is missing: the caller sees the short read
            pos = stop
        return out

    def close(self) -> None:
        self._db.close()


class _Subscriber:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[cpmod.SignedCheckpoint] = asyncio.Queue(maxsize)
        self.overflowed = asyncio.Event()


class SubscriptionHub:
    """Fans new checkpoints out to live streams (event-loop thread only)."""

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._subs: set[_Subscriber] = set()
        # Streams closed for falling behind; of those, cut off for not reading.
        self.dropped_total = 0
        self.cut_off_total = 0

    @property
    def active(self) -> int:
        return len(self._subs)

    def register(self) -> _Subscriber:
        sub = _Subscriber(self._queue_size)
        self._subs.add(sub)
        return sub

    def unregister(self, sub: _Subscriber) -> None:
        self._subs.discard(sub)

    def publish(self, signed: cpmod.SignedCheckpoint) -> None:
        """Never blocks: a full queue marks that subscriber as too far behind."""
        for sub in self._subs:
            if sub.overflowed.is_set():
                continue
            try:
                sub.queue.put_nowait(signed)
            except asyncio.QueueFull:
                sub.overflowed.set()


def _checkpoint_response(signed: cpmod.SignedCheckpoint) -> audit_pb2.SubscribeResponse:
    return audit_pb2.SubscribeResponse(checkpoint=audit_pb2.Checkpoint(note=signed.note))


class _BehindError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Progress:
    """Where a stream stands: the size covered by the last checkpoint sent."""

    def __init__(self, start: int) -> None:
        self.covered = start


class AuditServicer(audit_pb2_grpc.AuditServicer):
    """``merkle``: the Merkle log; ``checkpoints``: the checkpointer; ``reader``: entry bytes."""

    def __init__(
        self,
        merkle: MerkleReader,
        checkpoints: CheckpointSource,
        reader: LogReader,
        hub: SubscriptionHub,
        limits: AuditLimits | None = None,
    ) -> None:
        self._merkle = merkle
        self._cps = checkpoints
        self._reader = reader
        self._hub = hub
        self._limits = limits or AuditLimits()
        self.rejected: Counter[tuple[str, str]] = Counter()

    async def _reject(
        self, context: _Ctx, method: str, code: grpc.StatusCode, msg: str
    ) -> NoReturn:
        self.rejected[(method, code.name)] += 1
        log.info("audit %s rejected (%s): %s", method, code.name, msg)
        await context.abort(code, msg)

    def _latest(self) -> cpmod.SignedCheckpoint | None:
        return self._cps.latest()

    # -- unary ---------------------------------------------------------------------
    async def GetCheckpoint(
        self, request: audit_pb2.GetCheckpointRequest, context: _Ctx
    ) -> audit_pb2.Checkpoint:
        latest = self._latest()
        if latest is None:
            await self._reject(
                context, "GetCheckpoint", grpc.StatusCode.UNAVAILABLE, "no checkpoint signed yet"
            )
        return audit_pb2.Checkpoint(note=latest.note)

    async def GetInclusionProof(
        self, request: audit_pb2.InclusionProofRequest, context: _Ctx
    ) -> audit_pb2.Proof:
        index, size, have = request.index, request.tree_size, self._merkle.size
        if size == 0 or index >= size:
            await self._reject(
                context,
                "GetInclusionProof",
                grpc.StatusCode.INVALID_ARGUMENT,
                f"index {index} is not in a tree of size {size}: need index < tree_size",
            )
        if size > have:
            await self._reject(
                context,
                "GetInclusionProof",
                grpc.StatusCode.OUT_OF_RANGE,
                f"tree_size {size} is beyond the log's {have} entries",
            )
        hashes = await asyncio.to_thread(self._merkle.inclusion_proof, index, size)
        return audit_pb2.Proof(hashes=hashes)

    async def GetConsistencyProof(
        self, request: audit_pb2.ConsistencyProofRequest, context: _Ctx
    ) -> audit_pb2.Proof:
        old, new, have = request.old_size, request.new_size, self._merkle.size
        if old == 0 or old > new:
            await self._reject(
                context,
                "GetConsistencyProof",
                grpc.StatusCode.INVALID_ARGUMENT,
                f"no consistency proof from {old} to {new}: need 0 < old_size <= new_size",
            )
        if new > have:
            await self._reject(
                context,
                "GetConsistencyProof",
                grpc.StatusCode.OUT_OF_RANGE,
                f"new_size {new} is beyond the log's {have} entries",
            )
        hashes = await asyncio.to_thread(self._merkle.consistency_proof, old, new)
        return audit_pb2.Proof(hashes=hashes)

    async def GetEntries(
        self, request: audit_pb2.GetEntriesRequest, context: _Ctx
    ) -> audit_pb2.Entries:
        start, end, have = request.start, request.end, self._merkle.size
        if end <= start:
            await self._reject(
                context,
                "GetEntries",
                grpc.StatusCode.INVALID_ARGUMENT,
                f"empty range [{start}, {end}): need start < end",
            )
        if start >= have:
            await self._reject(
                context,
                "GetEntries",
                grpc.StatusCode.OUT_OF_RANGE,
                f"start {start} is beyond the log's {have} entries",
            )
        lim = self._limits
        end = min(end, have, start + lim.max_entries_per_response)
        rows = await asyncio.to_thread(self._reader.entries, start, end, lim.max_response_bytes)
        return audit_pb2.Entries(entries=[audit_pb2.LogEntry(index=i, data=d) for i, d in rows])

    # -- stream ----------------------------------------------------------------------
    async def Subscribe(self, request: audit_pb2.SubscribeRequest, context: _Ctx) -> None:
        start, have = request.from_index, self._merkle.size
        if start > have:
            await self._reject(
                context,
                "Subscribe",
                grpc.StatusCode.OUT_OF_RANGE,
                f"from_index {start} is beyond the log's {have} entries",
            )
        sub = self._hub.register()
        progress = _Progress(start)
        sender = asyncio.ensure_future(self._stream(start, sub, context, progress))
        stuck = asyncio.ensure_future(sub.overflowed.wait())
        try:
            done, _ = await asyncio.wait({sender, stuck}, return_when=asyncio.FIRST_COMPLETED)
            if sender in done:
                sender.result()  # _BehindError or an error propagates
                return
            sender.cancel()
            raise _BehindError(
                f"subscriber fell behind: {self._limits.subscriber_queue} checkpoints"
                f" arrived while one write was pending; reconnect with from_index ="
                f" {progress.covered} (your local size)"
            )
        except _BehindError as exc:
            self._hub.unregister(sub)
            await self._close_behind(context, exc.message, progress.covered)
        except LogError as exc:
            log.exception("audit stream failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"log read failed: {exc}")
        finally:
            sender.cancel()
            stuck.cancel()
            self._hub.unregister(sub)

    async def _close_behind(self, context: _Ctx, message: str, resume_from: int) -> NoReturn:
        """End a stream that fell behind: RESOURCE_EXHAUSTED with the index to
        resume from (details and ``RESUME_FROM_KEY`` trailing metadata). The
        status waits behind messages already written; a subscriber that reads
        none of them within ``close_grace_seconds`` is cut off: the call is
        cancelled, which frees it at once (the subscriber sees CANCELLED and
        resumes from its local size all the same)."""
        self._hub.dropped_total += 1
        self.rejected[("Subscribe", grpc.StatusCode.RESOURCE_EXHAUSTED.name)] += 1
        log.info("audit Subscribe closed (RESOURCE_EXHAUSTED): %s", message)
        metadata = ((RESUME_FROM_KEY, str(resume_from)),)
        try:
            await asyncio.wait_for(
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message, metadata),
                self._limits.close_grace_seconds,
            )
        except grpc.aio.AbortError:
            raise  # the status went out: how grpc ends an aborted handler
        except TimeoutError:
            self._hub.cut_off_total += 1
            log.info("audit subscriber did not read its closing status; ending its handler")
            raise asyncio.CancelledError from None
        except Exception as exc:  # noqa: BLE001 - the subscriber left first (grpc's batch error)
            log.info("audit subscriber left before its closing status: %s", type(exc).__name__)
            raise asyncio.CancelledError from None
        raise AssertionError("abort returned")  # pragma: no cover - abort always raises

    async def _stream(self, pos: int, sub: _Subscriber, context: _Ctx, progress: _Progress) -> None:
        lim = self._limits
        caught_up = False
        async for target in self._targets(sub, self._latest()):
            if target.size < pos:
                continue  # the subscriber already has more than this checkpoint covers
            sent: bytes | None = None
            while pos < target.size:
                goal = target
                if target.size - pos > lim.round_entries:
                    found = await asyncio.to_thread(
                        self._cps.covering, pos, pos + lim.round_entries
                    )
                    if found is not None and found.size < target.size:
                        goal = found
                async for entry in self._entries(pos, goal.size):
                    await context.write(audit_pb2.SubscribeResponse(entry=entry))
                    pos = entry.index + 1
                    if caught_up and self._merkle.size - pos > lim.max_lag_entries:
                        raise _BehindError(
                            f"subscriber is more than {lim.max_lag_entries} entries behind"
                            f" the log; reconnect with from_index = {progress.covered}"
                        )
                await context.write(_checkpoint_response(goal))
                progress.covered = goal.size
                sent = goal.note
            if sent != target.note:
                # A fresh signature over an unchanged size still goes out: it is
                # how the subscriber knows the log is alive, not frozen.
                await context.write(_checkpoint_response(target))
            caught_up = True

    async def _targets(
        self, sub: _Subscriber, first: cpmod.SignedCheckpoint | None
    ) -> AsyncIterator[cpmod.SignedCheckpoint]:
        if first is not None:
            yield first
        while True:
            newest = await sub.queue.get()
            while not sub.queue.empty():
                newest = sub.queue.get_nowait()
            yield newest

    async def _entries(self, start: int, end: int) -> AsyncIterator[audit_pb2.LogEntry]:
        lim = self._limits
        pos = start
        while pos < end:
            stop = min(end, pos + lim.stream_chunk_entries)
            rows = await asyncio.to_thread(self._reader.entries, pos, stop, lim.max_response_bytes)
            if not rows:
                raise LogError(f"log entry {pos} is missing from the ledger")
            for idx, data in rows:
                yield audit_pb2.LogEntry(index=idx, data=data)
            pos = rows[-1][0] + 1
