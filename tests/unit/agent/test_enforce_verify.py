"""The directive verification chain: order, counters per class, duplicates, quorum."""

from __future__ import annotations

import pytest

from agent.enforce.state import EnforcementRecord
from agent.enforce.verify import ACTION_CLASS, LEASE_CLASS, DirectiveVerifier
from protos import dsse
from protos.errors import (
    CounterError,
    DecodeError,
    ExpiredError,
    InvalidDirectiveError,
    PayloadTypeError,
    QuorumError,
    ScopeError,
    SignatureError,
    UnknownKeyError,
)
from protos.keys import PrivateKey
from tests.enforce_support import (
    CLUSTER,
    HALT,
    JOB,
    LEASE,
    NODE,
    NODE_SCOPE,
    OTHER,
    RESUME,
    SECOND,
    T0,
    THROTTLE,
    approval,
    directive,
)

COLLECTOR = PrivateKey.generate()
A1, A2, A3 = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()


def verifier(**kw: object) -> DirectiveVerifier:
    return DirectiveVerifier(NODE, COLLECTOR.public, **kw)  # type: ignore[arg-type]


def test_a_sealed_directive_for_this_node_is_accepted() -> None:
    d = directive(counter=3)
    acc = verifier().verify(dsse.seal(d, COLLECTOR), now_ns=T0, seen=EnforcementRecord())
    assert acc.directive == d
    assert not acc.duplicate
    assert acc.counter_class == ACTION_CLASS


def test_the_chain_reports_the_first_failure_in_protocol_order() -> None:
    """An envelope that is forged AND expired AND out of scope fails on the signature."""
    d = directive(nodes=(OTHER,), ttl_seconds=1)
    forged = dsse.seal(d, A1)
    with pytest.raises(UnknownKeyError):
        verifier().verify(forged, now_ns=T0 + 10 * SECOND, seen=EnforcementRecord())
    # Signed, but expired and out of scope: expiry comes first.
    with pytest.raises(ExpiredError):
        verifier().verify(
            dsse.seal(d, COLLECTOR), now_ns=T0 + 10 * SECOND, seen=EnforcementRecord()
        )


def test_expiry_is_checked_against_not_after_on_the_wall_clock() -> None:
    d = directive(ttl_seconds=5)
    v, data = verifier(), dsse.seal(d, COLLECTOR)
    v.verify(data, now_ns=T0 + 5 * SECOND - 1, seen=EnforcementRecord())
    with pytest.raises(ExpiredError, match="expired"):
        v.verify(data, now_ns=T0 + 5 * SECOND, seen=EnforcementRecord())


def test_scope_must_name_this_node_unless_it_is_the_whole_cluster() -> None:
    v = verifier()
    with pytest.raises(ScopeError, match=NODE):
        v.verify(
            dsse.seal(directive(nodes=(OTHER,)), COLLECTOR), now_ns=T0, seen=EnforcementRecord()
        )
    v.verify(
        dsse.seal(directive(kind=CLUSTER, nodes=()), COLLECTOR),
        now_ns=T0,
        seen=EnforcementRecord(),
    )


def test_a_directive_for_another_cluster_is_refused_whatever_its_kind() -> None:
    """One collector key may serve several clusters: a CLUSTER halt of one
    must not halt the others, nor a NODE directive reach a same-named node."""
    west = verifier(cluster="west")
    for kind, nodes in ((CLUSTER, ()), (NODE_SCOPE, (NODE,))):
        for cluster in ("east", ""):
            d = directive(kind=kind, nodes=nodes, cluster=cluster)
            with pytest.raises(ScopeError, match="cluster"):
                west.verify(dsse.seal(d, COLLECTOR), now_ns=T0, seen=EnforcementRecord())
        d = directive(kind=kind, nodes=nodes, cluster="west")
        west.verify(dsse.seal(d, COLLECTOR), now_ns=T0, seen=EnforcementRecord())


def test_counters_are_kept_per_class() -> None:
    rec = EnforcementRecord()
    rec.accept("halt-1", 10, ACTION_CLASS)
    rec.accept("lease-1", 500, LEASE_CLASS)
    v = verifier()
    # A lease far below the action counter is fine: its class is separate.
    v.verify(dsse.seal(directive(LEASE, counter=501), COLLECTOR), now_ns=T0, seen=rec)
    with pytest.raises(CounterError, match="lease"):
        v.verify(dsse.seal(directive(LEASE, counter=500), COLLECTOR), now_ns=T0, seen=rec)
    # An action above the lease counter is not required: 11 > 10 suffices.
    v.verify(dsse.seal(directive(HALT, counter=11), COLLECTOR), now_ns=T0, seen=rec)
    with pytest.raises(CounterError, match="up to 10"):
        v.verify(dsse.seal(directive(HALT, counter=10), COLLECTOR), now_ns=T0, seen=rec)


def test_an_applied_directive_sent_again_is_a_duplicate_not_a_stale_counter() -> None:
    d = directive(counter=4, directive_id="halt-4")
    rec = EnforcementRecord()
    rec.accept("halt-4", 4, ACTION_CLASS)
    rec.accept("halt-9", 9, ACTION_CLASS)
    acc = verifier().verify(dsse.seal(d, COLLECTOR), now_ns=T0, seen=rec)
    assert acc.duplicate
    # Same id, different counter: not a duplicate, and stale.
    other = directive(counter=3, directive_id="halt-4")
    with pytest.raises(CounterError):
        verifier().verify(dsse.seal(other, COLLECTOR), now_ns=T0, seen=rec)


