"""Logs key events and honours them at once (docs/regulators.md, "Key events").

``nodes enroll``/``revoke``/``handover`` and ``authorities revoke`` queue rows
in ``key_event`` and bump ``key_state.version``. The collector polls that
version (every ``poll_seconds``); on a change it rereads the registry (a
revoked or handed-over key stops verifying there and then) and appends each
pending event to the log, signed by the collector key unless it carries its
own envelope (a handover, signed by the node's old and new key). Ingest calls
``before_admit`` on the event loop before it appends a report: when the
registry changed since the last sweep the events go first, so in the log a
key's enrolment always precedes its reports and no report follows its
revocation. An event is pending while the log holds no key event with the
same payload (found at start from a partial index), so a crash between the
append and anything else never logs it twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector.nodes import keystore
from collector.nodes.registry import Registry
from collector.nodes.sessions import Session
from collector.store.ledger import Entry, Ledger
from collector.store.sql import Location, open_db
from protos import dsse, keylog
from protos.computewatch.v1 import keylog_pb2
from protos.errors import ConfigError, Error
from protos.keys import PrivateKey

log = logging.getLogger(__name__)


# The ``type`` label values of computewatch_collector_key_events_total.
EVENT_NAMES = ("NodeEnrolment", "KeyHandover", "KeyRevocation", "CollectorKeyRotation")


def _introduced_key(payload_type: str, payload: bytes) -> str:
    """Key id of the node key an enrolment or handover payload introduces."""
    if payload_type == keylog.ENROLMENT_TYPE:
        raw = dsse.parse_message(keylog_pb2.NodeEnrolment, payload).public_key
    else:
        raw = dsse.parse_message(keylog_pb2.KeyHandover, payload).new_public_key
    return hashlib.sha256(raw).hexdigest()


def _name(payload_type: str) -> str:
    """``application/vnd.computewatch.NodeEnrolment+protobuf`` -> ``NodeEnrolment``."""
    return payload_type.rsplit(".", 1)[-1].split("+", maxsplit=1)[0]


class KeyLogMetrics(Collector):
    """``computewatch_collector_key_events_total{type}`` and the revoked
    authority keys, computed at scrape time."""

    def __init__(self, keys: KeyLog) -> None:
        self._keys = keys

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "computewatch_collector_key_events",
            "Key events (enrolment, handover, revocation, rotation) appended to the log",
            labels=["type"],
        )
        for name, count in sorted(self._keys.logged_by_type.items()):
            events.add_metric([name], count)
        yield events
        yield GaugeMetricFamily(
            "computewatch_collector_revoked_authority_keys",
            "Authority keys revoked in the log (their approvals no longer count)",
            value=len(self._keys.revoked_authorities),
        )


class KeyLog:
    def __init__(
        self,
        location: Location,
        ledger: Ledger,
        registry: Registry,
        key: PrivateKey,
        *,
        poll_seconds: float = 0.2,
    ) -> None:
        self._ledger = ledger
        self._registry = registry
        self._key = key
        self._poll = poll_seconds
        # The collector's database, read only (its migrations made the index).
        self._read = open_db(location, readonly=True)
        self._logged: set[bytes] = set()
        self._cursor = 0
        self._version = -1
        self._generation = -1
        self.logged_events = 0
        # payload message name -> key events appended by this process
        self.logged_by_type: Counter[str] = Counter(dict.fromkeys(EVENT_NAMES, 0))
        self.revoked_authorities: set[str] = set()
        self._authority_listeners: list[Callable[[str], None]] = []
        self._rescan()
        ledger.add_state_listener(self._ledger_state)
        # Every CollectorKeyRotation in the log, oldest first: sent to each
        # agent when its stream binds, so one configured with an older
        # collector key follows the chain to the current one.
        self.rotations: list[bytes] = [
            d for t, d in self._logged_events() if t == keylog.ROTATION_TYPE
        ]

    def send_rotations(self, session: Session) -> None:
        """Bind hook: the collector key's rotations, before any directive."""
        for data in self.rotations:
            session.send_directive(data)

    def _logged_events(self) -> list[tuple[str, bytes]]:
        """(payload type, envelope) of every committed key event, in log order:
        read through the partial index, never a scan of the log."""
        rows = self._read.execute(
            f"SELECT payload_type, data FROM log WHERE {keystore.KEY_EVENT_FILTER}"  # noqa: S608
            " ORDER BY idx"
        )
        return [(str(t), bytes(d)) for t, d in rows]

    def on_authority_revoked(self, callback: Callable[[str], None]) -> None:
        """``callback(keyid)`` for every revoked authority key, now and from now on."""
        self._authority_listeners.append(callback)
        for keyid in sorted(self.revoked_authorities):
            callback(keyid)

    def _rescan(self) -> None:
        logged = set()
        for _, data in self._logged_events():
            try:
                logged.add(hashlib.sha256(dsse.open_envelope(data).payload).digest())
            except Error as exc:
                log.error("a key event in the log does not open: %s", exc)  # noqa: TRY400
        self._logged = logged
        self._cursor = 0
        self.revoked_authorities |= keystore.retired_authorities(self._read)

    def _ledger_state(self, writable: bool) -> None:
        if writable:  # events appended on top of a failed write are pending again
            self._rescan()
            self._version = -1

    def before_admit(self) -> None:
        """Log pending events if the registry changed since the last sweep."""
        if self._registry.generation != self._generation:
            self.sweep()

    def poll(self) -> None:
        """Reread the registry and log pending events if any key changed."""
        try:
            version = keystore.version(self._read)
        except Error as exc:  # a driver error, typed (collector.store.sql)
            log.warning("cannot read key_state: %s", exc)
            return
        if version != self._version:
            self._registry.reload()
            self.sweep()
            self._version = version

    def sweep(self) -> None:
        """Append every pending key event, in the order it was queued."""
        self._generation = self._registry.generation
        if not self._ledger.writable:
            return
        rows = self._read.execute(
            "SELECT id, payload_type, payload, envelope FROM key_event WHERE id > ? ORDER BY id",
            (self._cursor,),
        )
        for row_id, payload_type, raw, envelope in rows:
            payload = bytes(raw)
            self._cursor = int(row_id)
            digest = hashlib.sha256(payload).digest()
            if digest in self._logged:
                continue
            if envelope is None:
                data = dsse.seal_payload(payload_type, payload, self._key)
            else:
                data = bytes(envelope)
            self._ledger.append(Entry(data, payload_type)).add_done_callback(self._appended)
            self._logged.add(digest)
            self.logged_events += 1
            self.logged_by_type[_name(payload_type)] += 1
            self._retire(payload_type, payload)
            log.info("key event %s queued for the log", _name(payload_type))

    def _appended(self, fut: asyncio.Future[int]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.error("a key event was not logged: %s", fut.exception())

    def _retire(self, payload_type: str, payload: bytes) -> None:
        """The key this event retires signs nothing from here on: in log order,
        no report by it may follow the event just appended."""
        if payload_type == keylog.HANDOVER_TYPE:
            old = dsse.parse_message(keylog_pb2.KeyHandover, payload).old_public_key
            self._registry.retire(hashlib.sha256(old).hexdigest())
            return
        if payload_type == keylog.ENROLMENT_TYPE:
            old = dsse.parse_message(keylog_pb2.NodeEnrolment, payload).replaces_public_key
            if old:
                self._registry.retire(hashlib.sha256(old).hexdigest())
            return
        if payload_type != keylog.REVOCATION_TYPE:
            return
        msg = dsse.parse_message(keylog_pb2.KeyRevocation, payload)
        keyid = hashlib.sha256(msg.public_key).hexdigest()
        if msg.role != keylog_pb2.KEY_ROLE_AUTHORITY:
            self._registry.retire(keyid)
            return
        self.revoked_authorities.add(keyid)
        for cb in self._authority_listeners:
            cb(keyid)

    def backfill(self) -> int:
        """Log an enrolment for every enrolled node whose key no key event in
        the log introduced (a ledger enrolled before key events existed), so
        the record names every key. Returns how many were queued."""
        types = (keylog.ENROLMENT_TYPE, keylog.HANDOVER_TYPE)
        logged = [(t, d) for t, d in self._logged_events() if t in types]
        queued_rows = self._read.execute(
            "SELECT payload_type, payload FROM key_event WHERE payload_type IN (?, ?)", types
        )
        introduced = {
            _introduced_key(t, dsse.open_envelope(bytes(d)).payload) for t, d in logged
        } | {_introduced_key(t, bytes(p)) for t, p in queued_rows}
        queued = 0
        for node_id in self._registry.node_ids():
            node = self._registry.by_node(node_id)
            if node is None or node.key.keyid in introduced:
                continue
            event = keylog_pb2.NodeEnrolment(
                node_id=node_id,
                public_key=node.key.raw(),
                enrolled_unix_nanos=node.enrolled_unix_nanos,
            )
            data = dsse.seal(event, self._key)
            self._ledger.append(Entry(data, keylog.ENROLMENT_TYPE)).add_done_callback(
                self._appended
            )
            self._logged.add(hashlib.sha256(event.SerializeToString()).digest())
            self.logged_by_type["NodeEnrolment"] += 1
            queued += 1
        if queued:
            log.warning("logged %d enrolments made before key events existed", queued)
        return queued

    async def rotate_from(self, old: PrivateKey) -> int | None:
        """Announce this collector's key under ``old`` (a ``CollectorKeyRotation``
        signed by both), unless the log already rotated to it. Returns the
        entry's index, or None when nothing was needed."""
        current: str | None = None
        for data in self.rotations:
            msg = dsse.parse_message(
                keylog_pb2.CollectorKeyRotation, dsse.open_envelope(bytes(data)).payload
            )
            current = hashlib.sha256(msg.new_public_key).hexdigest()
        if current == self._key.keyid:
            log.info("the log already announced collector key %s", current[:16])
            return None
        if current is not None and current != old.keyid:
            raise ConfigError(
                f"previous key {old.keyid[:16]} is not the log's current collector key"
                f" {current[:16]}"
            )
        data = keylog.rotation(old, self._key, time.time_ns())
        index = await self._ledger.append(Entry(data, keylog.ROTATION_TYPE))
        self.rotations.append(data)
        log.warning(
            "collector key rotated: %s -> %s (entry %d)",
            old.keyid[:16],
            self._key.keyid[:16],
            index,
        )
        return index

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            self.poll()
            await asyncio.sleep(self._poll)

    def close(self) -> None:
        self._read.close()
