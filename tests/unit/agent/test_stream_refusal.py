"""The stream client's content-refusal branch: it replaces a refused report
only when the collector cannot be holding that sequence."""

from __future__ import annotations

import pytest

from agent.refusal import CONTENT_REASONS
from agent.stream import RETRY_REASONS, StreamClient, _RetryLaterError
from protos.computewatch.v1 import telemetry_pb2


def test_content_and_retry_reasons_are_disjoint_and_explicit() -> None:
    assert not CONTENT_REASONS & RETRY_REASONS
    assert {"invalid_report", "oversize", "wrong_key"} <= CONTENT_REASONS
    # Chain answers are never content refusals: replacing would be equivocation.
    assert not CONTENT_REASONS & {"gap", "replay", "rollback", "equivocation", "broken_chain"}


@pytest.mark.parametrize(("stored", "replaced"), [(None, True), (4, True), (5, False), (9, False)])
def test_a_sequence_the_collector_stores_is_never_replaced(
    stored: int | None, replaced: bool
) -> None:
    calls: list[tuple[int, str, str]] = []

    def hook(sequence: int, reason: str, message: str) -> bool:
        calls.append((sequence, reason, message))
        return True

    reject = telemetry_pb2.Reject(sequence=5, reason="invalid_report", message="bad")
    if stored is not None:
        reject.stored_sequence = stored
    with pytest.raises(_RetryLaterError) as caught:
        StreamClient._replace_refused(hook, reject)
    assert calls == ([(5, "invalid_report", "bad")] if replaced else [])
    assert ("and replaced" in str(caught.value)) is replaced