def test_remembered_ids_are_bounded_and_old_ones_fall_back_to_the_counter() -> None:
    rec = EnforcementRecord()
    for i in range(1, 600):
        rec.accept(f"d{i}", i, ACTION_CLASS)
    assert len(rec.applied) == 512
    assert rec.applied_counter("d1") is None
    with pytest.raises(CounterError):
        verifier().verify(
            dsse.seal(directive(counter=1, directive_id="d1"), COLLECTOR),
            now_ns=T0,
            seen=rec,
        )


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"directive_id": "local-lease-expired"}, "reserved"),
        ({"kind": JOB}, "names no job"),
        ({"kind": 9}, "scope kind"),
        ({"ttl_seconds": 0}, "not_after"),
        ({"action": THROTTLE}, "power cap"),
        ({"action": THROTTLE, "power_cap_watts": float("nan")}, "power cap"),
        ({"action": RESUME}, "no directive to lift"),
        ({"action": 42}, "unknown action"),
    ],
)
def test_directives_nothing_can_act_on_are_invalid(fields: dict[str, object], match: str) -> None:
    d = directive(**fields)  # type: ignore[arg-type]
    with pytest.raises(InvalidDirectiveError, match=match):
        verifier().verify(dsse.seal(d, COLLECTOR), now_ns=T0, seen=EnforcementRecord())


def test_signature_failures_are_typed() -> None:
    v = verifier()
    with pytest.raises(DecodeError):
        v.verify(b"\xff\x00garbage", now_ns=T0, seen=EnforcementRecord())
    report_typed = dsse.seal_payload(dsse.REPORT_TYPE, directive().SerializeToString(), COLLECTOR)
    with pytest.raises(PayloadTypeError):
        v.verify(report_typed, now_ns=T0, seen=EnforcementRecord())
    env = dsse.open_envelope(dsse.seal(directive(counter=1), COLLECTOR))
    env.payload = directive(counter=99).SerializeToString()
    with pytest.raises(SignatureError):
        v.verify(env.SerializeToString(), now_ns=T0, seen=EnforcementRecord())


# --- RESUME quorum -------------------------------------------------------------------------
def resume(halt_id: str, *approvals: bytes) -> bytes:
    d = directive(RESUME, counter=5, resumes_directive_id=halt_id, approvals=list(approvals))
    return dsse.seal(d, COLLECTOR)


def test_resume_with_a_quorum_of_distinct_authority_keys_is_accepted() -> None:
    v = verifier(authority_keys=[A1.public, A2.public, A3.public], quorum=2)
    acc = v.verify(
        resume("h1", approval(A1, "h1"), approval(A3, "h1")), now_ns=T0, seen=EnforcementRecord()
    )
    assert set(acc.approval_keyids) == {A1.keyid, A3.keyid}


def test_one_key_twice_counts_once_even_under_two_names() -> None:
    # The same public key configured twice is still one authority.
    v = verifier(authority_keys=[A1.public, A1.public, A2.public], quorum=2)
    with pytest.raises(QuorumError, match="1 distinct"):
        v.verify(
            resume("h1", approval(A1, "h1", "alice"), approval(A1, "h1", "alice-again")),
            now_ns=T0,
            seen=EnforcementRecord(),
        )


@pytest.mark.parametrize("case", ["outsider", "wrong_halt", "none", "garbage", "tampered"])
def test_resume_without_a_valid_quorum_is_refused(case: str) -> None:
    v = verifier(authority_keys=[A1.public, A2.public], quorum=2)
    good = approval(A1, "h1")
    second = {
        "outsider": approval(PrivateKey.generate(), "h1"),
        "wrong_halt": approval(A2, "h-other"),
        "garbage": b"\x00\x01",
        "tampered": _tampered(approval(A2, "h1")),
    }.get(case)
    approvals = [good] if second is None else [good, second]
    with pytest.raises(QuorumError):
        v.verify(resume("h1", *approvals), now_ns=T0, seen=EnforcementRecord())


def _tampered(data: bytes) -> bytes:
    env = dsse.open_envelope(data)
    env.payload = env.payload + b"\x22\x01x"  # append a comment field
    return env.SerializeToString()


def test_with_no_authority_keys_the_collector_signature_suffices() -> None:
    acc = verifier().verify(resume("h1"), now_ns=T0, seen=EnforcementRecord())
    assert acc.approval_keyids == ()


def test_a_quorum_larger_than_the_distinct_keys_is_a_configuration_error() -> None:
    with pytest.raises(QuorumError):
        verifier(authority_keys=[A1.public, A1.public], quorum=2)


def test_check_counts_refusals_per_reason() -> None:
    v = verifier()
    cases = ((b"junk", DecodeError), (dsse.seal(directive(nodes=(OTHER,)), COLLECTOR), ScopeError))
    for data, error in cases:
        with pytest.raises(error):
            v.check(data, now_ns=T0, seen=EnforcementRecord())
    assert v.stats.refused == {"decode": 1, "out_of_scope": 1}
