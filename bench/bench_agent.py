"""Figure 3: agent CPU time per sample with 8 fake GPUs.

The real agent code (``agent.runner.Agent.tick``: NVML backend, job
attribution from a /proc tree, job metadata, report, DSSE seal, spool append)
runs against the fake pynvml (``agent.fakenvml``) for one node with 8 H100s
and two jobs (Slurm and Kubernetes). Each sample is acknowledged in the spool
right after, as the collector would, so the spool stays small. CPU time is
this process's (``time.process_time``) over the measured samples; the parts
(backend, attribution, seal) are timed the same way on their own.

The fake NVML is Python, where a real driver call is a C call into the
kernel, so the backend share is reported with the number of NVML calls per
sample: a reader can put in their own driver's per-call cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import BenchError, machine
from protos.keys import PrivateKey, write_private_key

NODE = "bench-node"
H100 = "NVIDIA H100 80GB HBM3"


@dataclass(frozen=True)
class AgentResult:
    gpus: int
    samples: int
    seconds: float
    cpu_ms_per_sample: float
    wall_ms_per_sample: float
    backend_cpu_ms_per_sample: float
    attribution_cpu_ms_per_sample: float
    seal_cpu_ms_per_sample: float
    nvml_calls_per_sample: float
    envelope_bytes: int
    reports_sealed: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def scenario_doc(gpus: int) -> dict[str, Any]:
    half = max(gpus // 2, 1)
    return {
        "name": "bench-agent",
        "duration_seconds": 86_400,
        "interval_seconds": 1,
        "nodes": [{"id": NODE, "gpus": [{"model": H100, "count": gpus}]}],
        "jobs": [
            {
                "id": "4242",
                "scheduler": "slurm",
                "nodes": [NODE],
                "gpu_indices": list(range(half)),
                "utilization": [[0, 90], [86_400, 95]],
                "tensor_fraction": 0.6,
                "memory_gib": 60,
                "model_id": "acme-70b",
            },
            {
                "id": "infer",
                "scheduler": "kubernetes",
                "nodes": [NODE],
                "gpu_indices": list(range(half, gpus)),
                "utilization": [[0, 40], [86_400, 45]],
                "tensor_fraction": 0.3,
                "memory_gib": 20,
            },
        ],
    }


def _cpu_per_call(fn: Callable[[], object], count: int, deadline: float) -> tuple[float, int]:
    """CPU seconds per call of ``fn`` over at most ``count`` calls, until ``deadline``."""
    start = time.process_time()
    n = 0
    while n < count and time.perf_counter() < deadline:
        fn()
        n += 1
    return (time.process_time() - start) / max(n, 1), n


@contextlib.contextmanager
def _node(base: Path | None, gpus: int) -> Iterator[Any]:
    # Imported here: the agent package is only needed by this benchmark.
    from agent.attribution import JobAttributor
    from agent.config import AgentConfig
    from agent.fakenvml import FakeNvml, parse_scenario
    from agent.fakenvml.procfs import materialize
    from agent.jobmeta import JobMetadataDir
    from agent.nvml.real import NvmlBackend
    from agent.runner import Agent

    with tempfile.TemporaryDirectory(prefix="cw-bench-agent-", dir=base) as tmp:
        root = Path(tmp)
        scenario = parse_scenario(scenario_doc(gpus), source="bench")
        pids = materialize(scenario, NODE, root / "proc", metadata_dir=root / "jobs")
        key = PrivateKey.generate()
        write_private_key(key, root / "node.key")
        (root / "boot_id").write_text("6f1c9a52-0d7e-4a43-9a3b-2f4c1e5d7a90\n", encoding="ascii")
        config = AgentConfig(
            node_id=NODE,
            key=root / "node.key",
            insecure_plaintext=True,  # never connects
            state_dir=root / "state",
            procfs_root=root / "proc",
            job_metadata_dir=root / "jobs",
            boot_id_path=root / "boot_id",
        )
        fake = FakeNvml(scenario, NODE, pids=pids)
        backend = NvmlBackend(fake)
        attributor = JobAttributor(root / "proc")
        agent = Agent(
            config, backend, attributor, JobMetadataDir(root / "jobs"), key, version="bench"
        )
        try:
            yield agent, backend, attributor, fake, key
        finally:
            agent.close()
            backend.close()


def run(
    samples: int = 500, *, gpus: int = 8, seconds: float = 60.0, base: Path | None = None
) -> AgentResult:
    """Time ``samples`` agent ticks (bounded by ``seconds``) and their parts."""
    if samples < 1 or gpus < 1:
        raise BenchError("samples and gpus must be at least 1")
    from agent.report import build_report
    from protos import dsse
    from protos.computewatch.v1 import telemetry_pb2

    with _node(base, gpus) as (agent, backend, attributor, fake, key):
        spool = agent.open()

        async def ticks(count: int, deadline: float) -> int:
            n = 0
            while n < count and time.perf_counter() < deadline:
                await agent.tick()
                spool.ack(spool.last_sequence)
                n += 1
            return n

        deadline = time.perf_counter() + seconds
        asyncio.run(ticks(min(20, samples), deadline))  # warm up: caches, first reads
        calls0 = sum(fake.calls.values())
        cpu0, wall0 = time.process_time(), time.perf_counter()
        done = asyncio.run(ticks(samples, deadline))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        if done == 0:
            raise BenchError(f"no sample within {seconds} s")
        calls = (sum(fake.calls.values()) - calls0) / done
        sealed = agent.stats.reports_sealed

        snapshot = backend.sample()
        backend_cpu, _ = _cpu_per_call(backend.sample, samples, deadline + seconds)
        gpu_list = list(snapshot.gpus)
        attribution_cpu, _ = _cpu_per_call(
            lambda: attributor.fill(gpu_list), samples, deadline + seconds
        )
        attributor.fill(gpu_list)

        def seal() -> bytes:
            report = build_report(
                NODE,
                "6f1c9a52-0d7e-4a43-9a3b-2f4c1e5d7a90",
                (1, bytes(32)),
                sample_time_ns=time.time_ns(),
                interval_s=1.0,
                snapshot=snapshot,
                jobs=[],
                enforcement=telemetry_pb2.EnforcementState(fail_mode="open"),
                receipts=[],
                version="bench",
            )
            return dsse.seal(report, key)

        seal_cpu, _ = _cpu_per_call(seal, samples, deadline + seconds)
        size = len(seal())
    if sealed < done:
        raise BenchError(f"{done} ticks but only {sealed} reports sealed")
    return AgentResult(
        gpus=gpus,
        samples=done,
        seconds=wall,
        cpu_ms_per_sample=1e3 * cpu / done,
        wall_ms_per_sample=1e3 * wall / done,
        backend_cpu_ms_per_sample=1e3 * backend_cpu,
        attribution_cpu_ms_per_sample=1e3 * attribution_cpu,
        seal_cpu_ms_per_sample=1e3 * seal_cpu,
        nvml_calls_per_sample=calls,
        envelope_bytes=size,
        reports_sealed=sealed,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--gpus", type=int, default=8)
    args = p.parse_args(argv)
    result = run(args.samples, gpus=args.gpus)
    print(json.dumps({"machine": machine(), "agent": result.to_dict()}, indent=2))


if __name__ == "__main__":
    main()
