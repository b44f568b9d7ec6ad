"""The snapshot built from per-node summaries (``collector.accounting.live``)
equals today's from-scratch build (``snapshot_oracle``, the pre-change
``build_snapshot`` + ``with_actors`` kept verbatim), figure for figure and
bit for bit, after every step of seeded random traces: nodes joining and
enrolled, GPUs appearing, lost, unreadable, of unknown model and MIG-split,
jobs starting, moving and ending, actors changing, chain breaks,
evaluations, nodes going silent and coming back, ended jobs aging out.
A snapshot of a few scopes equals the full one on those scopes."""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import pytest

from collector.accounting.aggregate import Aggregator
from collector.accounting.jobbounds import JobLimits
from collector.accounting.snapshot import Scope, Snapshot
from collector.rules import RuleEngine
from collector.rules.load import builtin_pack_names, load_packs
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import LimitError
from tests.unit.collector import snapshot_oracle

Key = tuple[Scope, str]
V = TypeVar("V")
SEEDS = range(12)
STEPS = 120
NODES = 6
PRODUCTS = ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "Mystery Accelerator 9000")
ACTORS = ("", "org:acme", "org:beta", "lei:529900T8BM49AURSDO55", "bad actor!")


def _gpu(rng: random.Random, node: str, index: int, jobs: list[str]) -> telemetry_pb2.GpuSample:
    g = telemetry_pb2.GpuSample(
        uuid=f"GPU-{node}-{index}",
        index=index,
        product_name=rng.choice(PRODUCTS),
        processes_known=True,
        compute_mode=telemetry_pb2.COMPUTE_MODE_DEFAULT,
        health=rng.choices(
            (
                telemetry_pb2.GPU_HEALTH_OK,
                telemetry_pb2.GPU_HEALTH_LOST,
                telemetry_pb2.GPU_HEALTH_UNREADABLE,
            ),
            (8, 1, 1),
        )[0],
    )
    if rng.random() < 0.85:
        g.utilization_gpu_percent = rng.uniform(0, 100)
    if rng.random() < 0.5:
        g.tensor_activity_percent = rng.uniform(0, 100)
        g.sm_activity_percent = rng.uniform(0, 100)
    if rng.random() < 0.3:
        g.activity_window_seconds = rng.uniform(0.1, 2.0)
    g.power_watts = rng.uniform(50, 700)
    for k, job in enumerate(rng.sample(jobs, rng.randint(0, min(2, len(jobs))))):
        g.processes.add(pid=1000 + index * 10 + k, job_id=job, attribution="slurm")
    return g


def _mig(
    rng: random.Random, node: str, index: int, jobs: list[str]
) -> list[telemetry_pb2.GpuSample]:
    parent = telemetry_pb2.GpuSample(
        uuid=f"GPU-{node}-{index}",
        index=index,
        product_name=PRODUCTS[0],
        mig_enabled=True,
        processes_known=True,
        health=telemetry_pb2.GPU_HEALTH_OK,
        power_watts=300.0,
    )
    out = [parent]
    for k, share in enumerate((3 / 7, 4 / 7)):
        s = telemetry_pb2.GpuSample(
            uuid=f"MIG-{node}-{index}-{k}",
            index=index,
            product_name=PRODUCTS[0],
            parent_uuid=parent.uuid,
            mig_instance=f"{index}:{k}",
            sm_share=share,
            processes_known=True,
            health=telemetry_pb2.GPU_HEALTH_OK,
            utilization_gpu_percent=rng.uniform(0, 100),
        )
        if rng.random() < 0.5:
            s.tensor_activity_percent = rng.uniform(0, 100)
        if jobs and rng.random() < 0.7:
            s.processes.add(pid=5000 + index * 10 + k, job_id=rng.choice(jobs), attribution="slurm")
        out.append(s)
    return out


