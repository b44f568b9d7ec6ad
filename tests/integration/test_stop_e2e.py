"""The stop protocol end to end with real agents: a manual halt by one
authority stops the node's real job process and idles its (fake) GPUs, the
collector sees it take effect, and two authorities together resume it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.fakenvml.scenario import load_scenario
from computewatch.demo.cluster import AUTHORITIES, Cluster, start_cluster
from computewatch.demo.processes import process_state
from protos import dsse
from protos.auth import call_metadata
from protos.computewatch.v1 import control_pb2, control_pb2_grpc, status_pb2, status_pb2_grpc
from tests.stop_support import approval, manual_halt

SCENARIO = """
name: stop-e2e
duration_seconds: 60
interval_seconds: 0.5
nodes:
  - {id_prefix: "n", count: 2, gpus: [{model: "NVIDIA H100 80GB HBM3", count: 2}]}
jobs:
  - {id: "71", nodes: ["n00"], utilization: [[0, 90]], tensor_fraction: 0.8, memory_gib: 10}
  - {id: "72", nodes: ["n01"], utilization: [[0, 90]], tensor_fraction: 0.8, memory_gib: 10}
"""


async def until(cond: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


def test_manual_halt_takes_effect_and_a_quorum_resumes(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(SCENARIO)
    scenario = load_scenario(path)

    async def scenario_run() -> None:
        cluster: Cluster = await start_cluster(scenario, path, tmp_path / "w", rule_packs=())
        channel = cluster.channel()
        control = control_pb2_grpc.ControlStub(channel)
        status = status_pb2_grpc.StatusStub(channel)
        ministry = cluster.authority_keys[AUTHORITIES[0]]
        nodes = {run.node_id: run for run in cluster.nodes}
        try:

            async def node_flops(node_id: str) -> float:
                st = await status.GetStatus(
                    status_pb2.StatusRequest(),
                    metadata=call_metadata(ministry, "/computewatch.v1.Status/GetStatus"),
                )
                return next(n.achieved_flops for n in st.nodes if n.node_id == node_id)

            async def running() -> bool:
                return await node_flops("n00") > 0 and await node_flops("n01") > 0

            await until(running)
            halt = manual_halt(
                ministry,
                control_pb2.Scope(kind=control_pb2.SCOPE_KIND_NODE, node_ids=["n00"]),
            )
            reply = await control.SubmitManualHalt(
                control_pb2.SubmitRequest(envelope=halt),
                metadata=call_metadata(ministry, "/computewatch.v1.Control/SubmitManualHalt"),
            )
            (halt_id,) = reply.directive_ids

            async def record(directive_id: str) -> control_pb2.DirectiveRecord:
                listing = await control.ListDirectives(
                    control_pb2.ListDirectivesRequest(),
                    metadata=call_metadata(ministry, "/computewatch.v1.Control/ListDirectives"),
                )
                for rec in listing.directives:
                    env = dsse.open_envelope(rec.envelope)
                    if dsse.parse_message(control_pb2.Directive, env.payload).id == directive_id:
                        return rec
                raise AssertionError(f"directive {directive_id} not listed")

            async def effective() -> bool:
                return (await record(halt_id)).effective_unix_nanos > 0

            await until(effective)
            # The job process on n00 is really stopped; n01 keeps working.
            assert len(nodes["n00"].agent.enforcement_state().halted_gpu_uuids) == 2
            assert not nodes["n01"].agent.enforcement_state().halted_gpu_uuids
            assert await node_flops("n00") == 0
            assert await node_flops("n01") > 0
            states = {process_state(pid) for pid in _job_pids(cluster, "n00")}
            assert states == {"stopped"}

            # One authority is not enough; the second makes the quorum.
            for name in AUTHORITIES[:2]:
                key = cluster.authority_keys[name]
                reply = await control.SubmitApproval(
                    control_pb2.SubmitRequest(envelope=approval(key, halt_id)),
                    metadata=call_metadata(key, "/computewatch.v1.Control/SubmitApproval"),
                )
                if name == AUTHORITIES[0]:
                    assert not reply.directive_ids
            (resume_id,) = reply.directive_ids
            assert not (await record(halt_id)).in_force

            async def resumed() -> bool:
                return await node_flops("n00") > 0

            await until(resumed)
            assert {process_state(pid) for pid in _job_pids(cluster, "n00")} == {"running"}

            async def resume_effective() -> bool:
                return (await record(resume_id)).effective_unix_nanos > 0

            await until(resume_effective)
            assert not nodes["n00"].agent.enforcement_state().halted_gpu_uuids
        finally:
            await channel.close(None)
            await cluster.stop()

    asyncio.run(scenario_run())


def _job_pids(cluster: Cluster, node_id: str) -> list[int]:
    home = cluster.workdir / "nodes" / node_id / "proc"
    return sorted(int(p.name) for p in home.iterdir() if p.name.isdigit())
