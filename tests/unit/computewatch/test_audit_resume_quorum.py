"""An auditor checks, from the log alone, that every RESUME carries its quorum.

A RESUME lifts a halt only with approvals of that halt from ``resume_quorum``
distinct authority keys; the auditor verifies each nested approval envelope
itself (the collector's word is not enough), counting keys, not envelopes.
"""

from __future__ import annotations

import pytest

from computewatch.audit.entries import EntryChecker
from computewatch.audit.trust import Trust
from protos import dsse
from protos.computewatch.v1 import control_pb2
from protos.errors import QuorumError
from protos.keys import PrivateKey

COLLECTOR = PrivateKey.generate()
ALICE = PrivateKey.generate()
BOB = PrivateKey.generate()
OUTSIDER = PrivateKey.generate()  # signs well, but is no authority


def approval(key: PrivateKey, directive_id: str = "halt-1") -> bytes:
    return dsse.seal(
        control_pb2.Approval(directive_id=directive_id, approved_unix_nanos=1, authority="x"), key
    )


def checker(quorum: int) -> EntryChecker:
    trust = Trust(
        COLLECTOR.public,
        {},
        {k.public.keyid: k.public for k in (ALICE, BOB)},
        resume_quorum=quorum,
    )
    c = EntryChecker(trust)
    halt = control_pb2.Directive(id="halt-1", counter=1, action=control_pb2.ACTION_HALT)
    c.check(0, dsse.seal(halt, COLLECTOR))
    return c


def resume(*approvals: bytes, lifts: str = "halt-1") -> bytes:
    directive = control_pb2.Directive(
        id="resume-1",
        counter=2,
        action=control_pb2.ACTION_RESUME,
        resumes_directive_id=lifts,
        approvals=list(approvals),
    )
    return dsse.seal(directive, COLLECTOR)


def test_two_distinct_authorities_reach_a_quorum_of_two() -> None:
    c = checker(2)
    c.check(1, resume(approval(ALICE), approval(BOB)))
    assert c.directive_counter == 2


@pytest.mark.parametrize(
    "approvals",
    [
        pytest.param((), id="none"),
        pytest.param((approval(ALICE),), id="one key"),
        pytest.param((approval(ALICE), approval(ALICE)), id="one key twice"),
        pytest.param((approval(ALICE), approval(OUTSIDER)), id="a non-authority key"),
        pytest.param((approval(ALICE), approval(BOB, "halt-2")), id="an approval of another halt"),
        pytest.param((approval(ALICE), approval(BOB)[:-3] + b"xyz"), id="a tampered approval"),
    ],
)
def test_a_resume_short_of_the_quorum_is_a_finding(approvals: tuple[bytes, ...]) -> None:
    c = checker(2)
    with pytest.raises(QuorumError, match="entry 1: RESUME resume-1 of halt-1"):
        c.check(1, resume(*approvals))


def test_the_default_quorum_of_one_still_needs_a_valid_approval() -> None:
    checker(1).check(1, resume(approval(BOB)))
    with pytest.raises(QuorumError, match="0 distinct authority"):
        checker(1).check(1, resume(approval(OUTSIDER)))


def test_a_resume_that_names_no_halt_is_a_finding() -> None:
    with pytest.raises(QuorumError, match="names no halt"):
        checker(1).check(1, resume(approval(ALICE), lifts=""))


def test_a_revoked_authority_does_not_count() -> None:
    c = checker(2)
    del c.keys.authorities[BOB.public.keyid]  # as a revocation in the log does
    with pytest.raises(QuorumError, match="1 distinct authority"):
        c.check(1, resume(approval(ALICE), approval(BOB)))
