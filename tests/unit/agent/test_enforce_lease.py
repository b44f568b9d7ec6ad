"""Leases on the monotonic clock; fail-closed local halt and lift; fail-open reporting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.enforce.lease import LeaseTracker
from agent.enforce.state import LOCAL_HALT_ID
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import ConfigError
from protos.keys import PrivateKey
from tests.enforce_support import (
    DEFAULT,
    HALT,
    LEASE,
    PROHIBITED,
    RUNNING,
    SECOND,
    Children,
    Clock,
    Rig,
    directive,
    only,
    proc_state,
    wait_state,
)

GRACE = 5.0  # the rig's lease_grace_seconds


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    yield c
    c.close()


def rig_for(tmp: Path, children: Children, fail_mode: str) -> Rig:
    return Rig(tmp, Clock(), PrivateKey.generate(), {"4242": (0,)}, children, fail_mode=fail_mode)


def lease(rig: Rig, counter: int, ttl: float = 10.0) -> list[telemetry_pb2.EnforcementReceipt]:
    d = directive(LEASE, counter=counter, issued=rig.clock.wall_ns, ttl_seconds=ttl)
    return list(rig.send(d))


def test_tracker_measures_validity_from_receipt_on_the_monotonic_clock() -> None:
    t = LeaseTracker("closed", started_at=100.0, grace_seconds=5.0)
    assert t.valid(104.9)
    assert t.should_halt(105.0, locally_halted=False)
    assert not t.should_halt(105.0, locally_halted=True)
    d = directive(LEASE, issued=0, ttl_seconds=10.0)  # issued long ago by the wall clock
    assert t.renew(d, received_at=200.0) == 210.0
    assert t.valid(209.99)
    assert not t.valid(210.0)
    assert t.may_lift(205.0, locally_halted=True)
    with pytest.raises(ConfigError):
        LeaseTracker("ajar", started_at=0.0, grace_seconds=1.0)


def test_fail_closed_halts_locally_when_the_lease_expires_and_a_lease_lifts_it(
    tmp_path: Path, children: Children
) -> None:
    rig = rig_for(tmp_path, children, "closed")
    pid = rig.pids["4242"]
    assert lease(rig, 1, ttl=10.0) == []
    state = rig.enforcer.state()
    assert (state.fail_mode, state.lease_valid, state.locally_halted) == ("closed", True, False)
    rig.clock.advance(9.9)
    assert rig.enforcer.tick() == []
    rig.clock.advance(0.1)
    (r,) = rig.enforcer.tick(snapshot=rig.sample())
    assert r.directive_id == LOCAL_HALT_ID
    assert r.steps[0].step == "lease"
    assert not r.steps[0].ok
    assert wait_state(pid, {"T"}) == "T"
    g0 = rig.gpu(0)
    assert g0.compute_mode == PROHIBITED
    state = rig.enforcer.state()
    assert state.locally_halted
    assert not state.lease_valid
    assert LOCAL_HALT_ID in state.active_directive_ids
    assert g0.uuid in state.halted_gpu_uuids
    assert rig.enforcer.tick() == []  # halted once, not again every tick

    (lift,) = lease(rig, 2)
    assert lift.directive_id == LOCAL_HALT_ID
    assert wait_state(pid, RUNNING) in RUNNING
    assert rig.gpu(0).compute_mode == DEFAULT
    state = rig.enforcer.state()
    assert (state.lease_valid, state.locally_halted) == (True, False)
    assert list(state.active_directive_ids) == []


def test_a_lease_lifts_the_local_halt_but_never_a_collector_halt(
    tmp_path: Path, children: Children
) -> None:
    rig = rig_for(tmp_path, children, "closed")
    halt = directive(HALT, counter=1)
    only(rig.send(halt))
    rig.clock.advance(GRACE)
    (local,) = rig.enforcer.tick()
    assert local.directive_id == LOCAL_HALT_ID
    lease(rig, 1)
    state = rig.enforcer.state()
    assert list(state.active_directive_ids) == [halt.id]
    assert not state.locally_halted
    assert rig.gpu(0).compute_mode == PROHIBITED
    assert wait_state(rig.pids["4242"], {"T"}) == "T"


def test_a_fresh_agent_gets_a_grace_period_before_it_halts(
    tmp_path: Path, children: Children
) -> None:
    rig = rig_for(tmp_path, children, "closed")
    rig.clock.advance(GRACE - 0.1)
    assert rig.enforcer.tick() == []
    assert not rig.enforcer.state().lease_valid  # no lease was ever received
    rig.clock.advance(0.1)
    assert only(rig.enforcer.tick()).directive_id == LOCAL_HALT_ID


def test_fail_open_only_reports_an_invalid_lease(tmp_path: Path, children: Children) -> None:
    rig = rig_for(tmp_path, children, "open")
    lease(rig, 1, ttl=10.0)
    assert rig.enforcer.state().lease_valid
    rig.clock.advance(3600.0)
    assert rig.enforcer.tick(snapshot=rig.sample()) == []
    state = rig.enforcer.state()
    assert (state.fail_mode, state.lease_valid, state.locally_halted) == ("open", False, False)
    assert proc_state(rig.pids["4242"]) in RUNNING
    assert rig.gpu(0).compute_mode == DEFAULT


@pytest.mark.parametrize("jump_seconds", [3600.0, -3600.0])
def test_a_wall_clock_jump_neither_shortens_nor_extends_a_lease(
    tmp_path: Path, children: Children, jump_seconds: float
) -> None:
    rig = rig_for(tmp_path, children, "closed")
    lease(rig, 1, ttl=10.0)
    rig.clock.wall_ns += int(jump_seconds * SECOND)  # only the wall clock jumps
    rig.clock.mono += 9.0
    assert rig.enforcer.tick() == []
    assert rig.enforcer.state().lease_valid
    rig.clock.mono += 1.0
    assert only(rig.enforcer.tick()).directive_id == LOCAL_HALT_ID


def test_an_expired_or_replayed_lease_is_refused_and_does_not_lift(
    tmp_path: Path, children: Children
) -> None:
    rig = rig_for(tmp_path, children, "closed")
    first = directive(LEASE, counter=5, issued=rig.clock.wall_ns, ttl_seconds=10.0)
    rig.send(first)
    rig.clock.advance(10.0)
    assert only(rig.enforcer.tick()).directive_id == LOCAL_HALT_ID
    # The same lease again: it expired by the wall clock, and it is not new.
    (refused,) = rig.send(first)
    assert refused.refused_reason == "expired"
    (stale,) = rig.send(directive(LEASE, counter=4, issued=rig.clock.wall_ns))
    assert stale.refused_reason == "stale_counter"
    assert rig.enforcer.state().locally_halted


def test_a_local_halt_survives_a_restart_until_a_lease_arrives(
    tmp_path: Path, children: Children
) -> None:
    rig = rig_for(tmp_path, children, "closed")
    rig.clock.advance(GRACE)
    rig.enforcer.tick()
    rig.enforcer = rig.open()
    rig.enforcer.restore()
    assert rig.enforcer.state().locally_halted  # even within the new grace period
    assert rig.gpu(0).compute_mode == PROHIBITED
    lease(rig, 1)
    assert not rig.enforcer.state().locally_halted
    assert rig.gpu(0).compute_mode == DEFAULT


def test_switching_to_fail_open_lifts_a_saved_local_halt(
    tmp_path: Path, children: Children
) -> None:
    rig = rig_for(tmp_path, children, "closed")
    rig.clock.advance(GRACE)
    rig.enforcer.tick()
    rig.fail_mode = "open"
    rig.enforcer = rig.open()
    receipts = rig.enforcer.restore()
    assert receipts[-1].directive_id == LOCAL_HALT_ID
    assert not rig.enforcer.state().locally_halted
    assert wait_state(rig.pids["4242"], RUNNING) in RUNNING


def test_the_last_lease_resent_after_a_restart_renews_once(
    tmp_path: Path, children: Children
) -> None:
    rig = rig_for(tmp_path, children, "closed")
    last = directive(LEASE, counter=3, issued=rig.clock.wall_ns, ttl_seconds=60.0)
    rig.send(last)
    rig.clock.advance(11.0)  # past LEASE_SAVE_SECONDS: the tick saves the lease counter
    rig.enforcer.tick()
    rig.enforcer = rig.open()
    rig.enforcer.restore()
    assert rig.send(last) == []
    assert rig.enforcer.state().lease_valid
    rig.clock.advance(30.0)
    assert rig.send(last) == []  # again: no further renewal
    rig.clock.advance(29.9)  # validity runs from the first receipt after the restart
    assert rig.enforcer.tick() == []
    rig.clock.advance(0.1)
    assert only(rig.enforcer.tick()).directive_id == LOCAL_HALT_ID
