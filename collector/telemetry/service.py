"""``Telemetry.Stream``: envelopes up; acks, rejects and directives down."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError as ProtobufDecodeError

from collector.nodes.sessions import Outgoing, Session, Sessions
from collector.telemetry.binding import new_challenge, verify_proof
from collector.telemetry.ingest import Accepted, Checking, Ingestor, Refusal
from protos import dsse
from protos.computewatch.v1 import telemetry_pb2, telemetry_pb2_grpc
from protos.errors import (
    LedgerUnavailableError,
    LogError,
    MalformedFrameError,
    OversizeError,
    StreamBindingError,
    VerificationError,
)
from protos.keys import PublicKey

KeyNode = Callable[[str], tuple[PublicKey, str] | None]

log = logging.getLogger(__name__)


class _InFlight:
    """Bounded FIFO of accepted reports awaiting commit, with peek."""

    def __init__(self, limit: int) -> None:
        self._items: deque[Accepted | None] = deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self._space = asyncio.Event()

    async def put(self, item: Accepted | None) -> None:
        while len(self._items) >= self._limit:
            self._space.clear()
            await self._space.wait()
        self._items.append(item)
        self._ready.set()

    async def get(self) -> Accepted | None:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        self._space.set()
        return self._items.popleft()

    def pop_committed(self) -> Accepted | None:
        """Take the next item if its commit already succeeded, else None."""
        if not self._items:
            return None
        head = self._items[0]
        commit = None if head is None else head.committed
        if commit is None or not commit.done() or commit.cancelled() or commit.exception():
            return None
        self._space.set()
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)


def reject_message(
    sequence: int, reason: str, message: str, stored_sequence: int | None
) -> telemetry_pb2.CollectorMessage:
    """A Reject; ``stored_sequence`` (the key's last durably stored sequence)
    tells the agent where to resend from, whenever the refusal names a key."""
    reject = telemetry_pb2.Reject(sequence=sequence, reason=reason, message=message[:512])
    if stored_sequence is not None:
        reject.stored_sequence = stored_sequence
    return telemetry_pb2.CollectorMessage(reject=reject)


def _stop_reader(reader: asyncio.Task[object] | None, admit: asyncio.Task[None]) -> None:
    """``admit`` ended; if it failed, the reader must stop too (it may be
    waiting for the agent's next message or for room in the queue)."""
    if reader is not None and not admit.cancelled() and admit.exception() is not None:
        reader.cancel()


class _Checks:
    """Bounded FIFO of envelopes whose signature checks are under way."""

    def __init__(self, limit: int) -> None:
        self._items: deque[tuple[bytes, Checking]] = deque()
        self._limit = limit
        self._closed = False
        self._changed = asyncio.Event()

    async def put(self, data: bytes, checking: Checking) -> None:
        """Queue an envelope; wait while more than ``limit`` are queued."""
        self._items.append((data, checking))
        self._changed.set()
        while len(self._items) > self._limit:
            self._changed.clear()
            await self._changed.wait()

    async def get(self) -> tuple[bytes, Checking] | None:
        while not self._items:
            if self._closed:
                return None
            self._changed.clear()
            await self._changed.wait()
        item = self._items.popleft()
        self._changed.set()
        return item

    def close(self) -> None:
        self._closed = True
        self._changed.set()

    def discard(self) -> None:
        """Drop what is left (a stream that ended early), retrieving errors."""
        while self._items:
            _, checking = self._items.popleft()
            if not checking.done():
                checking.cancel()
            elif not checking.cancelled():
                checking.exception()


def _serialize(msg: Outgoing) -> bytes:
    """Response serializer: a frame (already serialised, e.g. one directive
    for every stream) goes out as it is."""
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


def add_telemetry_servicer(servicer: TelemetryServicer, server: grpc.aio.Server) -> None:
    """``add_TelemetryServicer_to_server`` with ``_serialize`` for responses:
    the servicer queues frames, which the generated serializer refuses."""
    handlers = {
        "Stream": grpc.stream_stream_rpc_method_handler(
            servicer.Stream,
            request_deserializer=telemetry_pb2.AgentMessage.FromString,
            response_serializer=_serialize,
        )
    }
    service = "computewatch.v1.Telemetry"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    # As the generated code does (grpc-stubs does not declare it yet).
    server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]


class TelemetryServicer(telemetry_pb2_grpc.TelemetryServicer):
    def __init__(
        self,
        ingestor: Ingestor,
        sessions: Sessions,
        *,
        max_in_flight: int = 1024,
        on_bind: Callable[[Session], None] | None = None,
        ack_interval: float = 0.1,
        check_ahead: int = 32,
        key_node: KeyNode | None = None,
        max_envelopes_per_message: int = 64,
        max_message_bytes: int = dsse.DEFAULT_MAX_ENVELOPE_BYTES,
    ) -> None:
        self._ingestor = ingestor
        # key id -> (enrolled key, node id): checks stream proofs. Without it
        # no stream is ever bound (and none receives directives).
        self._key_node = key_node
        self._sessions = sessions
        self._max_in_flight = max_in_flight
        self._on_bind = on_bind
        # A busy stream gets at most one ack per interval (each covers every
        # report committed so far); an idle one is acknowledged at once.
        self._ack_interval = ack_interval
        # Envelopes per stream whose signature checks may run at once.
        self._check_ahead = check_ahead
        # What one AgentMessage may carry (announced in every Challenge).
        self._max_envelopes = max_envelopes_per_message
        self._max_message_bytes = max_message_bytes

    async def Stream(
        self,
        request_iterator: AsyncIterator[telemetry_pb2.AgentMessage],
        context: grpc.aio.ServicerContext[
            telemetry_pb2.AgentMessage, telemetry_pb2.CollectorMessage
        ],
    ) -> AsyncIterator[Outgoing]:
        session = Session(context.peer())
        self._sessions.opened += 1
        challenge = new_challenge()
        challenge.max_envelopes_per_message = self._max_envelopes
        challenge.max_message_bytes = self._max_message_bytes
        session.challenge = challenge.nonce
        session.send(telemetry_pb2.CollectorMessage(challenge=challenge))
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
                exc = reader.exception()
                if isinstance(exc, OversizeError):
                    # Counted, logged and answered with a Reject by ``_read``.
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                if isinstance(exc, ProtobufDecodeError):
                    # A frame that is not an AgentMessage: the client's fault, and
                    # a retry sends the same bytes (UNAVAILABLE would invite one).
                    self._ingestor.reject(MalformedFrameError(str(exc)), session.peer)
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, f"malformed stream frame: {exc}"
                    )
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        finally:
            reader.cancel()
            self._sessions.remove(session)

    async def _read(
        self, requests: AsyncIterator[telemetry_pb2.AgentMessage], session: Session
    ) -> None:
        """Read envelopes and start their signature checks; ``_admit`` takes
        them in order as the checks finish, so a stream keeps several checks
        in flight (and the pool gets them in batches)."""
        acks = _InFlight(self._max_in_flight)
        checks = _Checks(self._check_ahead)
        pump = asyncio.create_task(self._pump(session, acks))
        admit = asyncio.create_task(self._admit(session, checks, acks))
        reader = asyncio.current_task()
        admit.add_done_callback(functools.partial(_stop_reader, reader))
        try:
            async for msg in requests:
                if msg.proof:
                    self._prove(session, msg.proof)
                if msg.envelopes:
                    self._check_batch(session, msg)
                if msg.envelope or not (msg.proof or msg.envelopes):
                    await checks.put(msg.envelope, self._ingestor.begin(msg.envelope))
                for data in msg.envelopes:
                    await checks.put(data, self._ingestor.begin(data))
            checks.close()
            await admit
            await pump
        except asyncio.CancelledError:
            # ``admit`` failed: end the stream with its error, not a cancellation.
            if admit.done() and not admit.cancelled() and admit.exception() is not None:
                raise admit.exception() from None  # type: ignore[misc]
            raise
        finally:
            admit.cancel()
            pump.cancel()
            checks.discard()
            session.close()

    async def _admit(self, session: Session, checks: _Checks, acks: _InFlight) -> None:
        while (item := await checks.get()) is not None:
            data, checking = item
            try:
                accepted = await self._ingestor.finish(
                    data, checking, session.node_id or session.report_node
                )
            except (VerificationError, LedgerUnavailableError) as exc:
                self._refuse(session, exc)
                continue
            if session.report_node is None:
                session.report_node = accepted.node_id
            await acks.put(accepted)
        await acks.put(None)

    def _check_batch(self, session: Session, msg: telemetry_pb2.AgentMessage) -> None:
        """Refuse (and end the stream on) a message with more envelopes, or
        more bytes of them, than the Challenge announced. Each envelope of an
        acceptable one is then checked on its own, as if it came alone."""
        count = len(msg.envelopes) + (1 if msg.envelope else 0)
        size = len(msg.envelope) + sum(len(e) for e in msg.envelopes)
        if count > self._max_envelopes or size > self._max_message_bytes:
            exc = OversizeError(
                f"a message of {count} envelopes, {size} bytes: the limits are"
                f" {self._max_envelopes} envelopes and {self._max_message_bytes} bytes"
            )
            self._refuse(session, exc)
            raise exc

    def _prove(self, session: Session, data: bytes) -> None:
        """Bind the stream to the node whose key signed this stream's challenge."""
        try:
            if session.node_id is not None:
                raise StreamBindingError(f"this stream is already bound to {session.node_id}")
            if self._key_node is None:
                raise StreamBindingError("this collector binds no streams")
            node_id = verify_proof(data, session.challenge, self._key_node)
            if session.report_node not in (None, node_id):
                raise StreamBindingError(
                    f"this stream carries reports of {session.report_node}; a proof for"
                    f" {node_id} cannot bind it"
                )
        except VerificationError as exc:
            self._refuse(session, exc)
            return
        session.challenge = b""  # answered: never again on this stream
        self._sessions.bind(session, node_id)
        log.debug("stream from %s bound to %s", session.peer, node_id)
        if self._on_bind is not None:
            self._on_bind(session)

    def _refuse(self, session: Session, exc: Refusal) -> None:
        self._ingestor.reject(exc, session.peer)
        session.send(reject_message(exc.sequence, exc.reason, str(exc), exc.stored_sequence))

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
            except LogError as exc:
                # The write failed: this report and every one after it on the
                # stream were refused. Say so (with what is stored, so the
                # agent resends from there) and end the stream.
                log.debug("commit failed for %s (%s); closing its stream", session.node_id, exc)
                self._ingestor.stats.rejected[exc.reason] += 1
                stored = self._ingestor.stored_sequence(item.keyid) if item.keyid else None
                session.send(reject_message(item.sequence, exc.reason, str(exc), stored))
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
