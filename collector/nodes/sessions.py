"""Open agent streams: who is connected, and a bounded outbox for each.

An outbox holds messages, or frames: a ``CollectorMessage`` already
serialised (``directive_frame``). A directive to many streams is serialised
once and the same bytes are queued on each (the telemetry service's response
serializer passes bytes through as they are).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from protos.computewatch.v1 import telemetry_pb2

log = logging.getLogger(__name__)

# What an outbox holds: a message, a serialised message, or the end marker.
Outgoing = telemetry_pb2.CollectorMessage | bytes


def directive_frame(envelope: bytes) -> bytes:
    """The serialised ``CollectorMessage`` carrying a directive envelope."""
    return telemetry_pb2.CollectorMessage(directive=envelope).SerializeToString()


class Session:
    """One agent's ``Telemetry.Stream``. Bound to a node only by a proof of
    possession of its key over this stream's challenge (``collector.telemetry.binding``)."""

    def __init__(self, peer: str, max_outbox: int = 4096) -> None:
        self.peer = peer
        self.node_id: str | None = None
        # This stream's challenge until a proof answers it (``collector.telemetry.binding``).
        self.challenge = b""
        # The node of the first report accepted on the stream: one stream
        # carries one node's reports, but reports bind nothing (replayable).
        self.report_node: str | None = None
        self._out: asyncio.Queue[Outgoing | None] = asyncio.Queue(max_outbox)
        self.overflowed = False

    def send(self, msg: Outgoing) -> bool:
        """Queue ``msg`` (or a frame); a peer that stopped reading is cut off,
        not waited for."""
        if self.overflowed:
            return False
        try:
            self._out.put_nowait(msg)
        except asyncio.QueueFull:
            self.overflowed = True
            log.warning("stream from %s (%s) is not reading; closing it", self.peer, self.node_id)
            self.close()
            return False
        return True

    def send_directive(self, envelope: bytes) -> bool:
        return self.send(directive_frame(envelope))

    def close(self) -> None:
        """End the response stream (the sentinel may exceed the bound)."""
        try:
            self._out.put_nowait(None)
        except asyncio.QueueFull:
            # Drop one queued message to make room for the end marker.
            self._out.get_nowait()
            self._out.put_nowait(None)

    async def next(self) -> Outgoing | None:
        return await self._out.get()


class Sessions:
    """node id -> open sessions (a reconnecting agent may briefly have two)."""

    def __init__(self) -> None:
        self._by_node: dict[str, set[Session]] = {}
        self.opened = 0

    def bind(self, session: Session, node_id: str) -> None:
        session.node_id = node_id
        self._by_node.setdefault(node_id, set()).add(session)

    def remove(self, session: Session) -> None:
        if session.node_id is None:
            return
        group = self._by_node.get(session.node_id)
        if group is not None:
            group.discard(session)
            if not group:
                del self._by_node[session.node_id]

    def for_node(self, node_id: str) -> Iterator[Session]:
        return iter(tuple(self._by_node.get(node_id, ())))

    def connected_nodes(self) -> list[str]:
        return sorted(self._by_node)

    def __len__(self) -> int:
        # A copy: the metrics thread counts while the event loop binds streams.
        return sum(len(g) for g in list(self._by_node.values()))
