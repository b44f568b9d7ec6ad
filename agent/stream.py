"""The telemetry stream: spooled envelopes up, acks, rejects and directives down.

One bidirectional ``Telemetry.Stream`` at a time. On every (re)connection the
client resends each unacknowledged envelope in order, then streams new ones as
the runner seals them; the collector deduplicates by (node, sequence), so a
resend is harmless. At most ``max_in_flight`` envelopes are unacknowledged on
the wire. A lost connection is retried after a jittered, exponentially growing
delay (reset once the collector acknowledges something), never in a busy loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
import grpc.aio

from agent.metrics import AgentStats
from agent.refusal import CONTENT_REASONS
from agent.spool import Spool
from agent.targets import TargetRing, parse_targets
from protos import dsse
from protos.computewatch.v1 import telemetry_pb2, telemetry_pb2_grpc
from protos.dsse import DEFAULT_MAX_ENVELOPE_BYTES
from protos.errors import Error
from protos.keys import PrivateKey

log = logging.getLogger(__name__)

DirectiveHandler = Callable[[bytes], Awaitable[None]]
Credentials = grpc.ChannelCredentials | Callable[[], grpc.ChannelCredentials]
# (sequence, reason, message) of a content refusal -> True when the spool now
# holds a replacement for that report (``agent.refusal.RefusalHandler``).
RefusalHook = Callable[[int, str, str], bool]

# Rejections of the bytes themselves (``agent.refusal.CONTENT_REASONS``): the
# collector will never take this envelope; the refusal hook re-seals a corrected
# report at the same sequence (without a hook, the report is dropped).
#
# Rejections that a later resend cures: the sealed report is kept and the
# stream reconnects. A node not enrolled yet must not drop its first reports;
# a `gap` means "resend from stored_sequence + 1"; `ledger_unavailable` (a full
# disk at the collector) passes once the collector can write again. Every
# reason not in CONTENT_REASONS is treated so: an unknown reason never costs a
# sealed report.
RETRY_REASONS = frozenset({"unknown_node", "gap", "ledger_unavailable", "stream_binding"})
MAX_DIRECTIVE_BYTES = 4 << 20
_WIRE_OVERHEAD = 64 << 10


async def log_directive(envelope: bytes) -> None:
    """Default directive handler: enforcement is not wired in."""
    log.warning("directive received (%d bytes) but no enforcement is configured", len(envelope))


def channel_options(
    max_send_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES + _WIRE_OVERHEAD,
    backoff_min_seconds: float = 0.5,
    backoff_max_seconds: float = 30.0,
) -> list[tuple[str, int]]:
    """Keepalive to notice dead peers, message size limits, bounded reconnects."""
    return [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.max_send_message_length", max_send_bytes),
        ("grpc.max_receive_message_length", MAX_DIRECTIVE_BYTES),
        ("grpc.min_reconnect_backoff_ms", max(1, int(backoff_min_seconds * 1000))),
        ("grpc.max_reconnect_backoff_ms", max(1, int(backoff_max_seconds * 1000))),
    ]


class _RetryLaterError(Exception):
    """End this stream and reconnect after a backoff."""


class _LogLimiter:
    """At most ``per_second`` lines a second; counts the rest."""

    def __init__(self, per_second: int = 5) -> None:
        self._per_second = per_second
        self._window = 0
        self._count = 0
        self.suppressed = 0

    def allow(self) -> bool:
        now = int(time.monotonic())
        if now != self._window:
            self._window, self._count = now, 0
        self._count += 1
        if self._count > self._per_second:
            self.suppressed += 1
            return False
        return True


# The most envelopes an agent puts in one message (its backlog after a
# reconnect goes up in messages of this many, if the collector takes them).
MAX_ENVELOPES_PER_MESSAGE = 64
# How long a new stream waits for the collector's challenge before it sends.
CHALLENGE_WAIT_SECONDS = 2.0


def message_groups(
    pending: list[tuple[int, bytes]], max_envelopes: int, max_bytes: int
) -> list[list[tuple[int, bytes]]]:
    """Split ``pending`` (in order) into messages of at most ``max_envelopes``
    envelopes and ``max_bytes`` bytes together; an envelope larger than
    ``max_bytes`` goes alone (the collector refuses it as it would alone)."""
    groups: list[list[tuple[int, bytes]]] = []
    size = 0
    for item in pending:
        if groups and len(groups[-1]) < max_envelopes and size + len(item[1]) <= max_bytes:
            groups[-1].append(item)
            size += len(item[1])
        else:
            groups.append([item])
            size = len(item[1])
    return groups


@dataclass
class _Session:
    """What one connection has written and not yet seen answered."""

    inflight: deque[int] = field(default_factory=deque)
    exchanged: bool = False
    # The answer to this stream's challenge, not yet written.
    proof: bytes = b""
    # What one message may carry, as the collector's challenge announced (a
    # collector before batches announces nothing: one envelope a message).
    max_envelopes: int = 1
    max_bytes: int = 0
    # Set once the challenge (with those limits) arrived.
    challenged: asyncio.Event = field(default_factory=asyncio.Event)


class StreamClient:
    """Streams the spool to the collector until ``stop`` is set."""

    def __init__(
        self,
        target: str,
        node_id: str,
        spool: Spool,
        stats: AgentStats,
        *,
        on_directive: DirectiveHandler = log_directive,
        on_refused: RefusalHook | None = None,
        backoff_min_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
        max_in_flight: int = 256,
        drain_seconds: float = 2.0,
        options: Sequence[tuple[str, int]] | None = None,
        rng: random.Random | None = None,
        key: PrivateKey | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        """``key``: the node key, to answer the collector's challenge (without
        it the stream is never bound and receives no directives).
        ``credentials``: TLS, or a function that builds them, called for every
        connection (so renewed certificate files are used without a restart);
        None is plain text (an explicit opt-out)."""
        if not 0 < backoff_min_seconds <= backoff_max_seconds:
            raise ValueError("expected 0 < backoff_min_seconds <= backoff_max_seconds")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        # Every collector address; a connection that ends unanswered moves on
        # to the next (agent.targets: collectors in high availability).
        self._ring = TargetRing(parse_targets(target))
        self._node_id = node_id
        self._key = key
        self._credentials = credentials
        self._spool = spool
        self._stats = stats
        self._on_directive = on_directive
        self._on_refused = on_refused
        self._backoff_min = backoff_min_seconds
        self._backoff_max = backoff_max_seconds
        self._max_in_flight = max_in_flight
        self._drain = drain_seconds
        self._options = list(
            options
            if options is not None
            else channel_options(
                backoff_min_seconds=backoff_min_seconds, backoff_max_seconds=backoff_max_seconds
            )
        )
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not cryptography)
        self._wake = asyncio.Event()
        self._reject_log = _LogLimiter()
        self._connections = 0
        # Connections in a row that ended before the collector acknowledged anything.
        self._failures = 0

    def notify(self) -> None:
        """A new envelope is in the spool (or the window has room): send it."""
        self._wake.set()

    def set_directive_handler(self, handler: DirectiveHandler) -> None:
        self._on_directive = handler

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait before connection attempt ``attempt`` + 1 (0-based)."""
        cap = min(self._backoff_max, self._backoff_min * 2 ** min(attempt, 32))
        return self._rng.uniform(self._backoff_min, cap)

    @property
    def target(self) -> str:
        """The collector address the next connection goes to."""
        return self._ring.current

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        await self._ring.resolve()
        while not stop.is_set():
            if self._connections:
                self._stats.stream_reconnects += 1
            self._connections += 1
            exchanged = await self._connect_once(stop)
            if stop.is_set():
                break
            if exchanged:
                attempt = 0
                self._failures = 0
            else:
                self._failures += 1
                # Unanswered: try the next collector (a standby, or a dead one,
                # ends the stream at once); back off only after a full round.
                if not self._ring.advance():
                    log.info("%s: trying collector %s", self._node_id, self._ring.current)
                    continue
                await self._ring.resolve()
            delay = self.backoff_delay(attempt)
            attempt += 1
            log.debug("%s: reconnecting in %.2f s", self._node_id, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _connect_once(self, stop: asyncio.Event) -> bool:
        """One connection, until it fails or ``stop``; True if the collector
        acknowledged anything on it."""
        session = _Session()
        target = self._ring.current
        try:
            channel = self._channel(target)
        except Error as exc:  # unreadable TLS files: retried after the backoff
            log.warning("%s: cannot connect to %s: %s", self._node_id, target, exc)
            return False
        async with channel:
            call = telemetry_pb2_grpc.TelemetryStub(channel).Stream()
            sender = asyncio.create_task(self._send(call, session))
            receiver = asyncio.create_task(self._receive(call, session))
            stopper = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({sender, receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set() and not receiver.done():
                    await self._drain_on_stop(call, sender, receiver, session)
            finally:
                for task in (sender, receiver, stopper):
                    task.cancel()
                await asyncio.gather(sender, receiver, stopper, return_exceptions=True)
                call.cancel()
                self._stats.stream_connected = False
            self._report_end(sender, receiver, stop)
        return session.exchanged

    def _channel(self, target: str) -> grpc.aio.Channel:
        options: list[tuple[str, int | str]] = list(self._options)
        authority = self._ring.authority(target)
        if authority is not None:  # an address a name expanded to: keep the name (TLS too)
            options.append(("grpc.default_authority", authority))
        creds = self._credentials
        if creds is None:
            return grpc.aio.insecure_channel(target, options=options)
        if callable(creds):
            creds = creds()
        return grpc.aio.secure_channel(target, creds, options=options)

    async def _drain_on_stop(
        self,
        call: grpc.aio.StreamStreamCall[telemetry_pb2.AgentMessage, telemetry_pb2.CollectorMessage],
        sender: asyncio.Task[None],
        receiver: asyncio.Task[None],
        session: _Session,
    ) -> None:
        """On shutdown, give the collector a moment to acknowledge what it has."""
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        if not session.inflight or self._drain <= 0:
            return
        with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
            await call.done_writing()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(receiver), self._drain)

    def _report_end(
        self, sender: asyncio.Task[None], receiver: asyncio.Task[None], stop: asyncio.Event
    ) -> None:
        if receiver.done() and not receiver.cancelled() and receiver.exception() is None:
            if not stop.is_set():
                log.info("%s: the collector closed the stream", self._node_id)
            return
        for task in (receiver, sender):
            if task.cancelled() or task.exception() is None:
                continue
            exc = task.exception()
            if stop.is_set():
                log.debug("%s: stream ended on stop: %s", self._node_id, exc)
            elif isinstance(exc, grpc.aio.AioRpcError):
                # While the collector stays unreachable: attempts 1, 2, 4, 8, ... log.
                n = self._failures + 1
                quiet = n & (n - 1)
                log.log(
                    logging.DEBUG if quiet else logging.WARNING,
                    "%s: stream to %s ended (failure %d in a row): %s %s",
                    self._node_id,
                    self._ring.current,
                    n,
                    exc.code().name,
                    exc.details(),
                )
            elif isinstance(exc, _RetryLaterError):
                log.warning("%s: %s", self._node_id, exc)
            elif isinstance(exc, Error):
                log.error("%s: stream stopped: %s: %s", self._node_id, exc.reason, exc)
            else:
                log.error("%s: stream failed", self._node_id, exc_info=exc)
            return

    async def _send(
        self,
        call: grpc.aio.StreamStreamCall[telemetry_pb2.AgentMessage, telemetry_pb2.CollectorMessage],
        session: _Session,
    ) -> None:
        # The challenge comes first on every stream and says how many envelopes
        # a message may carry: a backlog waits for it briefly, then goes up in
        # batches (or one a message, from a collector that does not say).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.challenged.wait(), CHALLENGE_WAIT_SECONDS)
        cursor = 0
        while True:
            self._wake.clear()
            batch: list[tuple[int, bytes]] = []
            room = self._max_in_flight - len(session.inflight)
            if room > 0:
                batch = self._spool.pending(after=cursor, limit=room)
                for group in message_groups(batch, session.max_envelopes, session.max_bytes):
                    msg = telemetry_pb2.AgentMessage(
                        envelope=group[0][1], envelopes=[e for _, e in group[1:]]
                    )
                    try:
                        await call.write(msg)
                    except asyncio.InvalidStateError:
                        # The RPC already ended (the collector died or failed
                        # over): not a bug; the unacknowledged go on the next stream.
                        raise _RetryLaterError(
                            f"the stream to {self._ring.current} ended while sending report"
                            f" {group[0][0]}: resending from {self._spool.acked_sequence + 1}"
                        ) from None
                    for sequence, _ in group:
                        session.inflight.append(sequence)
                        cursor = sequence
                    self._stats.envelopes_sent += len(group)
                    self._stats.messages_sent += 1
            # The proof goes after the first window of a backlog, as it did
            # when that window was written before the challenge arrived.
            if session.proof:
                proof, session.proof = session.proof, b""
                await call.write(telemetry_pb2.AgentMessage(proof=proof))
            if batch:
                continue
            await self._wake.wait()

    async def _receive(
        self,
        call: grpc.aio.StreamStreamCall[telemetry_pb2.AgentMessage, telemetry_pb2.CollectorMessage],
        session: _Session,
    ) -> None:
        while True:
            msg = await call.read()
            if not isinstance(msg, telemetry_pb2.CollectorMessage):
                return  # grpc.aio.EOF: the collector ended the stream
            self._stats.stream_connected = True
            body = msg.WhichOneof("body")
            if body == "ack":
                self._on_ack(msg.ack, session)
            elif body == "reject":
                self._on_reject(msg.reject, session)
            elif body == "challenge":
                self._on_challenge(msg.challenge, session)
            elif body == "directive":
                self._stats.directives_received += 1
                await self._dispatch(msg.directive)

    def _on_challenge(self, challenge: telemetry_pb2.Challenge, session: _Session) -> None:
        """Prove possession of the node key for this stream: the collector
        binds a stream (and sends it directives) only on this signature."""
        session.max_envelopes = max(
            1, min(challenge.max_envelopes_per_message, MAX_ENVELOPES_PER_MESSAGE)
        )
        session.max_bytes = challenge.max_message_bytes
        session.challenged.set()
        if self._key is None:
            log.warning("%s: no node key to answer the stream challenge", self._node_id)
            return
        proof = telemetry_pb2.StreamProof(node_id=self._node_id, nonce=challenge.nonce)
        session.proof = dsse.seal(proof, self._key)
        self._wake.set()

    def _on_ack(self, ack: telemetry_pb2.Ack, session: _Session) -> None:
        if ack.node_id and ack.node_id != self._node_id:
            log.warning("%s: ignoring an ack for node %r", self._node_id, ack.node_id)
            return
        self._spool.ack(ack.sequence)
        while session.inflight and session.inflight[0] <= ack.sequence:
            session.inflight.popleft()
        session.exchanged = True
        self._stats.acked_sequence = self._spool.acked_sequence
        self._stats.unacked = self._spool.unacked
        self._wake.set()

    def _on_reject(self, reject: telemetry_pb2.Reject, session: _Session) -> None:
        reason = reject.reason or "unspecified"
        self._stats.rejected[reason] += 1
        content = reason in CONTENT_REASONS and reject.sequence != 0
        if self._reject_log.allow():
            log.warning(
                "%s: collector rejected report %s: %s: %s (%s)",
                self._node_id,
                reject.sequence or "?",
                reason,
                reject.message,
                "refused for its content" if content else "kept for a later resend",
            )
        if content:
            if self._on_refused is not None:
                # Raises _RetryLaterError: the next stream resends from the spool.
                self._replace_refused(self._on_refused, reject)
            self._on_content_reject(reject, session)
            return
        if reason in CONTENT_REASONS:
            # The collector could not say which report: nothing safe to drop.
            return
        self._on_curable_reject(reject, reason)

    def _on_curable_reject(self, reject: telemetry_pb2.Reject, reason: str) -> None:
        """Keep every sealed report after what the collector stored; resend from
        there on a new stream. Reports up to ``stored_sequence`` are durably
        stored at the collector: that is an acknowledgement."""
        if reject.HasField("stored_sequence") and reject.stored_sequence > 0:
            self._spool.ack(reject.stored_sequence)
            self._stats.acked_sequence = self._spool.acked_sequence
            self._stats.unacked = self._spool.unacked
        raise _RetryLaterError(
            f"collector answered {reason}: reconnecting later, resending from"
            f" {self._spool.acked_sequence + 1}"
        )

    def _on_content_reject(self, reject: telemetry_pb2.Reject, session: _Session) -> None:
        """The collector will never take these bytes. Today: drop the report.
        (Hook for the spool's owner: re-seal a corrected report at
        ``reject.sequence`` instead, so the chain stays contiguous.)"""
        self._spool.discard(reject.sequence)
        with contextlib.suppress(ValueError):
            session.inflight.remove(reject.sequence)
        self._stats.unacked = self._spool.unacked
        self._wake.set()

    @staticmethod
    def _replace_refused(hook: RefusalHook, reject: telemetry_pb2.Reject) -> None:
        """A content refusal: the hook keeps the bytes as evidence and puts a
        corrected report at the same sequence (``agent.refusal``). Later
        reports on this stream chain onto the refused one, so the stream
        ends here and the next one resends the spool from its start."""
        if reject.HasField("stored_sequence") and reject.stored_sequence >= reject.sequence:
            # The collector says it holds this sequence: replacing it would be
            # equivocation. Keep everything and let the resend sort it out.
            raise _RetryLaterError(
                f"report {reject.sequence} refused ({reject.reason}) but the collector stores"
                f" up to {reject.stored_sequence}: kept, not replaced"
            )
        if hook(reject.sequence, reject.reason, reject.message):
            raise _RetryLaterError(
                f"report {reject.sequence} refused ({reject.reason}) and replaced;"
                " reconnecting to resend from the spool"
            )
        raise _RetryLaterError(
            f"report {reject.sequence} refused ({reject.reason}) and not replaced;"
            " kept for a later resend"
        )

    async def _dispatch(self, envelope: bytes) -> None:
        try:
            await self._on_directive(envelope)
        except Exception:
            log.exception("%s: directive handler failed", self._node_id)
