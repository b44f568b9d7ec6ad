"""Job ids that agent and collector must read the same way.

A process no rule attributes belongs to its node's ``unattributed`` pseudo-job,
``unattributed@<node_id>``: one per node, never one pooled across nodes, so a
job-scope figure or halt on it never reaches past its node. Agents before this
rule sent the bare ``unattributed``; the collector reads that, an empty id and
any ``unattributed@<other node>`` a node claims as the reporting node's own.
"""

from __future__ import annotations

UNATTRIBUTED = "unattributed"
_PREFIX = UNATTRIBUTED + "@"


def unattributed_id(node_id: str) -> str:
    """The ``unattributed`` pseudo-job of ``node_id`` (the bare name when no node is given)."""
    return f"{_PREFIX}{node_id}" if node_id else UNATTRIBUTED


def is_unattributed(job_id: str) -> bool:
    """Whether ``job_id`` is an ``unattributed`` pseudo-job (of any node) or empty."""
    return not job_id or job_id == UNATTRIBUTED or job_id.startswith(_PREFIX)


def unattributed_node(job_id: str) -> str | None:
    """The node of an ``unattributed@<node>`` id; None for any other id (bare included)."""
    if job_id.startswith(_PREFIX) and len(job_id) > len(_PREFIX):
        return job_id[len(_PREFIX) :]
    return None


def job_key(job_id: str, node_id: str) -> str:
    """The job a process on ``node_id`` counts under: its own id, or the node's
    ``unattributed`` pseudo-job when it has none (whatever node it claims)."""
    return unattributed_id(node_id) if is_unattributed(job_id) else job_id
