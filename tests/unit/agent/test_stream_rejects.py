"""What the agent keeps when the collector refuses a report: a refusal that a
resend cures never deletes a sealed report; stored_sequence acknowledges."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.metrics import AgentStats
from agent.spool import Spool
from agent.stream import CONTENT_REASONS, StreamClient, _RetryLaterError, _Session
from protos.computewatch.v1 import telemetry_pb2
from protos.keys import PrivateKey
from tests.support import Node, gpu


def setup(tmp_path: Path, count: int) -> tuple[StreamClient, Spool, _Session]:
    node = Node("node-a", PrivateKey.generate())
    spool = Spool(tmp_path / "state", node_id=node.node_id, keyid=node.key.keyid, max_unacked=100)
    for _ in range(count):
        seq, _prev = spool.next_link()
        spool.append(seq, node.next([gpu(0)]))
    client = StreamClient("127.0.0.1:1", node.node_id, spool, AgentStats())
    session = _Session()
    session.inflight.extend(range(1, count + 1))
    return client, spool, session


@pytest.mark.parametrize(
    "reason", ["gap", "ledger_unavailable", "unknown_node", "broken_chain", "new_reason"]
)
def test_a_curable_refusal_keeps_every_report_after_stored_sequence(
    tmp_path: Path, reason: str
) -> None:
    client, spool, session = setup(tmp_path, 5)
    reject = telemetry_pb2.Reject(sequence=4, reason=reason, stored_sequence=2)
    with pytest.raises(_RetryLaterError, match="resending from 3"):
        client._on_reject(reject, session)
    assert [s for s, _ in spool.pending()] == [3, 4, 5]  # 1-2 are stored: acknowledged
    assert spool.acked_sequence == 2
    spool.close()


def test_a_curable_refusal_without_stored_sequence_keeps_everything(tmp_path: Path) -> None:
    client, spool, session = setup(tmp_path, 3)
    with pytest.raises(_RetryLaterError):
        client._on_reject(telemetry_pb2.Reject(sequence=2, reason="gap"), session)
    assert [s for s, _ in spool.pending()] == [1, 2, 3]
    spool.close()


def test_a_content_refusal_still_drops_that_report(tmp_path: Path) -> None:
    assert "invalid_report" in CONTENT_REASONS
    assert not {"gap", "ledger_unavailable", "unknown_node"} & CONTENT_REASONS
    client, spool, session = setup(tmp_path, 3)
    client._on_reject(
        telemetry_pb2.Reject(sequence=2, reason="invalid_report", stored_sequence=1), session
    )
    assert [s for s, _ in spool.pending()] == [1, 3]
    assert list(session.inflight) == [1, 3]
    spool.close()
