"""Job lineage for one tick: ancestors, descendants and lineage compute.

``Snapshot.lineage`` maps a job to the jobs it started from (its parents).
From it, per tick and only when a rule asks:

- ``lineage_flop(job)``: the job's ``cumulative_flop`` plus that of every
  ancestor, each counted once (a diamond counts the shared ancestor once; a
  cycle in declared lineage is cut). California SB 53 and the New York RAISE
  Act count the compute of a fine-tune's base model. When some ancestor has
  no figure, the sum is a lower bound: good enough to show ``>`` or ``>=``,
  unknown for ``<`` and ``<=``.
- ``descendants(job)``: every job that declares the job as an ancestor, the
  targets of a rule with ``lineage: descendants``.
"""

from __future__ import annotations

from collector.accounting.snapshot import Scope, Snapshot

_CUMULATIVE = "cumulative_flop"
_CUMULATIVE_UPPER = "cumulative_flop_upper_bound"
_UNMEASURED = "unmeasured_gpu_seconds"


class LineageView:
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._ancestors: dict[str, tuple[str, ...]] = {}
        self._children: dict[str, list[str]] | None = None
        # (job, lower_bound_ok, upper) -> sum: several rules read the same figure.
        self._sums: dict[tuple[str, bool, bool], float | None] = {}

    def ancestors(self, job: str) -> tuple[str, ...]:
        """Every ancestor of ``job`` (breadth first, each once, never ``job``)."""
        cached = self._ancestors.get(job)
        if cached is not None:
            return cached
        lineage = self._snapshot.lineage
        seen = {job}
        order: list[str] = []
        frontier = list(lineage.get(job, ()))
        while frontier:
            nxt: list[str] = []
            for parent in frontier:
                if parent not in seen:
                    seen.add(parent)
                    order.append(parent)
                    nxt.extend(lineage.get(parent, ()))
            frontier = nxt
        result = tuple(order)
        self._ancestors[job] = result
        return result

    def descendants(self, job: str) -> tuple[str, ...]:
        """Every job descended from ``job``, sorted."""
        if self._children is None:
            children: dict[str, list[str]] = {}
            for child, parents in self._snapshot.lineage.items():
                for parent in parents:
                    children.setdefault(parent, []).append(child)
            self._children = children
        seen = {job}
        frontier = [job]
        while frontier:
            nxt: list[str] = []
            for j in frontier:
                for c in self._children.get(j, ()):
                    if c not in seen:
                        seen.add(c)
                        nxt.append(c)
            frontier = nxt
        seen.discard(job)
        return tuple(sorted(seen))

    def _flop(self, job: str, metric: str = _CUMULATIVE) -> float | None:
        return self._snapshot.values.get((Scope.JOB, job), {}).get(metric)

    def lineage_unmeasured(self, job: str) -> float | None:
        """Unmeasured GPU-seconds of ``job`` and its ancestors (None: none known)."""
        known = [
            v for j in (job, *self.ancestors(job)) if (v := self._flop(j, _UNMEASURED)) is not None
        ]
        return sum(known) if known else None

    def ancestors_without_data(self, job: str) -> int:
        return sum(1 for a in self.ancestors(job) if self._flop(a) is None)

    def lineage_flop(self, job: str, *, lower_bound_ok: bool, upper: bool = False) -> float | None:
        """Cumulative FLOP of ``job`` and its ancestors (the estimate, or with
        ``upper`` the upper bound); None when unknown."""
        key = (job, lower_bound_ok, upper)
        if key in self._sums:
            return self._sums[key]
        metric = _CUMULATIVE_UPPER if upper else _CUMULATIVE
        value = self._lineage_flop(job, lower_bound_ok=lower_bound_ok, metric=metric)
        self._sums[key] = value
        return value

    def _lineage_flop(self, job: str, *, lower_bound_ok: bool, metric: str) -> float | None:
        own = self._flop(job, metric)
        if own is None:
            return None
        total = own
        for ancestor in self.ancestors(job):
            value = self._flop(ancestor, metric)
            if value is None:
                if not lower_bound_ok:
                    return None
                continue
            total += value
        return total

    def lineage_evidence(self, job: str) -> tuple[int, ...]:
        evidence = self._snapshot.evidence
        indices = set(evidence.get((Scope.JOB, job), ()))
        for ancestor in self.ancestors(job):
            indices.update(evidence.get((Scope.JOB, ancestor), ()))
        return tuple(sorted(indices))
