"""A HALT on a MIG-enabled GPU is effective when its MIG devices are prohibited
and idle: nvml.h lets compute mode be set only on MIG device handles, so the
parent itself never reads PROHIBITED. A real ledger file, reports sealed like
an agent's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
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

KEY = PrivateKey.generate()
PROHIBITED = telemetry_pb2.COMPUTE_MODE_PROHIBITED
DEFAULT = telemetry_pb2.COMPUTE_MODE_DEFAULT


def run(tmp: Path, body: Callable[[Ledger, Sessions], Awaitable[None]]) -> None:
    async def main() -> None:
        ledger = Ledger(tmp / "ledger.db")
        try:
            await body(ledger, Sessions())
        finally:
            await ledger.close()

    asyncio.run(main())


def mig_report(node: Node, modes: tuple[int, int], util: float, receipt: str = "") -> bytes:
    parent = gpu(0, util=None, job=None)
    parent.mig_enabled = True
    parent.compute_mode = telemetry_pb2.COMPUTE_MODE_UNSPECIFIED
    parent.power_limit_watts = 200.0
    gpus = [parent]
    for i, (mode, share) in enumerate(zip(modes, (3 / 7, 4 / 7), strict=True)):
        d = gpu(0, util=None, tensor=util, job=f"j{i}", pid=100 + i)
        d.uuid = f"MIG-{i}"
        d.parent_uuid = parent.uuid
        d.mig_enabled = True
        d.sm_share = share
        d.sm_activity_percent = util
        d.compute_mode = mode  # type: ignore[assignment]
        gpus.append(d)
    rep = node.report(gpus)
    if receipt:
        rep.receipts.add(directive_id=receipt)
    return node.seal(rep)


async def append(ledger: Ledger, agg: Aggregator, node: Node, data: bytes) -> None:
    index = await ledger.append(
        Entry(data, dsse.REPORT_TYPE, node_id=node.node_id, keyid=node.key.keyid)
    )
    rep = telemetry_pb2.NodeReport()
    rep.ParseFromString(dsse.open_envelope(data).payload)
    agg.ingest(rep, index, 0.0)


def test_a_mig_gpu_is_halted_when_its_devices_are(tmp_path: Path) -> None:
    node = Node("a", PrivateKey.generate())

    async def body(ledger: Ledger, sessions: Sessions) -> None:
        agg = Aggregator()
        await append(ledger, agg, node, mig_report(node, (DEFAULT, DEFAULT), 80.0))
        book = DirectiveBook(KEY, ledger, sessions, lease_seconds=10.0)
        tracker = EffectTracker(ledger, agg, timeout_seconds=100.0)
        book.add_commit_listener(tracker_listener(tracker, lambda: 0.0))
        halt = await book.issue(control_pb2.ACTION_HALT, node_scope("a"))
        steps = [
            (mig_report(node, (PROHIBITED, DEFAULT), 0.0, halt.id), False),  # one slice open
            (mig_report(node, (PROHIBITED, PROHIBITED), 50.0, halt.id), False),  # still busy
            (mig_report(node, (PROHIBITED, PROHIBITED), 0.0, halt.id), True),
        ]
        for data, effective in steps:
            await append(ledger, agg, node, data)
            tracker.tick(1.0)
            assert (tracker.progress(halt.id).effective_unix_nanos > 0) is effective

    run(tmp_path, body)
