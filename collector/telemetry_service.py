"""``Telemetry.Stream``: envelopes up; acks, rejects and directives down."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable

import grpc

from collector.ingest import Accepted, Ingestor
from collector.sessions import Session, Sessions
from protos.computewatch.v1 import telemetry_pb2, telemetry_pb2_grpc
from protos.errors import LogError, VerificationError

log = logging.getLogger(__name__)


class _InFlight:
    """Bounded FIFO of accepted reports awaiting commit, with peek."""

    def __init__(self, limit: int) -> None:
        self._items: deque[Accepted | None] = deque()
        self._space = asyncio.Semaphore(limit)
        self._ready = asyncio.Event()

    async def put(self, item: Accepted | None) -> None:
        await self._space.acquire()
        self._items.append(item)
        self._ready.set()

    async def get(self) -> Accepted | None:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        self._space.release()
        return self._items.popleft()

    def pop_committed(self) -> Accepted | None:
        """Take the next item if its commit already succeeded, else None."""
        if not self._items:
            return None
        head = self._items[0]
        if head is None or not head.committed.done() or head.committed.exception():
            return None
        self._space.release()
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)


class TelemetryServicer(telemetry_pb2_grpc.TelemetryServicer):
    def __init__(
        self,
        ingestor: Ingestor,
        sessions: Sessions,
        *,
        max_in_flight: int = 1024,
        on_bind: Callable[[Session], None] | None = None,
        ack_interval: float = 0.1,
    ) -> None:
        self._ingestor = ingestor
        self._sessions = sessions
        self._max_in_flight = max_in_flight
        self._on_bind = on_bind
        # A busy stream gets at most one ack per interval (each covers every
        # report committed so far); an idle one is acknowledged at once.
        self._ack_interval = ack_interval

    async def Stream(
        self,
        request_iterator: AsyncIterator[telemetry_pb2.AgentMessage],
        context: grpc.aio.ServicerContext[
            telemetry_pb2.AgentMessage, telemetry_pb2.CollectorMessage
        ],
    ) -> AsyncIterator[telemetry_pb2.CollectorMessage]:
        session = Session(context.peer())
        self._sessions.opened += 1
        reader = asyncio.create_task(self._read(request_iterator, session))
        try:
            while True:
                msg = await session.next()
                if msg is None:
                    break
                yield msg
            if session.overflowed:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "the agent is not reading acknowledgements; reconnect",
                )
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(reader.exception()))
        finally:
            reader.cancel()
            self._sessions.remove(session)

    async def _read(
        self, requests: AsyncIterator[telemetry_pb2.AgentMessage], session: Session
    ) -> None:
        acks = _InFlight(self._max_in_flight)
        pump = asyncio.create_task(self._pump(session, acks))
        try:
            async for msg in requests:
                try:
                    accepted = await self._ingestor.accept(msg.envelope, session.node_id)
                except VerificationError as exc:
                    self._ingestor.reject(exc, session.peer)
                    session.send(
                        telemetry_pb2.CollectorMessage(
                            reject=telemetry_pb2.Reject(reason=exc.reason, message=str(exc)[:512])
                        )
                    )
                    continue
                if session.node_id is None:
                    self._sessions.bind(session, accepted.node_id)
                    if self._on_bind is not None:
                        self._on_bind(session)
                await acks.put(accepted)
            await acks.put(None)
            await pump
        finally:
            pump.cancel()
            session.close()

    async def _pump(self, session: Session, acks: _InFlight) -> None:
        """Acknowledge in order, once committed; coalesce runs into one ack.

        Acks are cumulative, so a stream is acknowledged at most once per
        ``ack_interval``; each ack covers every report committed by then. A
        stream sending as fast as it can gets a few acks a second rather than
        one per report (each is a write to the socket); an agent reporting
        once a second is acknowledged as soon as its report is committed.
        """
        loop = asyncio.get_running_loop()
        next_ack = 0.0
        while True:
            item = await acks.get()
            if item is None:
                return
            try:
                index = await item.committed
            except LogError:
                log.exception("commit failed for %s; closing its stream", session.node_id)
                session.close()
                return
            wait = next_ack - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            last, last_index = item, index
            while (nxt := acks.pop_committed()) is not None:
                last, last_index = nxt, nxt.committed.result()
            session.send(
                telemetry_pb2.CollectorMessage(
                    ack=telemetry_pb2.Ack(
                        node_id=last.node_id, sequence=last.sequence, log_index=last_index
                    )
                )
            )
            next_ack = loop.time() + self._ack_interval
