"""Renew a signed LEASE to every healthy node each interval.

Healthy: connected (a stream bound to the node) and not silent. A silent
node gets no lease, so a fail-closed agent that can still reach us but no
longer reports halts itself when its last lease runs out.

One LEASE covers up to ``batch`` nodes (scope NODE, ``node_ids`` = those
nodes): each is sealed, logged and counted like any directive, so batching
keeps the signatures and ledger rows per interval at ``nodes / batch``
instead of one per node, while every agent still checks ``node_id in
scope.node_ids``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from collector.accounting.aggregate import Aggregator
from collector.nodes.sessions import Sessions
from collector.stop.directives import DirectiveBook, consume_outcome
from protos.computewatch.v1 import control_pb2

log = logging.getLogger(__name__)

DEFAULT_BATCH = 64


@dataclass
class LeaseStats:
    rounds: int = 0
    leases: int = 0
    nodes_last_round: int = 0


class LeaseIssuer:
    """A tick hook: at most one round of leases per ``interval_seconds``."""

    def __init__(
        self,
        book: DirectiveBook,
        sessions: Sessions,
        aggregator: Aggregator,
        *,
        interval_seconds: float,
        batch: int = DEFAULT_BATCH,
        start: float | None = None,
    ) -> None:
        """``start``: unix seconds the first round waits one interval from (None: at once)."""
        if batch < 1:
            raise ValueError(f"lease batch = {batch}: expected at least 1")
        self._book = book
        self._sessions = sessions
        self._agg = aggregator
        self._interval = interval_seconds
        self._batch = batch
        self._last = float("-inf") if start is None else start
        self.stats = LeaseStats()

    def healthy(self, now: float) -> list[str]:
        out = []
        for node_id in self._sessions.connected_nodes():
            state = self._agg.nodes.get(node_id)
            if state is not None and state.reports and not self._agg.is_silent(state, now):
                out.append(node_id)
        return out

    def __call__(self, now: float) -> None:
        # A little slack so a tick that lands a hair early does not skip a round.
        if now - self._last < self._interval * 0.95:
            return
        self._last = now
        nodes = self.healthy(now)
        self.stats.rounds += 1
        self.stats.nodes_last_round = len(nodes)
        for start in range(0, len(nodes), self._batch):
            group = nodes[start : start + self._batch]
            fut = self._book.issue(
                control_pb2.ACTION_LEASE,
                control_pb2.Scope(kind=control_pb2.SCOPE_KIND_NODE, node_ids=group),
                reason="lease renewal",
            )
            fut.add_done_callback(consume_outcome)
            self.stats.leases += 1
