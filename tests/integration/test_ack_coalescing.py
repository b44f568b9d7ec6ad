"""A stream that sends as fast as it can gets a few cumulative acks, not one
per report; every report is still committed before the ack that covers it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from tests.support import StreamClient, collector_config, enroll_nodes, gpu, running_collector


def test_a_busy_stream_is_acknowledged_in_a_few_cumulative_acks(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    (node,) = enroll_nodes(config.ledger, ["node-a"])
    envelopes = [node.next([gpu(0)]) for _ in range(300)]

    async def scenario() -> None:
        async with running_collector(config) as service:
            client = StreamClient(service.address)
            for data in envelopes:
                await client.send(data)
            acks = []
            while not acks or acks[-1].sequence < 300:
                msg = await client.receive()
                assert msg.HasField("ack"), msg
                acks.append(msg.ack)
            await client.close()
            assert [a.sequence for a in acks] == sorted({a.sequence for a in acks})
            assert len(acks) < 100
            conn = sqlite3.connect(config.ledger)
            (stored,) = conn.execute("SELECT COUNT(*) FROM log WHERE node_id = 'node-a'").fetchone()
            conn.close()
            assert stored == 300
            assert service.ingestor.stats.accepted == 300

    asyncio.run(scenario())


def test_a_report_after_a_quiet_spell_is_acknowledged_at_once(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    (node,) = enroll_nodes(config.ledger, ["node-a"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            client = StreamClient(service.address)
            await client.send(node.next([gpu(0)]))
            assert (await client.ack_for(1)).sequence == 1
            await asyncio.sleep(0.2)  # longer than the ack interval
            await client.send(node.next([gpu(0)]))
            ack = await client.ack_for(2, timeout=5.0)
            assert ack.sequence == 2
            assert ack.log_index > 0
            await client.close()
            assert service.ingestor.stats.accepted == 2

    asyncio.run(scenario())
