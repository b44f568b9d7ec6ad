"""Attacks on the directive path: each is refused (typed reason, metric, receipt) and
changes nothing on the node; a replay is acknowledged but never applied twice."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from protos import dsse
from protos.computewatch.v1 import control_pb2, telemetry_pb2
from protos.keys import PrivateKey
from tests.enforce_support import (
    DEFAULT,
    HALT,
    LEASE,
    OTHER,
    RESUME,
    RUNNING,
    SECOND,
    T0,
    TERMINATE,
    Children,
    Clock,
    Rig,
    approval,
    directive,
    only,
    proc_state,
    wait_state,
)

A1, A2, A3 = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
OUTSIDER = PrivateKey.generate()


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    yield c
    c.close()


@pytest.fixture
def rig(tmp_path: Path, children: Children) -> Iterator[Rig]:
    r = Rig(
        tmp_path,
        Clock(),
        PrivateKey.generate(),
        {"4242": (0,), "4243": (1,)},
        children,
        authorities=[A1.public, A2.public, A3.public],
        quorum=2,
    )
    # Something is in force, with counter 10: a RESUME for it is worth forging.
    only(r.send(directive(HALT, counter=10, directive_id="halt-10")))
    r.enforcer.tick()
    assert wait_state(r.pids["4242"], {"T"}) == "T"
    yield r
    r.close()


def sealed(d: control_pb2.Directive, key: PrivateKey) -> bytes:
    return dsse.seal(d, key)


def bad_signature(rig: Rig) -> bytes:
    env = dsse.open_envelope(sealed(directive(HALT, counter=11), rig.collector))
    env.signatures[0].sig = bytes(64)
    return env.SerializeToString()


def swapped_payload(rig: Rig) -> bytes:
    """A genuine envelope whose payload was replaced (a TERMINATE smuggled in)."""
    env = dsse.open_envelope(sealed(directive(HALT, counter=11), rig.collector))
    env.payload = directive(TERMINATE, counter=12).SerializeToString()
    return env.SerializeToString()


def extra_forged_signature(rig: Rig) -> bytes:
    """A genuine signature plus a bad one claiming the collector key: refused as a whole."""
    env = dsse.open_envelope(sealed(directive(HALT, counter=11), rig.collector))
    env.signatures.add(keyid=rig.collector.keyid, sig=b"\x01" * 64)
    return env.SerializeToString()


def resume(rig: Rig, *approvals: bytes, counter: int = 11) -> bytes:
    d = directive(RESUME, counter=counter, resumes_directive_id="halt-10", approvals=approvals)
    return sealed(d, rig.collector)


ATTACKS: list[tuple[str, Callable[[Rig], bytes], str]] = [
    ("garbage", lambda r: b"\x0a\xff\xff\xff\x0f", "decode"),
    ("empty", lambda r: b"", "decode"),
    ("oversize", lambda r: b"\x0a" + b"\x00" * (2 << 20), "oversize"),
    ("forged_by_outsider", lambda r: sealed(directive(HALT, counter=11), OUTSIDER), "unknown_key"),
    ("forged_by_an_authority", lambda r: sealed(directive(HALT, counter=11), A1), "unknown_key"),
    ("bad_signature", bad_signature, "bad_signature"),
    ("swapped_payload", swapped_payload, "bad_signature"),
    ("extra_forged_signature", extra_forged_signature, "bad_signature"),
    (
        "wrong_payload_type_approval",
        lambda r: dsse.seal(control_pb2.Approval(directive_id="halt-10"), r.collector),
        "payload_type",
    ),
    (
        "wrong_payload_type_report",
        lambda r: dsse.seal(telemetry_pb2.NodeReport(node_id="node-a"), r.collector),
        "payload_type",
    ),
    (
        "directive_bytes_under_another_type",
        lambda r: dsse.seal_payload(
            dsse.APPROVAL_TYPE, directive(HALT, counter=11).SerializeToString(), r.collector
        ),
        "payload_type",
    ),
    (
        "expired",
        lambda r: sealed(directive(HALT, counter=11, issued=T0 - 7200 * SECOND), r.collector),
        "expired",
    ),
    (
        "out_of_scope",
        lambda r: sealed(directive(HALT, counter=11, nodes=(OTHER,)), r.collector),
        "out_of_scope",
    ),
    (
        "lease_for_another_node",
        lambda r: sealed(directive(LEASE, counter=1, nodes=(OTHER,)), r.collector),
        "out_of_scope",
    ),
    ("stale_counter", lambda r: sealed(directive(HALT, counter=9), r.collector), "stale_counter"),
    (
        "equal_counter_new_id",
        lambda r: sealed(directive(TERMINATE, counter=10), r.collector),
        "stale_counter",
    ),
    ("resume_without_approvals", resume, "quorum"),
    ("resume_with_one_approval", lambda r: resume(r, approval(A1, "halt-10")), "quorum"),
    (
        "resume_with_one_key_twice",
        lambda r: resume(r, approval(A1, "halt-10", "alice"), approval(A1, "halt-10", "bob")),
        "quorum",
    ),
    (
        "resume_with_an_outsider",
        lambda r: resume(r, approval(A1, "halt-10"), approval(OUTSIDER, "halt-10")),
        "quorum",
    ),
    (
        "resume_with_approvals_for_another_halt",
        lambda r: resume(r, approval(A1, "halt-99"), approval(A2, "halt-99")),
        "quorum",
    ),
    (
        "resume_with_collector_signed_approvals",
        lambda r: resume(r, approval(r.collector, "halt-10"), approval(A1, "halt-10")),
        "quorum",
    ),
    (
        "reserved_local_id",
        lambda r: sealed(
            directive(HALT, counter=11, directive_id="local-lease-expired"), r.collector
        ),
        "invalid_directive",
    ),
]


@pytest.mark.parametrize(("name", "attack", "reason"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_is_refused_and_changes_nothing(
    rig: Rig, name: str, attack: Callable[[Rig], bytes], reason: str
) -> None:
    before = rig.enforcer.record.to_bytes()
    receipts = rig.enforcer.handle(attack(rig))
    r = only(receipts)
    assert r.refused_reason == reason, (name, r)
    assert not r.steps[0].ok
    assert rig.enforcer.verifier.stats.refused[reason] == 1
    # Nothing changed: no counter, no hold, the halt stays, the other GPU runs.
    assert rig.enforcer.record.to_bytes() == before
    assert list(rig.enforcer.state().active_directive_ids) == ["halt-10"]
    assert rig.enforcer.state().highest_directive_counter == 10
    assert wait_state(rig.pids["4242"], {"T"}) == "T"
    assert rig.gpu(0).compute_mode == telemetry_pb2.COMPUTE_MODE_PROHIBITED


def test_a_refused_receipt_names_the_directive_only_when_the_collector_signed_it(
    rig: Rig,
) -> None:
    forged = only(rig.enforcer.handle(sealed(directive(HALT, counter=11, directive_id="f"), A1)))
    assert forged.directive_id == ""
    stale = only(
        rig.enforcer.handle(sealed(directive(HALT, counter=3, directive_id="s"), rig.collector))
    )
    assert (stale.directive_id, stale.directive_counter) == ("s", 3)


def test_a_replayed_halt_after_its_resume_is_acknowledged_but_not_reapplied(rig: Rig) -> None:
    halt = directive(HALT, counter=11, directive_id="halt-11")
    halt_bytes = sealed(halt, rig.collector)
    rig.enforcer.handle(halt_bytes)
    good = resume(rig, approval(A1, "halt-10"), approval(A3, "halt-10"), counter=12)
    assert only(rig.enforcer.handle(good)).steps[0].step == "quorum"
    lift = directive(
        RESUME,
        counter=13,
        resumes_directive_id="halt-11",
        approvals=[approval(A2, "halt-11"), approval(A3, "halt-11")],
    )
    rig.enforcer.handle(sealed(lift, rig.collector))
    assert wait_state(rig.pids["4242"], RUNNING) in RUNNING
    # The attacker replays the old halt and the old resume, byte for byte.
    for old in (halt_bytes, good):
        replay = only(rig.enforcer.handle(old))
        assert replay.steps[0].step == "duplicate"
        assert not replay.refused_reason
    assert rig.enforcer.state().active_directive_ids == []
    assert proc_state(rig.pids["4242"]) in RUNNING
    assert rig.gpu(0).compute_mode == DEFAULT
    assert rig.enforcer.stats.duplicates == 2


def test_a_replay_older_than_the_remembered_ids_is_refused_as_stale(rig: Rig) -> None:
    halt_bytes = sealed(directive(HALT, counter=11, directive_id="old"), rig.collector)
    rig.enforcer.handle(halt_bytes)
    rig.enforcer.record.applied.pop("old")  # forgotten, as after 512 newer directives
    assert only(rig.enforcer.handle(halt_bytes)).refused_reason == "stale_counter"


def test_a_flood_of_garbage_is_counted_but_bounded_in_receipts(rig: Rig) -> None:
    receipts = [r for _ in range(200) for r in rig.enforcer.handle(b"\xff" * 32)]
    assert len(receipts) == 16
    assert rig.enforcer.verifier.stats.refused["decode"] == 200
