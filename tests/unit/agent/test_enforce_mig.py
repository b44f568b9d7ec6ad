"""Halts on a MIG-enabled GPU: compute mode per MIG device, power on the GPU.

nvml.h nvmlDeviceSetComputeMode: "If MIG is enabled on a GPU, device must be
MIG device handle": the fake refuses PROHIBITED on the parent, so a halt that
sets it there never takes effect.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from protos.computewatch.v1 import telemetry_pb2
from protos.keys import PrivateKey
from tests.enforce_support import (
    DEFAULT,
    HALT,
    JOB,
    PROHIBITED,
    RESUME,
    RUNNING,
    Children,
    Clock,
    Rig,
    directive,
    only,
    proc_state,
    wait_state,
)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    children = Children()
    r = Rig(
        tmp_path,
        Clock(),
        PrivateKey.generate(),
        # 4242 on GPU 0's first MIG device, 4243 on the whole GPU 1; 4244 would
        # start on GPU 0's second MIG device after the halt.
        {"4242": (0,), "4243": (1,), "4244": (0,)},
        children,
        mig=["3g.40gb", "4g.40gb"],
        slices={"4242": 0, "4244": 1},
        starts={"4244": 30},
    )
    yield r
    r.close()
    children.close()


def split(snap: list[telemetry_pb2.GpuSample]) -> tuple[telemetry_pb2.GpuSample, ...]:
    parent, small, large, whole = snap
    assert small.parent_uuid == large.parent_uuid == parent.uuid
    return parent, small, large, whole


def test_node_halt_prohibits_each_mig_device_and_caps_the_gpu(rig: Rig) -> None:
    parent, small, large, whole = split(list(rig.sample().gpus))
    halt = directive(HALT, counter=1)
    r = only(rig.send(halt))
    assert all(s.ok for s in r.steps), r
    modes = sorted(s.target for s in r.steps if s.step == "compute_mode")
    caps = sorted(s.target for s in r.steps if s.step == "power_cap")
    assert modes == sorted([small.uuid, large.uuid, whole.uuid])  # never the MIG parent
    assert caps == sorted([parent.uuid, whole.uuid])
    stops = [s.target for s in r.steps if s.step == "stop_process"]
    assert sorted(stops) == sorted(str(rig.pids[j]) for j in ("4242", "4243"))  # once each
    assert wait_state(rig.pids["4242"], {"T"}) == "T"
    rig.clock.advance(40)  # 4244 tries to start on the other MIG device at 30 s
    parent, small, large, whole = split(list(rig.sample().gpus))
    assert (small.compute_mode, large.compute_mode) == (PROHIBITED, PROHIBITED)
    assert not large.processes  # refused a context: the halt took effect there
    assert parent.power_limit_watts == 200.0
    # Halted (compute mode held): the MIG devices and the whole GPU.
    assert sorted(rig.enforcer.state().halted_gpu_uuids) == sorted(
        [small.uuid, large.uuid, whole.uuid]
    )

    res = only(rig.send(directive(RESUME, counter=2, resumes_directive_id=halt.id)))
    assert all(s.ok for s in res.steps), res
    restored = sorted(s.target for s in res.steps if s.step == "restore_compute_mode")
    assert restored == sorted([small.uuid, large.uuid, whole.uuid])
    assert wait_state(rig.pids["4242"], RUNNING) in RUNNING
    parent, small, large, _ = split(list(rig.sample().gpus))
    assert (small.compute_mode, large.compute_mode) == (DEFAULT, DEFAULT)
    assert parent.power_limit_watts == 700.0


def test_job_halt_prohibits_only_the_jobs_mig_device(rig: Rig) -> None:
    parent, small, large, _ = split(list(rig.sample().gpus))
    r = only(rig.send(directive(HALT, kind=JOB, jobs=("4242",))))
    assert [(s.step, s.target, s.ok) for s in r.steps] == [
        ("compute_mode", small.uuid, True),
        ("stop_process", str(rig.pids["4242"]), True),
        # The power limit is the physical GPU's (a MIG device has none).
        ("power_cap", parent.uuid, True),
    ]
    parent, small, large, whole = split(list(rig.sample().gpus))
    assert (small.compute_mode, large.compute_mode) == (PROHIBITED, DEFAULT)
    assert whole.compute_mode == DEFAULT
    assert parent.power_limit_watts == 200.0
    assert proc_state(rig.pids["4243"]) in RUNNING
