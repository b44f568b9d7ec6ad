"""One simulated node: the fake NVML, real stand-in processes for its jobs,
and a procfs tree and job metadata that describe them, so the agent's real
attribution and enforcement code runs unchanged (`agent run --backend fake`
and the demo both use this)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.fakenvml import FakeNvml
from agent.fakenvml.procfs import materialize
from agent.fakenvml.spec import Scenario
from agent.nvml.real import NvmlBackend
from computewatch.demo.processes import StandIns, process_state


@dataclass(frozen=True)
class FakeNode:
    backend: NvmlBackend
    # Where attribution reads /proc/<pid>/cgroup for the stand-ins.
    procfs_root: Path
    # Job metadata files (lineage, model id) as a scheduler prolog would write them.
    metadata_dir: Path
    # Scenario job id -> the stand-in's real pid.
    pids: dict[str, int]


def build_fake_node(
    scenario: Scenario,
    node_id: str,
    procfs_root: Path,
    metadata_dir: Path,
    stand_ins: StandIns,
    *,
    clock: Callable[[], float] = time.time,
    start: float | None = None,
) -> FakeNode:
    """Spawn a stand-in per job on ``node_id``; describe them in ``procfs_root``
    (``<pid>/cgroup``, ``<pid>/stat``) and ``metadata_dir`` (job files).

    The stand-ins are real processes, so a halt's SIGSTOP lands on a process
    of ours, never on an unrelated pid; the fake NVML reads their state to
    show a stopped job's GPUs idle.
    """
    pids = {job.id: stand_ins.spawn() for job in scenario.jobs_on(node_id)}
    materialize(scenario, node_id, procfs_root, pids, metadata_dir=metadata_dir)
    fake = FakeNvml(
        scenario, node_id, clock=clock, process_state=process_state, pids=pids, start=start
    )
    return FakeNode(NvmlBackend(fake, clock=clock), procfs_root, metadata_dir, pids)
