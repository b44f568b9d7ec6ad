"""A simulated node for agent tests: the real NvmlBackend over FakeNvml, a fake
/proc tree and job metadata written from the same scenario, a real node key.

Nothing of ours is replaced: the fake pynvml is the only fake.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.attribution import JobAttributor
from agent.config import AgentConfig
from agent.fakenvml import FakeNvml, parse_scenario
from agent.fakenvml.procfs import materialize
from agent.fakenvml.scenario import Scenario
from agent.jobmeta import JobMetadataDir
from agent.nvml.real import NvmlBackend
from agent.runner import Agent
from protos.keys import PrivateKey, write_private_key

H100 = "NVIDIA H100 80GB HBM3"
SECOND = 1_000_000_000


def scenario_doc(nodes: list[str], *, faults: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``nodes`` with 2 H100s each; Slurm job 77 (child of 76) on both GPUs of each."""
    return {
        "name": "agent-tests",
        "duration_seconds": 3600,
        "interval_seconds": 1,
        "nodes": [{"id": n, "gpus": [{"model": H100, "count": 2}]} for n in nodes],
        "faults": faults or [],
        "jobs": [
            {
                "id": "76",
                "scheduler": "slurm",
                "nodes": nodes,
                "gpu_indices": [0],
                "start": 7200,
                "utilization": [[0, 10]],
                "tensor_fraction": 0.5,
                "memory_gib": 1,
                "model_id": "base",
            },
            {
                "id": "77",
                "scheduler": "slurm",
                "nodes": nodes,
                "gpus_per_node": 2,
                "start": 0,
                "utilization": [[0, 80], [3600, 80]],
                "tensor_fraction": 0.5,
                "memory_gib": 10,
                "parents": ["76"],
                "model_id": "acme-7b",
            },
        ],
    }


@dataclass
class Clock:
    """Wall clock (ns) and monotonic clock (s) that tests move by hand."""

    wall_ns: int = 1_750_000_000 * SECOND
    mono: float = 1000.0

    def time_ns(self) -> int:
        return self.wall_ns

    def monotonic(self) -> float:
        return self.mono

    def fake_time(self) -> float:
        return self.wall_ns / SECOND

    def advance(self, seconds: float) -> None:
        self.wall_ns += int(seconds * SECOND)
        self.mono += seconds


@dataclass
class SimNode:
    """Everything one agent needs, for one node of a scenario."""

    node_id: str
    tmp: Path
    doc: dict[str, Any]
    clock: Clock | None = None
    key: PrivateKey = field(default_factory=PrivateKey.generate)

    def __post_init__(self) -> None:
        self.dir = self.tmp / self.node_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key_path = self.dir / "node.key"
        if not self.key_path.exists():
            write_private_key(self.key, self.key_path)
        self.boot_id_path = self.dir / "boot_id"
        self.boot_id_path.write_text("6f1c9a52-0d7e-4a43-9a3b-2f4c1e5d7a90\n")
        self.scenario = parse_scenario(self.doc)
        self.procfs = self.dir / "proc"
        self.jobs_dir = self.dir / "jobs"
        self.pids = materialize(
            self.scenario, self.node_id, self.procfs, metadata_dir=self.jobs_dir
        )

    def config(self, collector: str = "127.0.0.1:1", **kw: Any) -> AgentConfig:
        base: dict[str, Any] = {
            "node_id": self.node_id,
            "key": self.key_path,
            "collector": collector,
            "interval_seconds": 0.05,
            "state_dir": self.dir / "state",
            "procfs_root": self.procfs,
            "job_metadata_dir": self.jobs_dir,
            "boot_id_path": self.boot_id_path,
            "backoff_min_seconds": 0.05,
            "backoff_max_seconds": 0.2,
            # TLS is not the point here (tests/integration/test_secure_defaults.py).
            "insecure_plaintext": True,
        }
        base.update(kw)
        return AgentConfig(**base)

    def backend(self) -> NvmlBackend:
        if self.clock is None:
            fake = FakeNvml(self.scenario, self.node_id, start=time.time())
        else:
            fake = FakeNvml(
                self.scenario,
                self.node_id,
                clock=self.clock.fake_time,
                start=self.clock.fake_time(),
            )
            # The backend times GPM pairs by the same clock the fake runs on.
            return NvmlBackend(fake, clock=self.clock.fake_time)
        return NvmlBackend(fake)

    def agent(self, collector: str = "127.0.0.1:1", **kw: Any) -> Agent:
        cfg = self.config(collector, **kw)
        extra: dict[str, Any] = {}
        if self.clock is not None:
            extra = {"clock_ns": self.clock.time_ns, "monotonic": self.clock.monotonic}
        return Agent(
            cfg,
            self.backend(),
            JobAttributor(cfg.procfs_root),
            JobMetadataDir(self.jobs_dir),
            self.key,
            version="test",
            **extra,
        )


T0 = 1_700_000_000.0


class FakeClock:
    """Unix seconds for ``FakeNvml(clock=...)`` that only move when a test moves them."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def at(self, offset: float) -> None:
        self.t = T0 + offset


def mig_scenario(*jobs: dict[str, object]) -> Scenario:
    """Node ``n``: GPU 0 an H100 split 3g.40gb + 4g.40gb, GPU 1 a whole H100; ``jobs`` on it."""
    return parse_scenario(
        {
            "name": "mig",
            "duration_seconds": 600,
            "nodes": [
                {
                    "id": "n",
                    "gpus": [{"model": H100, "mig": ["3g.40gb", "4g.40gb"]}, {"model": H100}],
                }
            ],
            "jobs": list(jobs),
        }
    )
