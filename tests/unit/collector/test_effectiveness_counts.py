"""Effectiveness over many nodes, reports in any order: a directive is
effective exactly when the last node in scope shows it, never earlier (a node
that showed it and then stopped counts again as missing; a node showing it
twice counts once). A real ledger file, reports sealed like an agent's."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from collector.accounting.aggregate import Aggregator
from collector.nodes.sessions import Sessions
from collector.stop.directives import DirectiveBook
from collector.stop.effectiveness import EffectTracker, tracker_listener
from collector.store.ledger import Entry, Ledger
from protos import dsse
from protos.computewatch.v1 import control_pb2, telemetry_pb2
from protos.keys import PrivateKey
from tests.stop_support import node_scope
from tests.support import Node, gpu

NODES = 40
PROHIBITED = telemetry_pb2.COMPUTE_MODE_PROHIBITED
DEFAULT = telemetry_pb2.COMPUTE_MODE_DEFAULT


def sealed(node: Node, *, halted: bool, receipt: str) -> bytes:
    g = gpu(0, util=0.0 if halted else 90.0)
    g.compute_mode = PROHIBITED if halted else DEFAULT
    rep = node.report([g])
    if receipt:
        rep.receipts.add(directive_id=receipt)
    return node.seal(rep)


def test_many_nodes_in_any_order_are_counted_once_each(tmp_path: Path) -> None:
    rng = random.Random(13)
    nodes = [Node(f"n{i:03d}", PrivateKey.generate()) for i in range(NODES)]

    async def main() -> None:
        ledger = Ledger(tmp_path / "ledger.db")
        agg = Aggregator()

        async def append(node: Node, data: bytes) -> int:
            index = await ledger.append(
                Entry(data, dsse.REPORT_TYPE, node_id=node.node_id, keyid=node.key.keyid)
            )
            rep = telemetry_pb2.NodeReport()
            rep.ParseFromString(dsse.open_envelope(data).payload)
            agg.ingest(rep, index, 0.0)
            return index

        try:
            for node in nodes:
                await append(node, sealed(node, halted=False, receipt=""))
            book = DirectiveBook(PrivateKey.generate(), ledger, Sessions(), lease_seconds=10.0)
            tracker = EffectTracker(ledger, agg, timeout_seconds=100.0)
            book.add_commit_listener(tracker_listener(tracker, lambda: 0.0))
            halt = await book.issue(
                control_pb2.ACTION_HALT, node_scope(*(n.node_id for n in nodes))
            )

            def effective() -> int:
                tracker.tick(1.0)
                return tracker.progress(halt.id).effective_unix_nanos

            order = nodes[:]
            rng.shuffle(order)
            late, flaky, rest = order[0], order[1], order[2:]
            # Every node but ``late`` shows the halt, in random order and in
            # random batches per tick; ``flaky`` shows it twice, then stops.
            for node in [*rest, flaky]:
                await append(node, sealed(node, halted=False, receipt=halt.id))  # receipt only
                if rng.random() < 0.3:
                    assert effective() == 0
                await append(node, sealed(node, halted=True, receipt=""))
                if rng.random() < 0.3:
                    assert effective() == 0
            await append(flaky, sealed(flaky, halted=True, receipt=""))
            await append(flaky, sealed(flaky, halted=False, receipt=""))  # busy again
            assert effective() == 0
            await append(late, sealed(late, halted=True, receipt=halt.id))
            assert effective() == 0  # flaky is missing again
            assert set(tracker.progress(halt.id).receipt_node_ids) == {n.node_id for n in nodes}
            await append(late, sealed(late, halted=True, receipt=""))
            assert effective() == 0
            last = await append(flaky, sealed(flaky, halted=True, receipt=""))
            done = effective()
            stamped = ledger.entries(last, last + 1)[0].received_unix_nanos
            assert done == stamped
            assert tracker.pending() == 0
            assert tracker.stats.effective == 1
        finally:
            await ledger.close()

    asyncio.run(main())