def _report(rng: random.Random, node: str, seq: int, at: float) -> telemetry_pb2.NodeReport:
    jobs = [f"job-{rng.randint(0, 7)}" for _ in range(rng.randint(0, 3))]
    r = telemetry_pb2.NodeReport(
        node_id=node,
        sequence=seq,
        interval_seconds=rng.choice((0.0, 1.0, 1.0, 2.0, 5.0)),
        sample_unix_nanos=int(at * 1e9) if rng.random() < 0.9 else 0,
    )
    for i in range(rng.randint(0, 4)):
        if rng.random() < 0.15:
            r.gpus.extend(_mig(rng, node, i, jobs))
        else:
            r.gpus.append(_gpu(rng, node, i, jobs))
    for job in sorted(set(jobs)):
        info = r.jobs.add(job_id=job, actor=rng.choice(ACTORS))
        if rng.random() < 0.2:
            info.parent_job_ids.append(f"job-{rng.randint(0, 7)}")
    if rng.random() < 0.1:
        r.jobs.add(job_id=f"declared-{rng.randint(0, 3)}", actor=rng.choice(ACTORS))
    return r


def _oracle(agg: Aggregator, now: float) -> Snapshot:
    snap = snapshot_oracle.build_snapshot(
        agg.nodes,
        agg.jobs,
        now,
        agg.is_silent,
        forgotten=(agg.forgotten_flop, agg.forgotten_flop_upper),
    )
    return snapshot_oracle.with_actors(snap, agg.actors, agg.jobs)


def _only(mapping: Mapping[Key, V], scopes: frozenset[Scope]) -> dict[Key, V]:
    return {k: v for k, v in mapping.items() if k[0] in scopes}


def _assert_same(got: Snapshot, want: Snapshot, scopes: frozenset[Scope]) -> None:
    assert got.time == want.time
    # Exact equality: same floats (None where unknown), same keys.
    assert {k: dict(v) for k, v in got.values.items()} == {
        k: dict(v) for k, v in _only(want.values, scopes).items()
    }
    assert dict(got.evidence) == _only(want.evidence, scopes)
    assert dict(got.methods) == _only(want.methods, scopes)
    if Scope.JOB in scopes:
        assert dict(got.lineage) == dict(want.lineage)
        assert dict(got.job_nodes) == dict(want.job_nodes)
        assert dict(got.job_actors) == dict(want.job_actors)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_figure_equals_a_from_scratch_build_after_each_step(seed: int) -> None:
    rng = random.Random(seed)
    agg = Aggregator(
        silent_after_intervals=3.0,
        expected_interval_seconds=rng.choice((0.0, 1.0)),
        job_limits=JobLimits(max_job_states=6, ended_job_ttl_seconds=20.0),
    )
    sequences: dict[str, int] = {}
    now, index = 1_000.0, 0
    every = frozenset(Scope)
    some = (
        frozenset({Scope.CLUSTER}),
        frozenset({Scope.CLUSTER, Scope.NODE}),
        frozenset({Scope.CLUSTER, Scope.JOB}),
        frozenset({Scope.CLUSTER, Scope.ACTOR}),
        frozenset({Scope.CLUSTER, Scope.GPU, Scope.NODE}),
    )
    for _ in range(STEPS):
        now += rng.choice((0.2, 1.0, 1.0, 3.0, 8.0, 30.0))
        node = f"n{rng.randrange(NODES)}"
        action = rng.random()
        if action < 0.7:
            sequences[node] = sequences.get(node, 0) + 1
            report = _report(rng, node, sequences[node], now - rng.uniform(0, 0.5))
            try:
                agg.admit_jobs(node, agg.report_job_ids(report))
            except LimitError:
                continue  # refused, as the collector refuses it: nothing changed
            agg.ingest(report, index, now)
            index += 1
        elif action < 0.78:
            agg.enroll(f"n{rng.randrange(NODES + 2)}")
        elif action < 0.84:
            agg.note_chain_break(node)
        elif action < 0.9 and agg.jobs:
            agg.ingest_evaluation(rng.choice(sorted(agg.jobs)), "cyber", rng.random(), index)
            index += 1
        else:
            agg.age_out(now)
        for _ in range(2):  # a second snapshot at the same state reuses the summaries
            full = agg.snapshot(now)
            _assert_same(full, _oracle(agg, now), every)
        scopes = rng.choice(some)
        _assert_same(agg.snapshot(now, scopes), _oracle(agg, now), scopes)
        # Later, with nothing reported: silence comes from the clock alone.
        later = now + rng.choice((0.5, 4.0, 20.0))
        _assert_same(agg.snapshot(later), _oracle(agg, later), every)


