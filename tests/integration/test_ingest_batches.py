"""Several envelopes in one AgentMessage (issue 13): each is verified,
admitted and acknowledged or rejected as if it came alone; a message over the
announced limits is refused; an agent's backlog goes up in batches after a
reconnect and nothing is lost or stored twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from prometheus_client import generate_latest

from agent.stream import MAX_ENVELOPES_PER_MESSAGE, message_groups
from tests.integration.test_agent_stream import FakeAgent, fixed_port_config, ledger_rows, until
from tests.support import StreamClient, collector_config, enroll_nodes, gpu, running_collector


def _forged(envelope: bytes) -> bytes:
    """``envelope`` with one bit of its signature flipped (the signature is last)."""
    return envelope[:-1] + bytes([envelope[-1] ^ 1])


def test_a_forged_envelope_in_a_batch_is_rejected_and_the_others_accepted(
    tmp_path: Path,
) -> None:
    config = collector_config(tmp_path)
    (node,) = enroll_nodes(config.ledger, ["node-a"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            client = StreamClient(service.address)
            first = [node.next([gpu(0, job="j")]) for _ in range(2)]
            third = node.next([gpu(0, job="j")])
            fourth = node.next([gpu(0, job="j")])
            await client.send_batch([*first, _forged(third), third, fourth])
            rejects, ack = [], None
            while ack is None or ack.sequence < 4:
                msg = await client.receive()
                if msg.HasField("reject"):
                    rejects.append(msg.reject)
                elif msg.HasField("ack"):
                    ack = msg.ack
            assert [r.reason for r in rejects] == ["bad_signature"]
            assert service.ingestor.stats.rejected == {"bad_signature": 1}
            assert service.ingestor.stats.accepted == 4
            text = generate_latest(service.metrics_registry).decode()
            assert 'computewatch_collector_rejected_total{reason="bad_signature"} 1.0' in text
            await client.close()
        assert ledger_rows(config.ledger) == [("node-a", s) for s in range(1, 5)]

    asyncio.run(scenario())


@pytest.mark.parametrize("over", ["count", "bytes"])
def test_a_message_over_the_announced_limits_is_refused(tmp_path: Path, over: str) -> None:
    limit_bytes = 2048 if over == "bytes" else 1 << 20
    config = collector_config(tmp_path, max_envelope_bytes=limit_bytes)
    (node,) = enroll_nodes(config.ledger, ["node-a"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            client = StreamClient(service.address)
            hello = await client.receive_raw()
            limit = hello.challenge.max_envelopes_per_message
            assert limit >= 2
            assert hello.challenge.max_message_bytes == limit_bytes
            # Over one limit, within gRPC's own (a few times the envelope limit).
            count = (
                limit + 1
                if over == "count"
                else limit_bytes // len(node.seal(node.report([gpu(0)]), advance=False)) + 2
            )
            envelopes = [node.next([gpu(0)]) for _ in range(count)]
            await client.send_batch(envelopes)
            msg = await client.receive()
            assert msg.reject.reason == "oversize"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.receive()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert service.ingestor.stats.rejected == {"oversize": 1}
            assert service.ingestor.stats.accepted == 0
            await client.close()
        assert ledger_rows(config.ledger) == []

    asyncio.run(scenario())


def test_message_groups_keep_order_and_both_bounds() -> None:
    pending = [(i, bytes(100 if i != 5 else 900)) for i in range(1, 11)]
    groups = message_groups(pending, 3, 350)
    assert [s for g in groups for s, _ in g] == list(range(1, 11))
    assert all(len(g) <= 3 for g in groups)
    # Together at most 350 bytes, except an envelope too large for any message.
    assert all(sum(len(e) for _, e in g) <= 350 or len(g) == 1 for g in groups)
    assert [len(g) for g in groups] == [3, 1, 1, 3, 2]
    assert message_groups(pending, 1, 10_000) == [[p] for p in pending]


def test_a_backlog_goes_up_in_batches_after_a_reconnect_and_nothing_is_lost_or_doubled(
    tmp_path: Path,
) -> None:
    config = fixed_port_config(tmp_path)
    nodes = enroll_nodes(config.ledger, ["node-a", "node-b"])

    async def scenario() -> None:
        stop = asyncio.Event()
        async with running_collector(config) as service:
            agents = [FakeAgent(n, tmp_path / n.node_id, service.address) for n in nodes]
            tasks = [asyncio.create_task(a.client.run(stop)) for a in agents]
            for a in agents:
                a.seal(3)
            await until(lambda: all(a.spool.acked_sequence == 3 for a in agents))
        # Collector down: a backlog piles up in the spools.
        for a in agents:
            a.seal(150)
        await until(lambda: not any(a.stats.stream_connected for a in agents))
        sent_before = [(a.stats.envelopes_sent, a.stats.messages_sent) for a in agents]
        async with running_collector(config) as service:
            await until(lambda: all(a.spool.acked_sequence == 153 for a in agents), 60)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            assert service.ingestor.stats.rejected == {}
        for a, (envelopes, messages) in zip(agents, sent_before, strict=True):
            assert not a.stats.rejected
            resent = a.stats.envelopes_sent - envelopes
            assert resent >= 150
            # In batches: far fewer messages than envelopes.
            assert a.stats.messages_sent - messages <= resent // 2
            a.spool.close()
        rows = ledger_rows(config.ledger)
        assert len(rows) == len(set(rows)) == 2 * 153
        assert sorted(rows) == sorted((n.node_id, s) for n in nodes for s in range(1, 154))
        assert MAX_ENVELOPES_PER_MESSAGE > 1

    asyncio.run(scenario())
