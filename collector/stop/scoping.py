"""Turn "what a rule or an authority named" into a directive's Scope.

The collector always fills ``scope.node_ids`` with the nodes it resolved, so
an agent checks "this directive names me" by ``node_id in scope.node_ids``
(or kind CLUSTER), without knowing jobs or other nodes' GPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from collector.accounting.aggregate import Aggregator
from collector.accounting.snapshot import CLUSTER_KEY, Scope
from protos.actors import valid_actor_id
from protos.computewatch.v1 import control_pb2
from protos.errors import ScopeError
from protos.jobs import UNATTRIBUTED, unattributed_node

MAX_SCOPE_ITEMS = 10_000
MAX_NAME = 256

_KINDS = {
    Scope.CLUSTER: control_pb2.SCOPE_KIND_CLUSTER,
    Scope.NODE: control_pb2.SCOPE_KIND_NODE,
    Scope.JOB: control_pb2.SCOPE_KIND_JOB,
    Scope.GPU: control_pb2.SCOPE_KIND_GPU,
    Scope.ACTOR: control_pb2.SCOPE_KIND_ACTOR,
}


def names_node(scope: control_pb2.Scope, node_id: str) -> bool:
    """Whether ``scope`` covers ``node_id`` (the agent's own check)."""
    return scope.kind == control_pb2.SCOPE_KIND_CLUSTER or node_id in scope.node_ids


def target_key(scope: control_pb2.Scope) -> tuple[int, tuple[str, ...]]:
    """What a scope targets, comparable across directives (for de-duplication)."""
    kind = scope.kind
    if kind == control_pb2.SCOPE_KIND_CLUSTER:
        return kind, (CLUSTER_KEY,)
    if kind == control_pb2.SCOPE_KIND_JOB:
        return kind, tuple(sorted(scope.job_ids))
    if kind == control_pb2.SCOPE_KIND_GPU:
        return kind, tuple(sorted(scope.gpu_uuids))
    if kind == control_pb2.SCOPE_KIND_ACTOR:
        return kind, tuple(sorted(scope.actor_ids))
    return kind, tuple(sorted(scope.node_ids))


def describe(scope: control_pb2.Scope) -> str:
    """``cluster``, ``node:a,b``, ``job:4242``, ``gpu:GPU-...``, ``actor:lei:...``
    (for logs and the CLI)."""
    kind, items = target_key(scope)
    if kind == control_pb2.SCOPE_KIND_CLUSTER:
        return "cluster"
    name = control_pb2.ScopeKind.Name(kind).removeprefix("SCOPE_KIND_").lower()
    return f"{name}:{','.join(items)}"


class ScopeResolver:
    """Resolves targets to nodes from the enrolment table and live aggregates."""

    def __init__(self, aggregator: Aggregator, enrolled: Callable[[], list[str]]) -> None:
        self._agg = aggregator
        self._enrolled = enrolled

    def known_nodes(self) -> list[str]:
        return sorted(set(self._enrolled()) | set(self._agg.nodes))

    def for_targets(self, scope: Scope, targets: Iterable[str]) -> control_pb2.Scope:
        """The Scope for a rule decision's targets at ``scope``."""
        items = sorted(set(targets))
        if scope is Scope.CLUSTER:
            return self.cluster()
        if scope is Scope.NODE:
            return control_pb2.Scope(kind=_KINDS[scope], node_ids=items)
        if scope is Scope.JOB:
            return self.jobs(items)
        if scope is Scope.ACTOR:
            return self.actors(items)
        return self.gpus(items)

    def cluster(self) -> control_pb2.Scope:
        return control_pb2.Scope(kind=control_pb2.SCOPE_KIND_CLUSTER, node_ids=self.known_nodes())

    def jobs(self, job_ids: Iterable[str]) -> control_pb2.Scope:
        """The jobs and every node whose latest report shows one of them.

        An ``unattributed@<node>`` pseudo-job reaches its own node only, and the
        bare ``unattributed`` (a name no node's processes count under) none.
        """
        jobs = sorted(set(job_ids))
        nodes: set[str] = set()
        for job_id in jobs:
            state = self._agg.jobs.get(job_id)
            if state is None or job_id == UNATTRIBUTED:
                continue
            own = unattributed_node(job_id)
            nodes.update(n for n in state.per_node if own is None or n == own)
        return control_pb2.Scope(
            kind=control_pb2.SCOPE_KIND_JOB, job_ids=jobs, node_ids=sorted(nodes)
        )

    def actors(self, actor_ids: Iterable[str]) -> control_pb2.Scope:
        """The actors, and every known node: an actor's jobs may run, or start, on
        any node, and each agent holds the processes its reports name as the
        actor's (``agent.enforce.holds``). ``job_ids``: the actors' jobs running
        now, for the record."""
        actors = sorted(set(actor_ids))
        wanted = set(actors)
        jobs = sorted(
            j
            for j, state in list(self._agg.jobs.items())
            if state.per_node and self._agg.actors.actor_of(j) in wanted
        )
        return control_pb2.Scope(
            kind=control_pb2.SCOPE_KIND_ACTOR,
            actor_ids=actors,
            job_ids=jobs[:MAX_SCOPE_ITEMS],
            node_ids=self.known_nodes(),
        )

    def gpus(self, uuids: Iterable[str]) -> control_pb2.Scope:
        """The GPUs and the nodes that hold them (per their latest report)."""
        wanted = set(uuids)
        nodes = sorted(
            n.node_id for n in self._agg.nodes.values() if any(g.uuid in wanted for g in n.gpus)
        )
        return control_pb2.Scope(
            kind=control_pb2.SCOPE_KIND_GPU, gpu_uuids=sorted(wanted), node_ids=nodes
        )

    def requested(self, scope: control_pb2.Scope) -> control_pb2.Scope:
        """Validate and resolve a scope an authority asked for (a manual halt).

        Raises ScopeError naming what is wrong: no kind, no targets, too many,
        an unknown node, or targets no node holds.
        """
        kind = scope.kind
        lists = (scope.node_ids, scope.job_ids, scope.gpu_uuids, scope.actor_ids)
        if any(len(items) > MAX_SCOPE_ITEMS for items in lists):
            raise ScopeError(f"scope names more than {MAX_SCOPE_ITEMS} items")
        if any(not item or len(item) > MAX_NAME for items in lists for item in items):
            raise ScopeError(f"scope holds an empty name or one longer than {MAX_NAME}")
        if kind == control_pb2.SCOPE_KIND_CLUSTER:
            resolved = self.cluster()
            if not resolved.node_ids:
                raise ScopeError("cluster scope: no node is enrolled")
            return resolved
        if kind == control_pb2.SCOPE_KIND_NODE:
            if not scope.node_ids:
                raise ScopeError("node scope names no node")
            known = set(self.known_nodes())
            unknown = sorted(set(scope.node_ids) - known)
            if unknown:
                raise ScopeError(f"node scope names unknown nodes: {', '.join(unknown[:10])}")
            return control_pb2.Scope(kind=kind, node_ids=sorted(set(scope.node_ids)))
        if kind == control_pb2.SCOPE_KIND_JOB:
            if not scope.job_ids:
                raise ScopeError("job scope names no job")
            if UNATTRIBUTED in scope.job_ids:
                raise ScopeError(
                    "job scope names 'unattributed', which spans no node: name a node's "
                    "'unattributed@<node_id>' or the node itself"
                )
            resolved = self.jobs(scope.job_ids)
            if not resolved.node_ids:
                raise ScopeError(
                    f"job scope: no node reports jobs {', '.join(resolved.job_ids[:10])}"
                )
            return resolved
        if kind == control_pb2.SCOPE_KIND_GPU:
            if not scope.gpu_uuids:
                raise ScopeError("gpu scope names no GPU")
            resolved = self.gpus(scope.gpu_uuids)
            if not resolved.node_ids:
                raise ScopeError(
                    f"gpu scope: no node reports GPUs {', '.join(resolved.gpu_uuids[:10])}"
                )
            return resolved
        if kind == control_pb2.SCOPE_KIND_ACTOR:
            if not scope.actor_ids:
                raise ScopeError("actor scope names no actor")
            bad = sorted(a for a in scope.actor_ids if not valid_actor_id(a))
            if bad:
                raise ScopeError(
                    f"actor scope: malformed actor ids {', '.join(bad[:10])} "
                    "(expected lei:<LEI>, c:<32 hex>, org:<name> or unknown)"
                )
            resolved = self.actors(scope.actor_ids)
            if not resolved.node_ids:
                raise ScopeError("actor scope: no node is enrolled")
            return resolved
        raise ScopeError("scope kind is unset: expected cluster, node, job, gpu or actor")
