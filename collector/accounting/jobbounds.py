"""Bounds on the job state a node can make the collector hold.

Job states live in the aggregator's memory. A node's signed reports name the
jobs it runs, so one enrolled key could grow that memory without end (new job
ids in every report), and replay after a restart would rebuild it. This book
keeps three bounds:

- ``max_jobs_per_node``: job states one node has named that are still held.
  Making room first forgets that node's ended jobs (oldest first); a report
  that still does not fit is refused (``NodeJobsLimitError``).
- ``max_job_states``: job states held in all. Making room forgets the oldest
  ended jobs of any node; when none has ended the report is refused
  (``JobStatesLimitError``).
- ``ended_job_ttl_seconds``: a job no node has run for this long is forgotten.

An *ended* job is one that no node's last report shows running and that has
no capability evaluation (those come from authorities and decide halts; they
are never forgotten). Forgetting drops only the in-memory figures: the reports
they were computed from stay in the ledger.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from itertools import islice

from protos.errors import ConfigError, JobStatesLimitError, NodeJobsLimitError


@dataclass(frozen=True)
class JobLimits:
    max_jobs_per_node: int = 1024
    max_job_states: int = 20_000
    ended_job_ttl_seconds: float = 86_400.0

    def __post_init__(self) -> None:
        if self.max_jobs_per_node < 1 or self.max_job_states < 1:
            raise ConfigError("job limits must be at least 1")
        if not 0 < self.ended_job_ttl_seconds < float("inf"):
            raise ConfigError("ended_job_ttl_seconds must be positive and finite")


class JobBounds:
    """Which node named which job, and which jobs ended when."""

    def __init__(self, limits: JobLimits | None = None) -> None:
        self.limits = limits or JobLimits()
        # job id -> time it ended, oldest first (insertion order).
        self._ended: dict[str, float] = {}
        self._node_jobs: dict[str, set[str]] = {}
        self._reporters: dict[str, set[str]] = {}
        # Job states forgotten: aged out (past the TTL, or the oldest while over
        # max_job_states) and evicted early to make room for a report's jobs.
        self.aged_out = 0
        self.evicted = 0

    def node_jobs(self, node_id: str) -> int:
        return len(self._node_jobs.get(node_id, ()))

    @property
    def ended_jobs(self) -> int:
        return len(self._ended)

    def named(self, node_id: str, job_id: str) -> None:
        self._node_jobs.setdefault(node_id, set()).add(job_id)
        self._reporters.setdefault(job_id, set()).add(node_id)

    def running(self, job_id: str) -> None:
        self._ended.pop(job_id, None)

    def ended(self, job_id: str, at: float) -> None:
        if job_id not in self._ended:
            self._ended[job_id] = at

    def forget(self, job_id: str) -> None:
        self._ended.pop(job_id, None)
        for node_id in self._reporters.pop(job_id, ()):
            jobs = self._node_jobs.get(node_id)
            if jobs is not None:
                jobs.discard(job_id)
                if not jobs:
                    del self._node_jobs[node_id]

    def expired(self, now: float, held: int) -> list[str]:
        """Ended jobs to forget at ``now``: past the TTL, or the oldest while
        more than ``max_job_states`` are ``held``."""
        cutoff = now - self.limits.ended_job_ttl_seconds
        out: list[str] = []
        for job_id, at in self._ended.items():
            if at > cutoff and held - len(out) <= self.limits.max_job_states:
                break
            out.append(job_id)
        self.aged_out += len(out)
        return out

    def make_room(self, node_id: str, job_ids: Collection[str], held: int) -> list[str]:
        """Ended jobs to forget so that ``node_id`` may name ``job_ids``; raise
        a LimitError when forgetting ended jobs is not enough."""
        mine = self._node_jobs.get(node_id, set())
        new = [j for j in job_ids if j not in mine]
        if not new:
            return []
        # Never forget a job this very report runs again.
        wanted = set(job_ids)
        drop: list[str] = []
        over = len(mine) + len(new) - self.limits.max_jobs_per_node
        if over > 0:
            drop = list(islice((j for j in self._ended if j in mine and j not in wanted), over))
            if len(drop) < over:
                raise NodeJobsLimitError(
                    f"node {node_id} would hold {len(mine) + len(new)} jobs; the limit is"
                    f" {self.limits.max_jobs_per_node} and only {len(drop)} of its jobs ended"
                )
        fresh = sum(1 for j in new if j not in self._reporters)
        over = held - len(drop) + fresh - self.limits.max_job_states
        if over > 0:
            dropping = set(drop)
            more = list(
                islice((j for j in self._ended if j not in dropping and j not in wanted), over)
            )
            if len(more) < over:
                raise JobStatesLimitError(
                    f"the collector holds {held} job states (limit"
                    f" {self.limits.max_job_states}) and none more has ended"
                )
            drop.extend(more)
        self.evicted += len(drop)
        return drop
