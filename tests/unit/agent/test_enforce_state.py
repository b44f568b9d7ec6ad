"""The persisted enforcement record: round trip through the spool, strict loading."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.enforce.state import (
    STATE_NAME,
    ActiveDirective,
    EnforcementRecord,
    EnforcementStore,
    GpuHold,
    PendingKill,
    Stopped,
)
from agent.enforce.verify import ACTION_CLASS, LEASE_CLASS
from agent.spool import Spool
from protos.errors import SpoolError
from protos.keys import PrivateKey
from tests.enforce_support import LEASE, Children, Clock, Rig, directive, only


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "state", node_id="n", keyid="k" * 64, max_unacked=10)
    yield s
    s.close()


def populated() -> EnforcementRecord:
    rec = EnforcementRecord()
    rec.accept("h1", 3, ACTION_CLASS)
    rec.accept("l9", 9, LEASE_CLASS)
    rec.active["h1"] = ActiveDirective("h1", 3, 1, 3, job_ids=["42"], applied_unix_nanos=5)
    rec.gpus["GPU-1"] = GpuHold(1, 700.0, prohibit=["h1"], caps={"h1": 200.0})
    rec.gpus["GPU-2"] = GpuHold(0, None, caps={"t1": 350.5})
    rec.stopped["pid:77"] = Stopped(
        "pid", "42", 77, "signal", 123456, holders=["h1"], cgroup="0::/job_42\n"
    )
    rec.stopped["job:42"] = Stopped("job", "42", 0, "slurm", None, holders=["h1"])
    rec.kills.append(PendingKill("t2", 4, 88, None, 10**18, cgroup="0::/job_42\n"))
    return rec


def test_a_record_round_trips_through_the_spool_state_table(spool: Spool) -> None:
    EnforcementStore(spool).save(populated())
    loaded = EnforcementStore(spool).load()
    assert loaded == populated()
    assert loaded.highest(ACTION_CLASS) == 3
    assert loaded.highest(LEASE_CLASS) == 9
    assert loaded.applied_counter("l9") == 9
    assert loaded.halted_gpus() == ["GPU-1"]


def test_a_record_saved_before_cgroups_were_kept_still_loads() -> None:
    doc = json.loads(populated().to_bytes())
    for entry in [*doc["stopped"].values(), *doc["kills"]]:
        del entry["cgroup"]
    loaded = EnforcementRecord.from_bytes(json.dumps(doc).encode())
    assert loaded.stopped["pid:77"].cgroup is None
    assert loaded.kills[0].cgroup is None
    assert loaded.stopped["pid:77"].start_time == 123456


def test_an_empty_spool_gives_an_empty_record(spool: Spool) -> None:
    assert EnforcementStore(spool).load() == EnforcementRecord()


def corrupt(field: str, value: object) -> bytes:
    doc = json.loads(populated().to_bytes())
    doc[field] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        corrupt("version", 2),
        corrupt("counters", {"action": "three"}),
        corrupt("active", {"h1": {"id": "h1"}}),
        corrupt(
            "stopped",
            {
                "x": {
                    "kind": "thread",
                    "job": "",
                    "pid": 1,
                    "method": "signal",
                    "start_time": None,
                    "holders": [],
                }
            },
        ),
        corrupt("kills", [{"directive_id": 1}]),
        corrupt(
            "gpus",
            {"G": {"original_mode": 1, "original_power_watts": True, "prohibit": [], "caps": {}}},
        ),
    ],
)
def test_an_unreadable_record_is_refused_not_guessed(spool: Spool, data: bytes) -> None:
    spool.put_state(STATE_NAME, data)
    with pytest.raises(SpoolError, match="enforcement state is unreadable"):
        EnforcementStore(spool).load()


def test_lease_counters_are_saved_with_the_next_save_or_within_ten_seconds(
    tmp_path: Path,
) -> None:
    children = Children()
    try:
        rig = Rig(tmp_path, Clock(), PrivateKey.generate(), {"4242": (0,)}, children)
        rig.send(directive(LEASE, counter=7, issued=rig.clock.wall_ns))
        assert rig.spool is not None
        assert EnforcementStore(rig.spool).load().highest(LEASE_CLASS) == 0
        rig.clock.advance(10.0)
        rig.enforcer.tick()
        assert EnforcementStore(rig.spool).load().highest(LEASE_CLASS) == 7
        rig.enforcer = rig.open()
        stale = only(rig.send(directive(LEASE, counter=6, issued=rig.clock.wall_ns)))
        assert stale.refused_reason == "stale_counter"
        rig.close()
    finally:
        children.close()
