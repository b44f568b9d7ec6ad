"""Job state is bounded: ended jobs age out, per-node and total limits make
room from ended jobs or refuse, and the cluster's cumulative FLOP survives."""

from __future__ import annotations

import pytest

from collector.accounting.aggregate import Aggregator
from collector.accounting.jobbounds import JobLimits
from collector.accounting.snapshot import CLUSTER_KEY, Scope
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import ConfigError, JobStatesLimitError, NodeJobsLimitError
from tests.support import gpu


def report(node: str, jobs: list[str], seq: int) -> telemetry_pb2.NodeReport:
    gpus = [gpu(i, job=job, pid=100 + i) for i, job in enumerate(jobs)]
    return telemetry_pb2.NodeReport(node_id=node, sequence=seq, interval_seconds=1.0, gpus=gpus)


def cluster_flop(agg: Aggregator, now: float) -> float:
    value = agg.snapshot(now).values[(Scope.CLUSTER, CLUSTER_KEY)]["cumulative_flop"]
    assert value is not None
    return value


def test_an_ended_job_ages_out_after_the_ttl_and_its_flop_stays_in_the_cluster_total() -> None:
    agg = Aggregator(job_limits=JobLimits(ended_job_ttl_seconds=100.0))
    agg.ingest(report("n1", ["old"], 1), 0, 0.0)
    agg.ingest(report("n1", ["old"], 2), 1, 1.0)
    total = cluster_flop(agg, 1.0)
    assert total > 0
    agg.ingest(report("n1", [], 3), 2, 2.0)  # "old" ended at t=2
    assert "old" in agg.jobs
    agg.age_out(101.0)
    assert "old" in agg.jobs  # not yet: ended 99 s ago
    agg.age_out(102.5)
    assert "old" not in agg.jobs
    assert agg.bounds.aged_out == 1
    assert cluster_flop(agg, 102.5) == pytest.approx(total)


def test_a_running_job_never_ages_out_and_an_evaluated_job_is_kept() -> None:
    agg = Aggregator(job_limits=JobLimits(ended_job_ttl_seconds=10.0))
    agg.ingest(report("n1", ["run"], 1), 0, 0.0)
    agg.ingest_evaluation("judged", "bio", 0.9, 1)
    info = telemetry_pb2.NodeReport(node_id="n1", sequence=2, interval_seconds=1.0)
    info.gpus.append(gpu(0, job="run"))
    info.jobs.add(job_id="judged", parent_job_ids=["run"])
    agg.ingest(info, 2, 1.0)
    agg.age_out(1000.0)
    assert {"run", "judged"} <= agg.jobs.keys()


def test_ingest_ages_out_on_report_time_so_replay_holds_the_same_bounded_set() -> None:
    agg = Aggregator(job_limits=JobLimits(ended_job_ttl_seconds=5.0))
    # One new job per report, each ending at the next: a replay of this
    # history must not hold every job it ever saw.
    for seq in range(1, 101):
        agg.ingest(report("n1", [f"j{seq}"], seq), seq, float(seq))
    assert len(agg.jobs) <= 7
    assert f"j{100}" in agg.jobs


def test_a_node_over_its_job_limit_is_refused_until_its_jobs_end() -> None:
    agg = Aggregator(job_limits=JobLimits(max_jobs_per_node=4, max_job_states=100))
    agg.admit_jobs("n1", {"a", "b", "c"})
    agg.ingest(report("n1", ["a", "b", "c"], 1), 0, 0.0)
    with pytest.raises(NodeJobsLimitError, match="limit is 4"):
        agg.admit_jobs("n1", {"a", "d", "e"})
    # Another node is not limited by n1's jobs.
    agg.admit_jobs("n2", {"x", "y", "z", "w"})
    # n1's "a" and "b" end: the oldest is forgotten to make just enough room.
    agg.ingest(report("n1", ["c"], 2), 1, 1.0)
    agg.admit_jobs("n1", {"c", "d", "e"})
    assert "a" not in agg.jobs
    assert "b" in agg.jobs
    assert agg.bounds.evicted == 1
    agg.ingest(report("n1", ["c", "d", "e"], 3), 2, 2.0)
    assert agg.bounds.node_jobs("n1") == 4


def test_the_total_limit_forgets_the_oldest_ended_jobs_then_refuses() -> None:
    agg = Aggregator(job_limits=JobLimits(max_jobs_per_node=100, max_job_states=3))
    agg.ingest(report("n1", ["a", "b", "c"], 1), 0, 0.0)
    with pytest.raises(JobStatesLimitError, match="holds 3 job states"):
        agg.admit_jobs("n2", {"d"})
    agg.ingest(report("n1", ["c"], 2), 1, 1.0)  # a and b end
    agg.admit_jobs("n2", {"d"})
    assert len(agg.jobs) == 2
    # Job ids already held need no room.
    agg.admit_jobs("n1", {"c"})


@pytest.mark.parametrize(
    "limits",
    [
        {"max_jobs_per_node": 0},
        {"max_job_states": 0},
        {"ended_job_ttl_seconds": float("nan")},
        {"ended_job_ttl_seconds": float("inf")},
    ],
)
def test_job_limits_refuse_nonsense(limits: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        JobLimits(**limits)  # type: ignore[arg-type]


def test_a_declared_job_that_is_declared_again_stays() -> None:
    agg = Aggregator(job_limits=JobLimits(ended_job_ttl_seconds=10.0))
    for seq in range(1, 6):
        info = telemetry_pb2.NodeReport(node_id="n1", sequence=seq, interval_seconds=1.0)
        info.jobs.add(job_id="declared", model_id="m")
        agg.ingest(info, seq, seq * 8.0)  # 8 s apart: each renews its TTL
    assert "declared" in agg.jobs
    agg.age_out(40.0 + 10.5)
    assert "declared" not in agg.jobs


def test_making_room_never_forgets_a_job_the_report_runs_again() -> None:
    agg = Aggregator(job_limits=JobLimits(max_jobs_per_node=3, max_job_states=100))
    agg.ingest(report("n1", ["a-back", "z"], 1), 0, 0.0)
    agg.ingest(report("n1", ["c"], 2), 1, 1.0)  # "a-back" and "z" end
    flop = agg.jobs["a-back"].cumulative_flop
    agg.admit_jobs("n1", {"a-back", "c", "d"})  # room for "d": forget "z", not "a-back"
    assert "z" not in agg.jobs
    assert agg.jobs["a-back"].cumulative_flop == flop
    agg.ingest(report("n1", ["a-back", "c", "d"], 3), 2, 2.0)
    assert agg.jobs["a-back"].cumulative_flop > flop
