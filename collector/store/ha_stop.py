"""The leader's side of the stop protocol in high availability: leases, manual
halts and quorum resumes, on a directive book that follows the store.

Every candidate builds the same ``DirectiveBook``, ``EffectTracker`` and
``ControlServicer`` (``collector.stop_wiring`` does the same for one
collector); only the leader's ledger accepts, so a standby refuses halts and
approvals (``ledger_unavailable``) and issues nothing. Whenever this collector
(re)gains the lead, ``catch_up`` first replays every directive and Control
submission committed since its last replay, in log order: lease and action
counters keep rising, a halt in force stays in force, approvals collected by
the old leader count, and ``resume_ready`` issues a RESUME whose quorum was
reached before the failover.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from collector.aggregate import Aggregator
from collector.control_service import ControlServicer
from collector.directives import DirectiveBook
from collector.effectiveness import EffectTracker
from collector.leases import LeaseIssuer
from collector.scoping import ScopeResolver
from collector.sessions import Sessions
from collector.store.sequencer import StoreLedger
from protos import dsse
from protos.keys import PrivateKey, PublicKey

log = logging.getLogger(__name__)

_CONTROL_TYPES = frozenset({dsse.APPROVAL_TYPE, dsse.MANUAL_HALT_TYPE, dsse.EVALUATION_TYPE})
_PAGE = 1024


class HaStop:
    """Leases and, with authorities, Control; replayed from the store on each takeover."""

    def __init__(
        self,
        key: PrivateKey,
        ledger: StoreLedger,
        sessions: Sessions,
        aggregator: Aggregator,
        *,
        agent_lease_seconds: float,
        interval_seconds: float,
        authorities: Mapping[str, PublicKey],
        quorum: int,
        node_ids: Callable[[], list[str]],
        cluster: str = "default",
    ) -> None:
        self._ledger = ledger
        self.book = DirectiveBook(
            key, ledger, sessions, lease_seconds=agent_lease_seconds, cluster=cluster
        )
        self.issuer = LeaseIssuer(
            self.book, sessions, aggregator, interval_seconds=interval_seconds
        )
        self.control: ControlServicer | None = None
        if authorities:
            tracker = EffectTracker(ledger, aggregator, timeout_seconds=10.0)
            self.control = ControlServicer(
                self.book,
                ledger,
                ScopeResolver(aggregator, node_ids),
                authorities,
                quorum=quorum,
                ingest_evaluation=aggregator.ingest_evaluation,
                progress=tracker.progress,
            )
        self._sessions = sessions
        self._aggregator = aggregator
        self._interval = interval_seconds
        self._replayed = 0
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[list[str]]] = set()
        ledger.add_state_listener(self._ledger_state)
        if ledger.writable:
            self.catch_up()

    def _ledger_state(self, writable: bool) -> None:
        if not writable:
            return
        self.catch_up()  # a new leader: what the others signed comes first
        if self.control is not None:
            task = asyncio.get_running_loop().create_task(self.control.resume_ready())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def catch_up(self) -> int:
        """Replay every directive and submission committed since the last replay
        (``Counters.observe`` keeps the maximum; records are keyed by id)."""
        size = self._ledger.size
        replayed = 0
        for start in range(self._replayed, size, _PAGE):
            for entry in self._ledger.entries(start, min(size, start + _PAGE)):
                if entry.payload_type == dsse.DIRECTIVE_TYPE:
                    self.book.restore(entry)
                elif entry.payload_type in _CONTROL_TYPES and self.control is not None:
                    self.control.restore(entry)
                else:
                    continue
                replayed += 1
        self._replayed = size
        if replayed:
            log.info("replayed %d stop-protocol entries up to index %d", replayed, size)
        return replayed

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval / 4)
            if self._ledger.writable:
                now = time.time()
                self.issuer(now)
                self.reconcile(now)

    def reconcile(self, now: float) -> None:
        """Re-send what a node's reports show it missed (a RESUME pushed while it
        was reconnecting to the new leader), as ``collector.stop_wiring`` does."""
        for node_id in self._sessions.connected_nodes():
            state = self._aggregator.nodes.get(node_id)
            if state is not None and state.enforcement.active_directive_ids:
                self.book.reconcile(node_id, state.enforcement.active_directive_ids, now)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
