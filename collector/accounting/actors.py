"""Per-actor figures: who holds the compute, across all of its jobs and nodes.

Every job counts under the actor its reports name (``JobInfo.actor``,
``protos.actors``); a job without one, a pseudo-job (``unattributed@<node>``)
and a malformed id count under ``unknown``, never under a named actor. What a
job's cumulative figures gain from one report (estimate, upper bound, lower
bound, measured and unmeasured GPU-seconds, gaps included) is charged to the
job's actor at that moment, so a job that changes actor keeps its past where
it was. An actor's figures have the same interval form as a job's:

- lifetime ``cumulative_flop`` (+ ``_upper_bound``) and rolling windows
  ``cumulative_<N>d_flop`` for ``WINDOW_DAYS``, summed from hourly buckets on
  the collector's clock (a window reaches back N days rounded *up* to the
  hour, so it never undercounts); a silent node's pending time adds to every
  upper bound, as for its jobs;
- concurrent ``achieved_flops``, ``allocated_flops``, ``gpus``: the sums of its
  running jobs' figures (a GPU shared by two jobs of one actor counts its
  upper bound twice: still a bound);
- ``unmeasured_gpu_seconds``, ``jobs`` (running), the worst method of its jobs
  and the evidence of its jobs' latest reports.

At most ``MAX_ACTORS`` actors are tracked; charges of any further actor count
under ``unknown`` (``overflow`` counts them, and a warning is logged once).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from collector.accounting.state import JobState, worst_method
from protos.actors import UNKNOWN_ACTOR, actor_key, valid_actor_id
from protos.computewatch.v1 import telemetry_pb2
from protos.jobs import is_unattributed

log = logging.getLogger(__name__)

WINDOW_DAYS = (7, 30, 90)
BUCKET_SECONDS = 3600
MAX_ACTORS = 4096
MAX_JOBS = 100_000
_EVIDENCE = 32

Totals = tuple[float, float, float, float, float]  # estimate, upper, lower, measured, unmeasured


def window_metric(days: int) -> str:
    return f"cumulative_{days}d_flop"


def job_totals(job: JobState) -> Totals:
    return (
        job.cumulative_flop,
        job.cumulative_flop_upper,
        job.cumulative_flop_lower,
        job.measured_gpu_seconds,
        job.unmeasured_gpu_seconds,
    )


@dataclass
class ActorState:
    actor: str
    # estimate, upper, lower, measured seconds, unmeasured seconds (lifetime)
    lifetime: list[float] = field(default_factory=lambda: [0.0] * 5)
    # hour index -> [estimate, upper, measured seconds]
    buckets: dict[int, list[float]] = field(default_factory=dict)
    methods: set[str] = field(default_factory=set)
    pruned_hour: int = -1

    def charge(self, delta: Totals, hour: int) -> None:
        for i, d in enumerate(delta):
            self.lifetime[i] += d
        bucket = self.buckets.setdefault(hour, [0.0, 0.0, 0.0])
        bucket[0] += delta[0]
        bucket[1] += delta[1]
        bucket[2] += delta[3]

    def windows(self, hour: int) -> dict[int, tuple[float, float]]:
        """days -> (estimate, upper) of the buckets in the last ``days``, for
        every window of ``WINDOW_DAYS`` in one pass over the buckets."""
        firsts = [(days, hour - days * 24) for days in WINDOW_DAYS]
        sums = {days: [0.0, 0.0] for days in WINDOW_DAYS}
        for h, (e, u, _) in list(self.buckets.items()):
            for days, first in firsts:
                if h >= first:
                    acc = sums[days]
                    acc[0] += e
                    acc[1] += u
        return {days: (acc[0], acc[1]) for days, acc in sums.items()}

    def prune(self, hour: int) -> None:
        """Drop buckets older than the longest window (once per hour)."""
        if hour == self.pruned_hour:
            return
        self.pruned_hour = hour
        first = hour - max(WINDOW_DAYS) * 24
        for h in [h for h in self.buckets if h < first]:
            del self.buckets[h]


class ActorBook:
    """Job -> actor, and each actor's charged figures (module docstring)."""

    def __init__(self) -> None:
        self.job_actor: dict[str, str] = {}
        self.actors: dict[str, ActorState] = {}
        # Reports whose actor id was malformed (counted under unknown).
        self.invalid = 0
        # Charges of actors beyond MAX_ACTORS (counted under unknown).
        self.overflow = 0
        # Reports that named another actor for a job than the one it had.
        self.conflicts = 0

    def assign(self, report: telemetry_pb2.NodeReport) -> None:
        """Note the actor of every job ``report`` declares."""
        for info in report.jobs:
            if is_unattributed(info.job_id):
                continue
            actor = actor_key(info.actor)
            before = self.job_actor.get(info.job_id)
            if before == actor:
                continue  # unchanged (and checked when first seen)
            if not valid_actor_id(actor):
                self.invalid += 1
                log.warning(
                    "node %s job %s: malformed actor id %r counted as unknown",
                    report.node_id,
                    info.job_id,
                    info.actor[:64],
                )
                actor = UNKNOWN_ACTOR
            if before is not None and UNKNOWN_ACTOR not in (before, actor):
                # Nodes disagree on who a job runs for (or its actor changed):
                # later charges follow the newest report; said, and counted.
                self.conflicts += 1
                log.warning(
                    "node %s job %s: actor %s, was %s", report.node_id, info.job_id, actor, before
                )
            if before is None and len(self.job_actor) >= MAX_JOBS:
                self.job_actor.pop(next(iter(self.job_actor)))
            self.job_actor[info.job_id] = actor

    def actor_of(self, job_id: str) -> str:
        return self.job_actor.get(job_id, UNKNOWN_ACTOR)

    def _state(self, actor: str) -> ActorState:
        state = self.actors.get(actor)
        if state is None:
            if len(self.actors) >= MAX_ACTORS and actor != UNKNOWN_ACTOR:
                if not self.overflow:
                    log.warning("more than %d actors: further ones count as unknown", MAX_ACTORS)
                self.overflow += 1
                return self._state(UNKNOWN_ACTOR)
            state = self.actors[actor] = ActorState(actor)
        return state

    def charge(
        self,
        before: Mapping[str, Totals],
        jobs: Mapping[str, JobState],
        touched: Iterable[str],
        at: float,
    ) -> None:
        """Charge what each ``touched`` job gained since ``before`` to its actor."""
        hour = int(at // BUCKET_SECONDS)
        zero: Totals = (0.0, 0.0, 0.0, 0.0, 0.0)
        for job_id in touched:
            job = jobs.get(job_id)
            if job is None:
                continue
            old = before.get(job_id, zero)
            new = job_totals(job)
            delta: Totals = (
                new[0] - old[0],
                new[1] - old[1],
                new[2] - old[2],
                new[3] - old[3],
                new[4] - old[4],
            )
            if not any(delta):
                continue
            state = self._state(self.actor_of(job_id))
            state.charge(delta, hour)
            state.methods |= job.methods
            state.prune(hour)


def _sum(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def actor_values(  # noqa: PLR0917 - one snapshot's job maps, passed as they are
    book: ActorBook,
    job_values: Mapping[str, Mapping[str, float | None]],
    job_evidence: Mapping[str, tuple[int, ...]],
    job_methods: Mapping[str, str],
    jobs: Mapping[str, JobState],
    now: float,
) -> tuple[dict[str, dict[str, float | None]], dict[str, tuple[int, ...]], dict[str, str]]:
    """Actor scope figures at ``now``: (values, evidence, method) by actor id."""
    members: dict[str, list[str]] = {}
    for job_id in job_values:
        members.setdefault(book.actor_of(job_id), []).append(job_id)
    hour = int(now // BUCKET_SECONDS)
    values: dict[str, dict[str, float | None]] = {}
    evidence: dict[str, tuple[int, ...]] = {}
    methods: dict[str, str] = {}
    for actor in sorted(set(book.actors) | set(members)):
        state = book.actors.get(actor) or ActorState(actor)
        mine = members.get(actor, [])
        figures = [job_values[j] for j in mine]
        running = [f for f in figures if (f.get("gpus") or 0.0) > 0]
        # Pending (silent-node) time the jobs' snapshot figures add to their state.
        pending_upper = sum(
            (job_values[j].get("cumulative_flop_upper_bound") or 0.0)
            - jobs[j].cumulative_flop_upper
            for j in mine
            if j in jobs
        )
        pending_unmeasured = sum(
            (job_values[j].get("unmeasured_gpu_seconds") or 0.0) - jobs[j].unmeasured_gpu_seconds
            for j in mine
            if j in jobs
        )
        est, upper, _, measured, unmeasured = state.lifetime
        unknown_estimate = measured <= 0 and unmeasured + pending_unmeasured > 0
        row: dict[str, float | None] = {
            "cumulative_flop": None if unknown_estimate else est,
            "cumulative_flop_upper_bound": upper + pending_upper,
            "achieved_flops": _sum(f.get("achieved_flops") for f in running),
            "achieved_flops_upper_bound": sum(
                f.get("achieved_flops_upper_bound") or 0.0 for f in figures
            ),
            "allocated_flops": sum(f.get("allocated_flops") or 0.0 for f in running),
            "gpus": float(sum(f.get("gpus") or 0.0 for f in running)),
            "jobs": float(len(running)),
            "unmeasured_gpu_seconds": unmeasured + pending_unmeasured,
        }
        for days, (w_est, w_upper) in state.windows(hour).items():
            name = window_metric(days)
            row[name] = None if unknown_estimate else w_est
            row[name + "_upper_bound"] = w_upper + pending_upper
        values[actor] = row
        evidence[actor] = tuple(sorted({i for j in mine for i in job_evidence.get(j, ())}))[
            -_EVIDENCE:
        ]
        job_method = {job_methods[j] for j in mine if j in job_methods}
        methods[actor] = worst_method(state.methods | job_method)
    return values, evidence, methods


__all__ = [
    "MAX_ACTORS",
    "WINDOW_DAYS",
    "ActorBook",
    "ActorState",
    "actor_values",
    "job_totals",
    "window_metric",
]
