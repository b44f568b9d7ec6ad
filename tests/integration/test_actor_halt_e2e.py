"""An actor halt end to end, with real agents: an actor that splits its work
into two jobs on two nodes, each under the job line, crosses the actor line;
the collector halts *that actor's* jobs on every node (and nothing of the
other actor's), the agents stop the real stand-in processes, and two
authorities together lift the halt."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.actors import load_policy
from agent.fakenvml.scenario import load_scenario
from computewatch.demo.cluster import AUTHORITIES, Cluster, start_cluster
from computewatch.demo.processes import process_state
from protos import dsse
from protos.auth import call_metadata
from protos.computewatch.v1 import control_pb2, control_pb2_grpc, status_pb2, status_pb2_grpc
from tests.stop_support import approval

SCENARIO = """
name: actor-halt-e2e
duration_seconds: 120
interval_seconds: 0.5
nodes:
  - {id_prefix: "n", count: 3, gpus: [{model: "NVIDIA H100 80GB HBM3", count: 2}]}
jobs:
  # Acme: one light job. Beta: the same effort split in two jobs on two nodes.
  - {id: "81", nodes: ["n00"], utilization: [[0, 5]], tensor_fraction: 0.8, memory_gib: 10,
     uid: 1000}
  - {id: "82", nodes: ["n01"], utilization: [[0, 90]], tensor_fraction: 0.8, memory_gib: 10,
     uid: 2000}
  - {id: "83", nodes: ["n02"], utilization: [[0, 90]], tensor_fraction: 0.8, memory_gib: 10,
     uid: 2000}
"""
ACTORS = """
publish: public_id
salt: 00112233445566778899aabbccddeeff
actors:
  - {organisation: Acme AI Ltd, lei: 5493001KJTIIGC8Y1R12, match: ["uid:1000"]}
  - {organisation: Beta Labs, match: ["uid:2000"]}
"""
# Each Beta job runs at ~1.4e15 FLOP/s: the pair crosses 1e16 FLOP in ~4 s,
# either alone only after ~7 s; the job line (2e16) is far from all of them.
PACK = """
pack: actor-e2e
version: "1"
description: Actor halt test pack.
rules:
  - id: job-line
    description: A job above 2e16 FLOP halts.
    metric: cumulative_flop
    bound: estimate
    scope: job
    comparison: ">"
    threshold: 2e16
    unit: FLOP
    action: halt
  - id: actor-split-run
    description: An actor above 1e16 FLOP across its jobs halts all of them.
    metric: cumulative_7d_flop
    bound: estimate
    scope: actor
    comparison: ">"
    threshold: 1e16
    unit: FLOP
    action: halt
"""


async def until(cond: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


def _job_pids(cluster: Cluster, node_id: str) -> list[int]:
    home = cluster.workdir / "nodes" / node_id / "proc"
    return sorted(int(p.name) for p in home.iterdir() if p.name.isdigit())


def test_an_actor_halt_stops_all_its_jobs_and_a_quorum_lifts_it(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(SCENARIO)
    (tmp_path / "actors.yaml").write_text(ACTORS)
    (tmp_path / "pack.yaml").write_text(PACK)
    scenario = load_scenario(path)
    beta = load_policy(tmp_path / "actors.yaml").published("uid:2000")

    async def scenario_run() -> None:
        cluster: Cluster = await start_cluster(
            scenario,
            path,
            tmp_path / "w",
            rule_packs=(str(tmp_path / "pack.yaml"),),
            actors_file=tmp_path / "actors.yaml",
        )
        channel = cluster.channel()
        control = control_pb2_grpc.ControlStub(channel)
        status = status_pb2_grpc.StatusStub(channel)
        ministry = cluster.authority_keys[AUTHORITIES[0]]
        nodes = {run.node_id: run for run in cluster.nodes}
        try:

            async def directives() -> list[
                tuple[control_pb2.DirectiveRecord, control_pb2.Directive]
            ]:
                listing = await control.ListDirectives(
                    control_pb2.ListDirectivesRequest(),
                    metadata=call_metadata(ministry, "/computewatch.v1.Control/ListDirectives"),
                )
                out = []
                for rec in listing.directives:
                    env = dsse.open_envelope(rec.envelope)
                    out.append((rec, dsse.parse_message(control_pb2.Directive, env.payload)))
                return out

            async def actor_halt() -> bool:
                return any(
                    d.action == control_pb2.ACTION_HALT and d.rule_id == "actor-split-run"
                    for _, d in await directives()
                )

            await until(actor_halt)
            ((rec, halt),) = [
                (r, d) for r, d in await directives() if d.rule_id == "actor-split-run"
            ]
            assert halt.scope.kind == control_pb2.SCOPE_KIND_ACTOR
            assert list(halt.scope.actor_ids) == [beta]
            assert list(halt.scope.node_ids) == ["n00", "n01", "n02"]
            assert sorted(halt.scope.job_ids) == ["82", "83"]
            assert halt.evidence.measured_value > 1e16
            assert not [d for _, d in await directives() if d.rule_id == "job-line"]

            async def effective() -> bool:
                found = [r for r, d in await directives() if d.id == halt.id]
                return found[0].effective_unix_nanos > 0

            await until(effective)
            # Beta's processes on both nodes are stopped; Acme's job keeps running.
            for node_id in ("n01", "n02"):
                assert len(nodes[node_id].agent.enforcement_state().halted_gpu_uuids) == 2
                assert {process_state(p) for p in _job_pids(cluster, node_id)} == {"stopped"}
            assert not nodes["n00"].agent.enforcement_state().halted_gpu_uuids
            assert {process_state(p) for p in _job_pids(cluster, "n00")} == {"running"}
            st = await status.GetStatus(
                status_pb2.StatusRequest(),
                metadata=call_metadata(ministry, "/computewatch.v1.Status/GetStatus"),
            )
            by_actor = {a.actor_id: a for a in st.actors}
            assert by_actor[beta].cumulative_flop_estimate > 1e16
            assert list(by_actor[beta].firing_rules) == ["actor-split-run"]
            assert not by_actor["lei:5493001KJTIIGC8Y1R12"].firing_rules
            assert {j.job_id: j.actor for j in st.jobs}["81"] == "lei:5493001KJTIIGC8Y1R12"

            # One authority is not enough; the second makes the quorum.
            reply = None
            for name in AUTHORITIES[:2]:
                key = cluster.authority_keys[name]
                reply = await control.SubmitApproval(
                    control_pb2.SubmitRequest(envelope=approval(key, halt.id)),
                    metadata=call_metadata(key, "/computewatch.v1.Control/SubmitApproval"),
                )
                if name == AUTHORITIES[0]:
                    assert not reply.directive_ids
            assert reply is not None
            (resume_id,) = reply.directive_ids

            async def resumed() -> bool:
                pids = [p for n in ("n01", "n02") for p in _job_pids(cluster, n)]
                # Not vacuous: the halted jobs' processes are still there, and running.
                return bool(pids) and all(process_state(p) == "running" for p in pids)

            await until(resumed)

            async def resume_effective() -> bool:
                found = [r for r, d in await directives() if d.id == resume_id]
                return bool(found) and found[0].effective_unix_nanos > 0

            await until(resume_effective)
            for node_id in ("n01", "n02"):
                assert not nodes[node_id].agent.enforcement_state().halted_gpu_uuids
            assert rec.log_index > 0  # after the enrolments (a uint64 is always ">= 0")
        finally:
            await channel.close(None)
            await cluster.stop()

    asyncio.run(scenario_run())
