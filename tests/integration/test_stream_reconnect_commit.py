"""An agent that reconnects while its report's commit is still under way.

Over real loopback gRPC into a real collector: the old stream ends while its
ack pump awaits the commit of report 2 (the ledger writer waits for a SQLite
write lock another connection holds, as a backup would), and the agent resends
report 2 on its new stream. The old stream's end must not cancel the commit
everyone shares: the new stream is acknowledged, the report is aggregated, and
another node whose link was in flight at that moment is never told ``gap``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

from tests.support import StreamClient, collector_config, enroll_nodes, gpu, running_collector


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):  # bounded: 500 x 10 ms
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting until {what}")


def test_resend_on_a_new_stream_is_acked_when_the_old_stream_ended_mid_commit(
    tmp_path: Path,
) -> None:
    config = collector_config(tmp_path)
    node, other = enroll_nodes(config.ledger, ["node-a", "node-b"])
    reports = [node.next([gpu(0, job="train")]) for _ in range(3)]
    others = [other.next([gpu(0, job="eval")]) for _ in range(3)]

    async def scenario() -> None:
        async with running_collector(config) as service:
            ingestor = service.ingestor
            old, peer = StreamClient(service.address), StreamClient(service.address)
            await old.send(reports[0])
            await peer.send(others[0])
            await old.ack_for(1)
            await peer.ack_for(1)
            lock = sqlite3.connect(config.ledger, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")  # the ledger writer now waits (busy_timeout)
            try:
                await old.send(reports[1])
                await peer.send(others[1])
                await _until(
                    lambda: (
                        ingestor.chains.head(node.key.public.keyid)[0] == 2
                        and ingestor.chains.head(other.key.public.keyid)[0] == 2
                    ),
                    "both second reports are admitted",
                )
                # The agent goes away; the collector ends the old stream while
                # its ack pump awaits report 2's commit.
                old.call.cancel()
                await _until(
                    lambda: list(service.sessions.for_node("node-a")) == [], "the old stream ended"
                )
                # Node b's next link chains onto its report 2, still in flight.
                await peer.send(others[2])
                await _until(
                    lambda: ingestor.chains.head(other.key.public.keyid)[0] == 3,
                    "node b's third report is admitted as its next link",
                )
                new = StreamClient(service.address)
                await new.send(reports[1])  # resent from acked + 1
                await _until(lambda: ingestor.stats.replayed == 1, "the resend is admitted")
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            assert (await new.ack_for(2)).sequence == 2
            await new.send(reports[2])
            assert (await new.ack_for(3)).sequence == 3
            assert (await peer.ack_for(3)).sequence == 3
            assert dict(ingestor.stats.rejected) == {}
            assert ingestor.stats.accepted == 6
            assert service.aggregator.nodes["node-a"].reports == 3
            assert service.aggregator.nodes["node-b"].reports == 3
            for client in (old, peer, new):
                await client.close()

    asyncio.run(scenario())
    conn = sqlite3.connect(config.ledger)
    rows = conn.execute(
        "SELECT node_id, sequence FROM log WHERE sequence IS NOT NULL ORDER BY node_id, sequence"
    ).fetchall()  # reports only: the log also holds the nodes' enrolments
    conn.close()
    assert rows == [(n, s) for n in ("node-a", "node-b") for s in (1, 2, 3)]
