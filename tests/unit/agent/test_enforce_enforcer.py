"""HALT, RESUME, THROTTLE, TERMINATE on fake GPUs (real backend) and real processes."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.enforce.enforcer import MAX_REFUSAL_RECEIPTS
from agent.enforce.metrics import register_enforcement_metrics
from protos.computewatch.v1 import telemetry_pb2
from protos.keys import PrivateKey
from protos.reasons import DIRECTIVE_REFUSAL_REASONS
from tests.enforce_support import (
    DEFAULT,
    GPU,
    HALT,
    JOB,
    PROHIBITED,
    RESUME,
    RUNNING,
    STUBBORN,
    TERMINATE,
    THROTTLE,
    Children,
    Clock,
    Rig,
    directive,
    only,
    proc_state,
    steps,
    wait_state,
)


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    yield c
    c.close()


MakeRig = Callable[..., Rig]


@pytest.fixture
def make_rig(tmp_path: Path, children: Children) -> Iterator[MakeRig]:
    rigs: list[Rig] = []

    def make(jobs: dict[str, tuple[int, ...]] | None = None, **kw: object) -> Rig:
        rig = Rig(
            tmp_path,
            Clock(),
            PrivateKey.generate(),
            jobs if jobs is not None else {"4242": (0,), "4243": (1,)},
            children,
            **kw,  # type: ignore[arg-type]
        )
        rigs.append(rig)
        return rig

    yield make
    for r in rigs:
        r.close()


def test_node_halt_prohibits_stops_and_caps_then_resume_undoes_exactly_that(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    a, b = rig.pids["4242"], rig.pids["4243"]
    before = rig.sample()
    assert all(g.utilization_gpu_percent > 50 for g in before.gpus)
    halt = directive(HALT, counter=1)
    r = only(rig.send(halt))
    assert r.directive_id == halt.id
    assert r.directive_counter == 1
    assert not r.refused_reason
    assert all(s.ok for s in r.steps), r
    u0, u1 = (g.uuid for g in before.gpus)
    # Compute mode first, then the processes, then the power caps.
    assert [s.step for s in r.steps] == ["compute_mode"] * 2 + ["stop_process"] * 2 + [
        "power_cap"
    ] * 2
    assert wait_state(a, {"T"}) == "T"
    assert wait_state(b, {"T"}) == "T"
    rig.clock.advance(2)
    after = rig.sample()
    for g in after.gpus:
        assert g.compute_mode == PROHIBITED
        assert g.power_limit_watts == 200.0
        assert g.utilization_gpu_percent == 0.0  # stopped processes do nothing
    state = rig.enforcer.state()
    assert list(state.active_directive_ids) == [halt.id]
    assert sorted(state.halted_gpu_uuids) == sorted([u0, u1])
    assert state.highest_directive_counter == 1

    res = only(rig.send(directive(RESUME, counter=2, resumes_directive_id=halt.id)))
    assert all(s.ok for s in res.steps), res
    assert {s.step for s in res.steps} == {
        "restore_power_limit",
        "restore_compute_mode",
        "resume_process",
    }
    assert wait_state(a, RUNNING) in RUNNING
    rig.clock.advance(2)
    restored = rig.sample()
    for g in restored.gpus:
        assert g.compute_mode == DEFAULT
        assert g.power_limit_watts == 700.0
        assert g.utilization_gpu_percent > 50
    assert rig.enforcer.state().active_directive_ids == []
    assert rig.enforcer.state().halted_gpu_uuids == []


def test_resume_restores_the_management_power_limit_not_the_enforced_one(
    make_rig: MakeRig,
) -> None:
    # An out-of-band limit of 400 W holds the enforced limit below the 700 W
    # management limit (nvml.h nvmlDeviceGetEnforcedPowerLimit: "after taking
    # into account all limiters"). RESUME must give back 700 W of management
    # limit: writing the enforced 400 W would make the out-of-band limit permanent.
    rig = make_rig(external_power_limit_watts=400.0)
    assert rig.gpu(0).power_limit_watts == 400.0  # (initialises NVML)
    handle = rig.fake.nvmlDeviceGetHandleByIndex(0)
    assert rig.fake.nvmlDeviceGetPowerManagementLimit(handle) == 700_000
    halt = directive(HALT, counter=1)
    assert all(s.ok for s in only(rig.send(halt)).steps)
    assert rig.fake.nvmlDeviceGetPowerManagementLimit(handle) == 200_000
    assert rig.gpu(0).power_limit_watts == 200.0
    res = only(rig.send(directive(RESUME, counter=2, resumes_directive_id=halt.id)))
    assert ("restore_power_limit", rig.gpu(0).uuid, True) in steps(res)
    assert rig.fake.nvmlDeviceGetPowerManagementLimit(handle) == 700_000
    assert rig.gpu(0).power_limit_watts == 400.0


def test_a_node_halt_names_the_unreadable_gpu_it_could_not_halt(make_rig: MakeRig) -> None:
    faults: list[dict[str, object]] = [
        {"kind": "no_permission", "functions": ["nvmlDeviceGetHandleByIndex"], "gpus": [1]}
    ]
    rig = make_rig(faults=faults)
    g0, g1 = rig.sample().gpus
    assert g1.health == telemetry_pb2.GPU_HEALTH_UNREADABLE
    assert g1.uuid == "unreadable:index-1"
    r = only(rig.send(directive(HALT, counter=1)))
    by_target = {(s.step, s.target): s for s in r.steps}
    assert by_target[("compute_mode", g0.uuid)].ok
    assert by_target[("stop_process", str(rig.pids["4242"]))].ok
    unreadable = [s for s in r.steps if s.target == g1.uuid]
    assert unreadable
    assert not any(s.ok for s in unreadable)
    assert all("unreadable" in s.detail for s in unreadable)
    assert rig.gpu(0).compute_mode == PROHIBITED


def test_job_halt_touches_only_that_jobs_gpus_and_processes(make_rig: MakeRig) -> None:
    rig = make_rig()
    r = only(rig.send(directive(HALT, kind=JOB, jobs=("4242",))))
    g0, g1 = rig.sample().gpus
    assert steps(r) == [
        ("compute_mode", g0.uuid, True),
        ("stop_process", str(rig.pids["4242"]), True),
        ("power_cap", g0.uuid, True),
    ]
    assert (g0.compute_mode, g1.compute_mode) == (PROHIBITED, DEFAULT)
    assert proc_state(rig.pids["4243"]) in RUNNING
    assert g1.power_limit_watts == 700.0


def test_gpu_scope_names_gpus_and_stops_what_runs_on_them(make_rig: MakeRig) -> None:
    rig = make_rig()
    g1 = rig.gpu(1)
    only(rig.send(directive(HALT, kind=GPU, gpus=(g1.uuid, "GPU-not-on-this-node"))))
    assert wait_state(rig.pids["4243"], {"T"}) == "T"
    assert proc_state(rig.pids["4242"]) in RUNNING
    assert rig.enforcer.state().halted_gpu_uuids == [g1.uuid]


def test_throttle_caps_power_clamped_to_the_gpu_limits_and_stops_nothing(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    low = directive(THROTTLE, counter=1, power_cap_watts=50.0)
    r = only(rig.send(low))
    assert [s.step for s in r.steps] == ["power_cap", "power_cap"]
    assert "clamped to [200, 700]" in r.steps[0].detail
    assert all(g.power_limit_watts == 200.0 for g in rig.sample().gpus)
    assert proc_state(rig.pids["4242"]) in RUNNING
    assert rig.enforcer.state().halted_gpu_uuids == []
    only(rig.send(directive(RESUME, counter=2, resumes_directive_id=low.id)))
    assert all(g.power_limit_watts == 700.0 for g in rig.sample().gpus)


def test_overlapping_halts_release_a_gpu_only_when_the_last_one_is_lifted(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    a = rig.pids["4242"]
    job_halt = directive(HALT, counter=1, kind=JOB, jobs=("4242",))
    node_halt = directive(HALT, counter=2)
    throttle = directive(THROTTLE, counter=3, power_cap_watts=450.0)
    rig.send(job_halt)
    r2 = only(rig.send(node_halt))
    assert ("stop_process", str(a), True) in steps(r2)  # noted as already stopped
    rig.send(throttle)
    only(rig.send(directive(RESUME, counter=4, resumes_directive_id=job_halt.id)))
    g0 = rig.gpu(0)
    assert g0.compute_mode == PROHIBITED  # the node halt still holds it
    assert g0.power_limit_watts == 200.0  # the lowest cap in force
    assert wait_state(a, {"T"}) == "T"
    only(rig.send(directive(RESUME, counter=5, resumes_directive_id=node_halt.id)))
    g0 = rig.gpu(0)
    assert g0.compute_mode == DEFAULT
    assert g0.power_limit_watts == 450.0  # the throttle is still in force
    assert wait_state(a, RUNNING) in RUNNING
    only(rig.send(directive(RESUME, counter=6, resumes_directive_id=throttle.id)))
    assert rig.gpu(0).power_limit_watts == 700.0
    assert rig.enforcer.record.gpus == {}
    assert rig.enforcer.record.stopped == {}


def test_resume_of_a_directive_not_in_force_here_is_acknowledged(make_rig: MakeRig) -> None:
    rig = make_rig()
    r = only(rig.send(directive(RESUME, counter=1, resumes_directive_id="never-seen")))
    assert steps(r) == [("resume", "never-seen", True)]
    assert rig.enforcer.state().highest_directive_counter == 1


def test_terminate_sigterm_now_sigkill_after_grace_for_the_stubborn(
    make_rig: MakeRig, children: Children
) -> None:
    rig = make_rig(codes={"4243": STUBBORN})
    polite, stubborn = rig.pids["4242"], rig.pids["4243"]
    term = directive(TERMINATE, counter=1, grace_seconds=30.0)
    r = only(rig.send(term))
    assert steps(r) == [
        ("terminate_process", str(min(polite, stubborn)), True),
        ("terminate_process", str(max(polite, stubborn)), True),
    ]
    polite_proc = next(p for p in children.procs if p.pid == polite)
    assert polite_proc.wait(timeout=5) == -15
    assert rig.enforcer.tick() == []  # grace not over
    rig.clock.advance(29.0)
    assert rig.enforcer.tick() == []
    rig.clock.advance(1.0)
    (kills,) = rig.enforcer.tick()
    assert kills.directive_id == term.id
    by_target = {s.target: s for s in kills.steps}
    assert by_target[str(stubborn)].detail == "SIGKILL"
    assert by_target[str(polite)].detail == "exited after SIGTERM"
    stubborn_proc = next(p for p in children.procs if p.pid == stubborn)
    assert stubborn_proc.wait(timeout=5) == -9
    assert rig.enforcer.record.kills == []


def test_a_directive_sent_again_is_acknowledged_not_reapplied(make_rig: MakeRig) -> None:
    rig = make_rig()
    halt = directive(HALT, counter=1, kind=JOB, jobs=("4242",))
    rig.send(halt)
    again = only(rig.send(halt))
    assert steps(again) == [("duplicate", halt.id, True)]
    assert rig.enforcer.stats.duplicates == 1


def test_enforcement_survives_a_restart_and_is_reapplied(make_rig: MakeRig) -> None:
    rig = make_rig()
    a = rig.pids["4242"]
    halt = directive(HALT, counter=7)
    rig.send(halt)
    throttle = directive(THROTTLE, counter=8, kind=JOB, jobs=("4243",), power_cap_watts=300.0)
    rig.send(throttle)
    # The driver forgets: compute mode and limit reset, and someone continues the process.
    u0 = rig.gpu(0).uuid
    rig.backend.set_compute_mode(u0, DEFAULT)
    rig.backend.set_power_limit(u0, 700.0)
    os.kill(a, signal.SIGCONT)
    assert wait_state(a, RUNNING) in RUNNING
    rig.enforcer = rig.open()  # a restarted agent, same spool
    restored = rig.enforcer.restore()
    assert [r.directive_id for r in restored] == [halt.id, throttle.id]
    assert rig.gpu(0).compute_mode == PROHIBITED
    assert rig.gpu(0).power_limit_watts == 200.0
    assert wait_state(a, {"T"}) == "T"
    state = rig.enforcer.state()
    assert list(state.active_directive_ids) == [halt.id, throttle.id]
    assert state.highest_directive_counter == 8
    # Counters persisted: the old halt again is a duplicate, a lower counter is stale.
    assert steps(only(rig.send(halt))) == [("duplicate", halt.id, True)]
    assert only(rig.send(directive(HALT, counter=6))).refused_reason == "stale_counter"
    # The restarted agent still knows the originals and restores them.
    only(rig.send(directive(RESUME, counter=9, resumes_directive_id=halt.id)))
    only(rig.send(directive(RESUME, counter=10, resumes_directive_id=throttle.id)))
    g0, g1 = rig.sample().gpus
    assert (g0.compute_mode, g0.power_limit_watts) == (DEFAULT, 700.0)
    assert g1.power_limit_watts == 700.0
    assert wait_state(a, RUNNING) in RUNNING


def test_a_halted_job_is_halted_again_where_it_appears_later(make_rig: MakeRig) -> None:
    rig = make_rig({"4242": (0,), "5000": (1,)}, starts={"5000": 10.0})
    halt = directive(HALT, counter=1, kind=JOB, jobs=("5000",))
    r = only(rig.send(halt))
    assert steps(r) == [("match", halt.id, True)]
    assert rig.enforcer.tick(snapshot=rig.sample()) == []
    rig.clock.advance(10.0)
    (later,) = rig.enforcer.tick(snapshot=rig.sample())
    assert later.directive_id == halt.id
    assert [s.step for s in later.steps] == ["compute_mode", "stop_process", "power_cap"]
    assert wait_state(rig.pids["5000"], {"T"}) == "T"
    assert rig.enforcer.tick(snapshot=rig.sample()) == []  # nothing new: no receipt


def test_refusals_yield_a_bounded_number_of_receipts_per_tick(make_rig: MakeRig) -> None:
    rig = make_rig()
    receipts = [r for _ in range(MAX_REFUSAL_RECEIPTS + 5) for r in rig.enforcer.handle(b"x")]
    assert len(receipts) == MAX_REFUSAL_RECEIPTS
    assert {r.refused_reason for r in receipts} == {"decode"}
    assert rig.enforcer.verifier.stats.refused["decode"] == MAX_REFUSAL_RECEIPTS + 5
    rig.enforcer.tick()
    assert len(rig.enforcer.handle(b"x")) == 1


def test_metrics_are_read_at_scrape_time(make_rig: MakeRig) -> None:
    rig = make_rig()
    registry = CollectorRegistry()
    register_enforcement_metrics(registry, lambda: rig.enforcer)
    rig.enforcer.handle(b"junk")
    rig.send(directive(HALT, counter=1))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("computewatch_agent_directives_refused_total", reason="decode") == 1.0
    assert value("computewatch_agent_directives_applied_total", action="halt") == 1.0
    assert value("computewatch_agent_halted_gpus") == 2.0
    assert value("computewatch_agent_directives_in_force") == 1.0
    assert value("computewatch_agent_lease_valid") == 0.0


def test_a_held_gpu_changed_behind_the_agents_back_is_held_again(make_rig: MakeRig) -> None:
    rig = make_rig()
    halt = directive(HALT, counter=1, kind=JOB, jobs=("4242",))
    rig.send(halt)
    assert rig.enforcer.tick(snapshot=rig.sample()) == []
    u0 = rig.gpu(0).uuid
    rig.backend.set_compute_mode(u0, DEFAULT)  # an administrator, or a driver reload
    rig.backend.set_power_limit(u0, 650.0)
    (r,) = rig.enforcer.tick(snapshot=rig.sample())
    assert r.directive_id == halt.id
    assert steps(r) == [("compute_mode", u0, True), ("power_cap", u0, True)]
    g0 = rig.gpu(0)
    assert (g0.compute_mode, g0.power_limit_watts) == (PROHIBITED, 200.0)
    assert rig.enforcer.tick(snapshot=rig.sample()) == []


def test_a_halt_while_nvml_is_down_is_kept_and_applied_when_it_is_back(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(faults=[{"kind": "nvml_not_loaded", "at": 0, "until": 3}])
    halt = directive(HALT, counter=1)
    r = only(rig.send(halt))
    assert [(s.step, s.ok) for s in r.steps] == [("sample", False)]
    assert rig.enforcer.state().active_directive_ids == [halt.id]
    assert rig.enforcer.tick(snapshot=rig.sample()) == []  # still down
    rig.clock.advance(3.0)
    (later,) = rig.enforcer.tick(snapshot=rig.sample())
    assert later.directive_id == halt.id
    assert all(s.ok for s in later.steps)
    assert rig.gpu(0).compute_mode == PROHIBITED


def test_a_failed_step_is_reported_and_the_other_steps_still_run(make_rig: MakeRig) -> None:
    rig = make_rig(
        faults=[{"kind": "no_permission", "functions": ["nvmlDeviceSetComputeMode"], "gpus": [0]}]
    )
    r = only(rig.send(directive(HALT, counter=1)))
    failed = [(s.step, s.target) for s in r.steps if not s.ok]
    assert failed == [("compute_mode", rig.gpu(0).uuid)]
    assert "COMPUTE_MODE_PROHIBITED" in r.steps[0].detail
    assert rig.gpu(1).compute_mode == PROHIBITED
    assert wait_state(rig.pids["4242"], {"T"}) == "T"
    assert rig.enforcer.stats.steps_failed == 1


def test_a_kill_still_due_survives_a_restart(make_rig: MakeRig, children: Children) -> None:
    rig = make_rig({"4242": (0,)}, codes={"4242": STUBBORN})
    stubborn = rig.pids["4242"]
    term = directive(TERMINATE, counter=1, grace_seconds=10.0)
    rig.send(term)
    rig.clock.advance(4.0)
    rig.enforcer = rig.open()
    assert rig.enforcer.restore() == []
    rig.clock.advance(5.9)
    assert rig.enforcer.tick() == []
    rig.clock.advance(0.1)
    (kill,) = rig.enforcer.tick()
    assert steps(kill) == [("kill_process", str(stubborn), True)]
    assert next(p for p in children.procs if p.pid == stubborn).wait(timeout=5) == -9


def test_every_refusal_reason_and_action_exists_at_zero_before_any_directive(
    make_rig: MakeRig,
) -> None:
    # increase() cannot see a series born at 1: the first expired directive must alert.
    rig = make_rig()
    registry = CollectorRegistry()
    register_enforcement_metrics(registry, lambda: rig.enforcer)
    for reason in DIRECTIVE_REFUSAL_REASONS:
        sample = registry.get_sample_value(
            "computewatch_agent_directives_refused_total", {"reason": reason}
        )
        assert sample == 0.0, reason
    for action in ("halt", "resume", "throttle", "terminate"):
        sample = registry.get_sample_value(
            "computewatch_agent_directives_applied_total", {"action": action}
        )
        assert sample == 0.0, action
    assert "expired" in DIRECTIVE_REFUSAL_REASONS