def test_summaries_are_rebuilt_only_for_nodes_that_changed() -> None:
    rng = random.Random(7)
    agg = Aggregator()
    for n in range(4):
        agg.ingest(_report(rng, f"n{n}", 1, 100.0), n, 100.0)
    agg.snapshot(100.5)
    built = agg.summaries.built
    agg.snapshot(101.0)
    assert agg.summaries.built == built  # nothing changed: every summary reused
    agg.ingest(_report(rng, "n2", 2, 101.0), 9, 101.0)
    agg.note_chain_break("n3")
    agg.snapshot(101.5)
    assert agg.summaries.built == built + 2


LOW_PACK = """
pack: low
version: "1"
description: Low thresholds at every scope, so that rules fire, clear and straddle.
rules:
  - {id: low-gpu-power, description: d, metric: power_watts, scope: gpu, comparison: ">",
     threshold: 400, unit: watts, action: record}
  - {id: low-node-rate, description: d, metric: achieved_flops, bound: estimate, scope: node,
     comparison: ">", threshold: 1e14, unit: FLOP/s, action: alert}
  - {id: low-job-flop, description: d, metric: cumulative_flop, bound: estimate, scope: job,
     comparison: ">", threshold: 1e15, unit: FLOP, action: record}
  - {id: low-lineage, description: d, metric: lineage_cumulative_flop, bound: upper_bound,
     scope: job, comparison: ">", threshold: 1e15, unit: FLOP, action: record,
     lineage: descendants}
  - {id: low-actor, description: d, metric: cumulative_7d_flop, bound: estimate, scope: actor,
     comparison: ">", threshold: 1e15, unit: FLOP, action: record}
  - {id: low-cluster, description: d, metric: achieved_flops, bound: estimate, scope: cluster,
     comparison: ">", threshold: 1e14, unit: FLOP/s, for: 2s, action: alert}
"""


@pytest.mark.parametrize("seed", range(4))
def test_the_rules_decide_alike_on_the_scopes_they_read(seed: int, tmp_path: Path) -> None:
    """A tick builds only ``RuleEngine.scopes``; its decisions equal those
    taken on every scope, for the shipped packs and for rules at each scope."""
    (tmp_path / "low.yaml").write_text(LOW_PACK, encoding="utf-8")
    # A cluster rule alone: whether the cluster awaits data is read from the nodes.
    cluster_only = (
        LOW_PACK[: LOW_PACK.index("rules:")]
        + "rules:\n"
        + LOW_PACK[LOW_PACK.index("  - {id: low-cluster") :]
    )
    (tmp_path / "cluster.yaml").write_text(cluster_only.replace("pack: low", "pack: c"), "utf-8")
    for packs in (
        [*builtin_pack_names()],
        [str(tmp_path / "low.yaml")],
        [str(tmp_path / "cluster.yaml")],
    ):
        full, scoped = RuleEngine(load_packs(packs)), RuleEngine(load_packs(packs))
        assert Scope.CLUSTER in scoped.scopes
        rng = random.Random(seed)
        agg = Aggregator(expected_interval_seconds=1.0)
        now = 1_000.0
        for step in range(60):
            now += rng.choice((0.5, 1.0, 1.0, 6.0))
            node = f"n{rng.randrange(NODES)}"
            report = _report(rng, node, step + 1, now)
            if step % 20 == 19:
                now += 30.0  # nothing reported: every node silent, the cluster unknown
            else:
                try:
                    agg.admit_jobs(node, agg.report_job_ids(report))
                except LimitError:
                    continue
                agg.ingest(report, step, now)
            want = full.evaluate(agg.snapshot(now))
            assert scoped.evaluate(agg.snapshot(now, scoped.scopes)) == want
