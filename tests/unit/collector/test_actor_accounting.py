"""Per-actor accounting (``collector.accounting.actors``), actor rules and scopes.

An actor that splits one effort into several jobs, each under the job line,
is seen as one: its figures are the sums of its jobs', with the same
estimate / upper bound / unmeasured form, over rolling windows and lifetime.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from collector.accounting.actor_metrics import actor_families
from collector.accounting.actors import BUCKET_SECONDS, MAX_ACTORS, ActorBook
from collector.accounting.aggregate import Aggregator
from collector.accounting.snapshot import Scope
from collector.rules.engine import RuleEngine
from collector.rules.load import load_packs
from collector.rules.model import DecisionKind
from collector.services.status import build_status
from collector.stop.scoping import ScopeResolver
from collector.telemetry.ingest import IngestStats
from protos import devices
from protos.actors import UNKNOWN_ACTOR, commitment
from protos.computewatch.v1 import control_pb2, telemetry_pb2
from protos.errors import ScopeError
from tests.support import gpu

H100 = devices.lookup("NVIDIA H100 80GB HBM3")
assert H100 is not None
ACME = "lei:5493001KJTIIGC8Y1R12"
BETA = commitment(b"0123456789abcdef", "org:Beta Labs")
DAY = 86400.0


def report(
    node: str,
    jobs: dict[str, str],
    *,
    seq: int,
    interval: float = 10.0,
    sample: float = 0.0,
    util: float = 100.0,
) -> telemetry_pb2.NodeReport:
    """One GPU per job at ``util`` percent; ``jobs``: job id -> actor id."""
    r = telemetry_pb2.NodeReport(
        node_id=node,
        sequence=seq,
        interval_seconds=interval,
        sample_unix_nanos=int(sample * 1e9),
    )
    for i, (job_id, actor) in enumerate(sorted(jobs.items())):
        g = gpu(i, util=util, job=job_id, pid=100 + i)
        g.processes[0].actor = actor
        r.gpus.append(g)
        r.jobs.add(job_id=job_id, actor=actor)
    return r


def split_run(agg: Aggregator, reports: int, *, start: float = 1000.0) -> None:
    """Beta runs four one-GPU jobs on two nodes; Acme one two-GPU job."""
    for seq in range(1, reports + 1):
        t = start + seq * 10.0
        agg.ingest(report("n1", {"s1": BETA, "s2": BETA}, seq=seq, sample=t), seq, t)
        agg.ingest(report("n2", {"s3": BETA, "s4": BETA}, seq=seq, sample=t), seq, t)
        r = report("n3", {"big": ACME}, seq=seq, sample=t)
        r.gpus.append(gpu(1, util=100.0, job="big", pid=200))
        r.gpus[-1].processes[0].actor = ACME
        agg.ingest(r, seq, t)


def test_an_actors_figures_are_the_sum_of_its_jobs_with_bounds() -> None:
    agg = Aggregator()
    split_run(agg, 3)
    snap = agg.snapshot(1031.0)
    job_flop = 3 * 10.0 * H100.peak_flops
    # utilization.gpu only: the bound counts it at the highest peak (FP8).
    job_upper = 3 * 10.0 * H100.max_peak_flops
    for j in ("s1", "s2", "s3", "s4"):
        assert snap.get(Scope.JOB, j, "cumulative_flop") == pytest.approx(job_flop)
    beta = snap.values[(Scope.ACTOR, BETA)]
    assert beta["cumulative_flop"] == pytest.approx(4 * job_flop)
    assert beta["cumulative_flop_upper_bound"] == pytest.approx(4 * job_upper)
    assert beta["cumulative_90d_flop"] == pytest.approx(4 * job_flop)
    assert beta["gpus"] == 4
    assert beta["jobs"] == 4
    assert beta["achieved_flops"] == pytest.approx(4 * H100.peak_flops)
    acme = snap.values[(Scope.ACTOR, ACME)]
    assert acme["gpus"] == 2
    assert acme["cumulative_flop"] == pytest.approx(2 * job_flop)
    assert snap.job_actors["s3"] == BETA
    assert set(snap.evidence[(Scope.ACTOR, BETA)]) == {1, 2, 3}


def test_windows_forget_what_is_older_and_lifetime_keeps_it() -> None:
    agg = Aggregator()
    t0 = 10 * DAY
    agg.ingest(report("n1", {"a": BETA}, seq=1, sample=t0), 1, t0)
    later = t0 + 8 * DAY
    # 8 days later (the node was off: the gap is unmeasured, charged at peak in
    # the upper bound of the job that held the GPU on both sides).
    agg.ingest(report("n1", {"a": BETA}, seq=2, sample=later), 2, later)
    row = agg.snapshot(later + 1).values[(Scope.ACTOR, BETA)]
    one = 10.0 * H100.peak_flops
    assert row["cumulative_flop"] == pytest.approx(2 * one)
    assert row["cumulative_7d_flop"] == pytest.approx(one)  # the first report is older
    assert row["cumulative_30d_flop"] == pytest.approx(2 * one)
    gap = later - t0 - 10.0
    upper_one = 10.0 * H100.max_peak_flops
    assert row["cumulative_7d_flop_upper_bound"] == pytest.approx(
        upper_one + gap * H100.max_peak_flops
    )
    assert row["unmeasured_gpu_seconds"] == pytest.approx(gap)
    assert BUCKET_SECONDS == 3600


def test_unknown_actors_are_pooled_apart_never_merged_into_a_named_one() -> None:
    agg = Aggregator()
    r = report("n1", {"named": BETA, "anon": ""}, seq=1)
    r.gpus.append(gpu(5, util=100.0, job="unattributed@n1", pid=300))
    agg.ingest(r, 1, 1000.0)
    bad = report("n2", {"forged": "lei:NOT-AN-LEI"}, seq=1)
    agg.ingest(bad, 2, 1000.0)
    snap = agg.snapshot(1000.5)
    assert snap.job_actors["anon"] == UNKNOWN_ACTOR
    assert snap.job_actors["unattributed@n1"] == UNKNOWN_ACTOR
    assert snap.job_actors["forged"] == UNKNOWN_ACTOR
    assert agg.actors.invalid == 1
    assert snap.get(Scope.ACTOR, UNKNOWN_ACTOR, "gpus") == 3
    assert snap.get(Scope.ACTOR, BETA, "gpus") == 1


def test_a_silent_node_makes_the_rate_unknown_and_grows_the_bound() -> None:
    agg = Aggregator(silent_after_intervals=3)
    agg.ingest(report("n1", {"a": BETA}, seq=1, sample=1000.0), 1, 1000.0)
    quiet = agg.snapshot(1100.0).values[(Scope.ACTOR, BETA)]
    assert quiet["achieved_flops"] is None
    assert quiet["cumulative_flop"] == pytest.approx(10.0 * H100.peak_flops)
    pending = 100.0 * H100.max_peak_flops
    assert quiet["cumulative_flop_upper_bound"] == pytest.approx(
        10.0 * H100.max_peak_flops + pending
    )
    assert quiet["unmeasured_gpu_seconds"] == pytest.approx(100.0)


def test_actors_beyond_the_maximum_count_as_unknown() -> None:
    book = ActorBook()
    for i in range(MAX_ACTORS):
        book.actors[f"org:a{i}"] = book._state(f"org:a{i}")
    assert book._state("org:one-more").actor == UNKNOWN_ACTOR
    assert book.overflow == 1


SPLIT_RUN_PACK = """
pack: actors-test
version: "1"
description: Actor rules.
rules:
  - id: job-line
    description: A job above the line.
    metric: cumulative_flop
    bound: estimate
    scope: job
    comparison: ">"
    threshold: {line}
    unit: FLOP
    action: halt
  - id: split-run
    description: An actor above the line across its jobs.
    metric: cumulative_90d_flop
    bound: estimate
    scope: actor
    comparison: ">"
    threshold: {line}
    unit: FLOP
    action: halt
  - id: actor-density
    description: An actor holding more than 3 H100s' worth at once.
    metric: achieved_flops
    bound: estimate
    scope: actor
    comparison: ">"
    threshold: {density}
    unit: FLOP/s
    action: alert
