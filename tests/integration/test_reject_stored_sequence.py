"""Every refusal the collector can attribute to a key says what it stored for
that key (``Reject.stored_sequence``); a ``gap`` means resend from there + 1.
And a commit that fails is answered, not just a closed stream."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from protos.computewatch.v1 import telemetry_pb2
from protos.keys import PrivateKey
from tests.support import Node, StreamClient, collector_config, enroll_nodes, gpu, running_collector


async def next_reject(client: StreamClient) -> telemetry_pb2.Reject:
    for _ in range(20):
        msg = await client.receive()
        if msg.HasField("reject"):
            return msg.reject
    raise AssertionError("no reject arrived")


def test_rejects_carry_the_stored_sequence(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    (node,) = enroll_nodes(config.ledger, ["node-a"])
    stranger = Node("node-x", PrivateKey.generate())

    async def scenario() -> None:
        async with running_collector(config) as service:
            client = StreamClient(service.address)
            for _ in range(2):
                await client.send(node.next([gpu(0)]))
            await client.ack_for(2)
            node.next([gpu(0)])  # sequence 3: sealed, never sent
            await client.send(node.next([gpu(0)]))  # 4: a gap
            gap = await next_reject(client)
            assert (gap.reason, gap.sequence, gap.stored_sequence) == ("gap", 4, 2)
            future = node.report([gpu(0)], sample_ns=time.time_ns() + 3600 * 10**9)
            await client.send(node.seal(future, advance=False))
            bad = await next_reject(client)
            assert bad.reason == "invalid_report"
            assert bad.HasField("stored_sequence")
            assert bad.stored_sequence == 2
            await client.close()
            other = StreamClient(service.address)
            await other.send(stranger.next([gpu(0)]))
            unknown = await next_reject(other)
            assert unknown.reason == "unknown_node"
            assert not unknown.HasField("stored_sequence")  # no key to attribute it to
            await other.close()

    asyncio.run(scenario())


def test_a_failed_commit_is_answered_with_ledger_unavailable(tmp_path: Path) -> None:
    config = collector_config(tmp_path)
    (node,) = enroll_nodes(config.ledger, ["node-a"])
    gpus = [gpu(i, job=f"job-{i}") for i in range(48)]  # several pages per report

    async def scenario() -> None:
        async with running_collector(config) as service:
            client = StreamClient(service.address)
            await client.send(node.next(gpus))
            await client.ack_for(1)
            await service.ledger.limit_pages(await service.ledger.page_count())
            await client.send(node.next(gpus))
            reject = await next_reject(client)
            assert (reject.reason, reject.sequence, reject.stored_sequence) == (
                "ledger_unavailable",
                2,
                1,
            )
            await client.close()
            await service.ledger.limit_pages(1 << 30)
            for _ in range(500):
                if service.ledger.writable:
                    break
                await asyncio.sleep(0.01)
            again = StreamClient(service.address)
            await again.send(node.sent[1])  # the same bytes
            assert (await again.ack_for(2)).sequence == 2
            await again.close()
            assert service.ledger.evidence_count() == 0

    asyncio.run(scenario())