"""


def test_the_actor_rule_catches_a_split_run_no_job_rule_sees(tmp_path: Path) -> None:
    # 3 reports of 10 s: each small job 30, Acme's two-GPU job 60, Beta's four 120
    # (x peak): the line is above every job, and above Acme, but not above Beta.
    line = 90.0 * H100.peak_flops
    path = tmp_path / "actors-test.yaml"
    path.write_text(SPLIT_RUN_PACK.format(line=line, density=3 * H100.peak_flops))
    engine = RuleEngine(load_packs([path]))
    agg = Aggregator()
    split_run(agg, 3)
    decisions = engine.evaluate(agg.snapshot(1031.0))
    fired = {(d.rule.id, d.key) for d in decisions if d.kind is DecisionKind.FIRE}
    assert ("split-run", BETA) in fired
    assert ("actor-density", BETA) in fired
    assert ("split-run", ACME) not in fired
    assert not any(rule == "job-line" for rule, _ in fired)
    split = next(d for d in decisions if d.rule.id == "split-run" and d.key == BETA)
    assert "actor " + BETA in split.reason
    assert split.log_indices


def test_an_actor_scope_reaches_every_known_node_and_names_its_running_jobs() -> None:
    agg = Aggregator()
    split_run(agg, 1)
    resolver = ScopeResolver(agg, lambda: ["n1", "n2", "n3", "n4"])
    scope = resolver.for_targets(Scope.ACTOR, [BETA])
    assert scope.kind == control_pb2.SCOPE_KIND_ACTOR
    assert list(scope.actor_ids) == [BETA]
    assert list(scope.node_ids) == ["n1", "n2", "n3", "n4"]
    assert list(scope.job_ids) == ["s1", "s2", "s3", "s4"]
    asked = control_pb2.Scope(kind=control_pb2.SCOPE_KIND_ACTOR, actor_ids=[ACME])
    assert list(resolver.requested(asked).job_ids) == ["big"]
    with pytest.raises(ScopeError, match="names no actor"):
        resolver.requested(control_pb2.Scope(kind=control_pb2.SCOPE_KIND_ACTOR))
    with pytest.raises(ScopeError, match="malformed actor ids"):
        resolver.requested(control_pb2.Scope(kind=control_pb2.SCOPE_KIND_ACTOR, actor_ids=["acme"]))


def test_status_lists_every_actor_and_metrics_keep_the_top_n() -> None:
    agg = Aggregator()
    split_run(agg, 2)
    st = build_status(agg, IngestStats(), 0, 1021.0)
    by_id = {a.actor_id: a for a in st.actors}
    assert set(by_id) == {ACME, BETA}
    assert list(by_id[BETA].job_ids) == ["s1", "s2", "s3", "s4"]
    assert [w.days for w in by_id[BETA].windows] == [7, 30, 90]
    assert by_id[BETA].cumulative_flop_estimate == pytest.approx(8 * 10.0 * H100.peak_flops)
    assert {j.job_id: j.actor for j in st.jobs}["big"] == ACME

    snap = agg.snapshot(1021.0)

    class Families(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            return actor_families(snap, agg.actors, top_n=1)

    registry = CollectorRegistry()
    registry.register(Families())
    text = generate_latest(registry).decode()
    # Beta (4 jobs) ranks first; Acme is summed under "others".
    assert f'computewatch_actor_gpus{{actor="{BETA}"}} 4.0' in text
    assert 'computewatch_actor_gpus{actor="others"} 2.0' in text
    assert ACME not in text
    assert 'computewatch_actor_cumulative_flop{actor="others",window="90d"}' in text
    assert "computewatch_actors 2.0" in text
    assert not math.isnan(by_id[ACME].cumulative_flop_upper_bound)


def test_the_halt_command_takes_an_actor_scope() -> None:
    import click

    from computewatch.cli_control import parse_scope

    scope = parse_scope((f"actor:{ACME}", f"actor:{BETA}"))
    assert scope.kind == control_pb2.SCOPE_KIND_ACTOR
    assert list(scope.actor_ids) == [ACME, BETA]
    with pytest.raises(click.BadParameter, match="one kind per halt"):
        parse_scope((f"actor:{ACME}", "job:4242"))


def test_the_status_command_shows_every_actor() -> None:
    from computewatch.cli_status import render_status

    agg = Aggregator()
    split_run(agg, 2)
    text = render_status(build_status(agg, IngestStats(), 0, 1021.0))
    rows = [line for line in text.splitlines() if line.startswith((ACME, BETA))]
    assert [r.split()[0] for r in rows] == [BETA, ACME]  # ids sorted
    assert rows[0].split()[-2:] == ["4", "4"]  # Beta: four GPUs, four running jobs


def test_a_node_naming_another_actor_for_a_job_is_counted_and_charges_follow() -> None:
    agg = Aggregator()
    agg.ingest(report("n1", {"j": BETA}, seq=1, sample=1000.0), 1, 1000.0)
    agg.ingest(report("n2", {"j": ACME}, seq=1, sample=1000.0), 2, 1000.0)
    assert agg.actors.conflicts == 1
    assert agg.actors.actor_of("j") == ACME
    # Charged where each report said: Beta keeps what it was charged.
    snap = agg.snapshot(1000.5)
    assert snap.get(Scope.ACTOR, BETA, "cumulative_flop") == pytest.approx(10 * H100.peak_flops)


def test_a_dry_run_over_a_recorded_ledger_shows_the_split_run(tmp_path: Path) -> None:
    """``rules replay``: the actor rule fires on a real ledger file where each of
    Beta's jobs on two nodes stays under the job line."""
    import asyncio

    from collector.rules.replay import replay_ledger
    from collector.store.ledger import Entry, Ledger
    from protos import dsse
    from protos.keys import PrivateKey
    from tests.support import Node

    line = 15.0 * H100.peak_flops  # each job: 10 s at peak; Beta's two: 20 s
    path = tmp_path / "ledger.db"
    nodes = [Node("n1", PrivateKey.generate()), Node("n2", PrivateKey.generate())]
    now = [0]

    async def record() -> None:
        ledger = Ledger(path, clock_ns=lambda: now[0])
        for t in range(10):
            now[0] = int((1_750_000_000 + t) * 1e9)
            for node, job in zip(nodes, ("b1", "b2"), strict=True):
                g = gpu(0, util=100.0, job=job, pid=7)
                g.processes[0].actor = BETA
                r = node.report([g])
                r.jobs.add(job_id=job, actor=BETA)
                data = node.seal(r)
                await ledger.append(
                    Entry(
                        data,
                        dsse.REPORT_TYPE,
                        node_id=node.node_id,
                        keyid=node.key.keyid,
                        sequence=node.sequence,
                        digest=dsse.digest(data),
                    )
                )
        await ledger.close()

    asyncio.run(record())
    pack = tmp_path / "actors-test.yaml"
    pack.write_text(SPLIT_RUN_PACK.format(line=line, density=10 * H100.peak_flops))
    result = replay_ledger(path, load_packs([pack]))
    fired = {(d.rule.id, d.key) for d in result.decisions if d.kind is DecisionKind.FIRE}
    assert ("split-run", BETA) in fired
    assert not any(rule == "job-line" for rule, _ in fired)
