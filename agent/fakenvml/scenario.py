"""Scenario files for the fake NVML: nodes, GPU models, jobs, faults (YAML).

The format is documented in ``deploy/scenarios/README.md``. ``load_scenario``
turns a file into frozen dataclasses; every mistake is a
``protos.errors.ConfigError`` that names the file, the key path (for example
``jobs[2].utilization[1]``) and what was expected. Times are seconds from the
scenario's start.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from pathlib import Path

import yaml

from agent.fakenvml._check import Where
from agent.fakenvml._nodes import parse_fault, parse_node_entry
from agent.fakenvml.spec import (
    FAULT_KINDS,
    FAULTABLE_FUNCTIONS,
    PIPES,
    QOS_CLASSES,
    SCHEDULERS,
    Fault,
    GpuSpec,
    Job,
    Node,
    Scenario,
)
from protos.errors import ConfigError

__all__ = [
    "FAULTABLE_FUNCTIONS",
    "FAULT_KINDS",
    "Fault",
    "GpuSpec",
    "Job",
    "Node",
    "Scenario",
    "load_scenario",
    "parse_scenario",
]

_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_SLURM_ID = re.compile(r"[0-9]{1,20}")
_POD_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UNIT = re.compile(r"[A-Za-z0-9:_.@\\-]{1,200}\.(service|scope)")
_MAX_NODES = 10_000
_MAX_POINTS = 1_000
_POD_NAMESPACE = uuid.UUID("6f1c3a52-0d3e-4a4b-9a8e-3c9b7f0e2d11")


def load_scenario(path: Path | str) -> Scenario:
    """Read and check a scenario file. Raises ``ConfigError``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read scenario: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    return parse_scenario(data, source=str(p))


def parse_scenario(data: object, *, source: str = "<scenario>") -> Scenario:
    """Check already-parsed YAML (a mapping). Raises ``ConfigError``."""
    w = Where(source)
    top = w.mapping(
        "(top level)",
        data,
        allowed=frozenset(
            {
                "name",
                "duration_seconds",
                "interval_seconds",
                "driver_version",
                "nodes",
                "jobs",
                "faults",
            }
        ),
        required=frozenset({"name", "duration_seconds", "nodes"}),
    )
    name = w.string("name", top["name"])
    duration = w.number("duration_seconds", top["duration_seconds"], low=0, low_open=True)
    interval = w.number(
        "interval_seconds", top.get("interval_seconds", 1.0), low=0, low_open=True, high=duration
    )
    driver = w.string("driver_version", top.get("driver_version", "570.133.20"))
    nodes = _parse_nodes(w, top["nodes"])
    nodes = _attach_top_faults(w, top.get("faults", []), nodes)
    jobs = _parse_jobs(w, top.get("jobs", []), nodes, name)
    return Scenario(name, duration, interval, nodes, jobs, driver, source)


# --- nodes ---------------------------------------------------------------------------
def _parse_nodes(w: Where, raw: object) -> tuple[Node, ...]:
    nodes: list[Node] = []
    seen: set[str] = set()
    for i, entry in enumerate(w.list("nodes", raw, nonempty=True)):
        for node in parse_node_entry(w, f"nodes[{i}]", entry):
            if not _NODE_ID.fullmatch(node.id):
                w.fail(f"nodes[{i}].id", "letters, digits, '.', '_', ':', '-'", node.id)
            if node.id in seen:
                w.problem(f"nodes[{i}]", f"node id {node.id!r} appears twice")
            seen.add(node.id)
            nodes.append(node)
            if len(nodes) > _MAX_NODES:
                w.problem("nodes", f"more than {_MAX_NODES} nodes")
    return tuple(nodes)


def _attach_top_faults(w: Where, raw: object, nodes: tuple[Node, ...]) -> tuple[Node, ...]:
    by_id = {n.id: n for n in nodes}
    extra: dict[str, list[Fault]] = {}
    for i, entry in enumerate(w.list("faults", raw)):
        key = f"faults[{i}]"
        if not isinstance(entry, Mapping) or "node" not in entry:
            w.problem(key, "missing required key 'node'")
        node_id = w.string(f"{key}.node", entry["node"])
        if node_id not in by_id:
            w.fail(f"{key}.node", "the id of a node in this scenario", node_id)
        rest = {k: v for k, v in entry.items() if k != "node"}
        extra.setdefault(node_id, []).append(parse_fault(w, key, rest, len(by_id[node_id].gpus)))
    return tuple(
        Node(n.id, n.gpus, n.faults + tuple(extra.get(n.id, ()))) if n.id in extra else n
        for n in nodes
    )


# --- jobs ----------------------------------------------------------------------------
_JOB_KEYS = frozenset(
    {
        "id",
        "scheduler",
        "nodes",
        "node_prefix",
        "count",
        "gpus_per_node",
        "gpu_indices",
        "start",
        "end",
        "utilization",
        "tensor_fraction",
        "precision",
        "mig_slice",
        "memory_gib",
        "parents",
        "model_id",
        "pod_uid",
        "unit",
        "cgroup",
        "cgroup_driver",
        "qos",
        "uid",
        "comm",
        "mps",
    }
)


def _parse_jobs(w: Where, raw: object, nodes: tuple[Node, ...], name: str) -> tuple[Job, ...]:
    jobs: list[Job] = []
    seen: set[str] = set()
    for i, entry in enumerate(w.list("jobs", raw)):
        job = _parse_job(w, f"jobs[{i}]", entry, nodes, name)
        if job.id in seen:
            w.problem(f"jobs[{i}].id", f"job id {job.id!r} appears twice")
        seen.add(job.id)
        jobs.append(job)
    _check_lineage(w, jobs)
    return tuple(jobs)


def _parse_job(w: Where, key: str, raw: object, nodes: tuple[Node, ...], name: str) -> Job:
    m = w.mapping(key, raw, allowed=_JOB_KEYS, required=frozenset({"id"}))
    job_id = w.string(f"{key}.id", m["id"], allow_int=True)
    scheduler = w.choice(f"{key}.scheduler", m.get("scheduler", "slurm"), SCHEDULERS)
    if scheduler == "slurm" and not _SLURM_ID.fullmatch(job_id):
        w.fail(f"{key}.id", "a numeric Slurm job id", job_id)
    node_ids = _job_nodes(w, key, m, nodes)
    by_id = {n.id: n for n in nodes}
    gpu_indices = _job_gpus(w, key, m, [by_id[n] for n in node_ids])
    start = w.number(f"{key}.start", m.get("start", 0.0), low=0)
    end = None
    if m.get("end") is not None:
        end = w.number(f"{key}.end", m["end"], low=start, low_open=True)
    points = _utilization(w, f"{key}.utilization", m.get("utilization", [[0, 90]]))
    pod_uid = ""
    if scheduler == "kubernetes":
        pod_uid = str(uuid.uuid5(_POD_NAMESPACE, f"{name}/{job_id}"))
        if "pod_uid" in m:
            pod_uid = w.string(f"{key}.pod_uid", m["pod_uid"]).lower()
            if not _POD_UID.fullmatch(pod_uid):
                w.fail(
                    f"{key}.pod_uid", "a pod UID like 1f0e...-....-....-....-............", pod_uid
                )
    elif "pod_uid" in m:
        w.problem(f"{key}.pod_uid", "only kubernetes jobs have a pod_uid")
    unit = ""
    if scheduler == "systemd":
        unit = w.string(f"{key}.unit", m.get("unit", f"{job_id}.service"))
        if not _UNIT.fullmatch(unit):
            w.fail(f"{key}.unit", "a systemd unit name ending in .service or .scope", unit)
    elif "unit" in m:
        w.problem(f"{key}.unit", "only systemd jobs have a unit")
    parents = tuple(
        w.string(f"{key}.parents[{j}]", p, allow_int=True)
        for j, p in enumerate(w.list(f"{key}.parents", m.get("parents", [])))
    )
    if job_id in parents:
        w.problem(f"{key}.parents", f"job {job_id!r} cannot be its own parent")
    tensor_fraction, precision = _precision(w, key, m)
    mig_slice = _mig_slice(w, key, m, [by_id[n] for n in node_ids], gpu_indices)
    return Job(
        id=job_id,
        scheduler=scheduler,
        nodes=node_ids,
        gpu_indices=gpu_indices,
        start=start,
        end=end,
        utilization=points,
        tensor_fraction=tensor_fraction,
        precision=precision,
        mig_slice=mig_slice,
        memory_gib=w.number(f"{key}.memory_gib", m.get("memory_gib", 8.0), low=0),
        parents=parents,
        model_id=w.string(f"{key}.model_id", m["model_id"]) if "model_id" in m else "",
        pod_uid=pod_uid,
        unit=unit,
        cgroup_version=int(w.choice(f"{key}.cgroup", m.get("cgroup", "v2"), ("v1", "v2"))[1]),
        cgroup_driver=w.choice(
            f"{key}.cgroup_driver", m.get("cgroup_driver", "systemd"), ("systemd", "cgroupfs")
        ),
        qos=w.choice(f"{key}.qos", m.get("qos", "burstable"), QOS_CLASSES),
        uid=w.integer(f"{key}.uid", m.get("uid", 1000), high=2**32 - 2),
        comm=w.string(f"{key}.comm", m.get("comm", "python3"))[:15],
        mps=w.boolean(f"{key}.mps", m.get("mps", False)),
    )


def _precision(w: Where, key: str, m: Mapping[str, object]) -> tuple[float, tuple[float, ...]]:
    """(tensor_fraction, per-pipe fractions in ``PIPES`` order) of a job.

    Without ``precision`` all tensor work is HMMA (FP16/BF16 training, the
    common case). With it, ``tensor_fraction`` defaults to the tensor pipes'
    sum (capped at 1) and must be at least the busiest tensor pipe.
    """
    raw = m.get("precision")
    if raw is None:
        fraction = w.number(f"{key}.tensor_fraction", m.get("tensor_fraction", 0.5), low=0, high=1)
        return fraction, (0.0, fraction, 0.0, 0.0, 0.0, 0.0)
    mix = w.mapping(f"{key}.precision", raw, allowed=frozenset(PIPES))
    pipes = tuple(w.number(f"{key}.precision.{p}", mix.get(p, 0.0), low=0, high=1) for p in PIPES)
    tensor = pipes[:3]
    if "tensor_fraction" in m:
        fraction = w.number(f"{key}.tensor_fraction", m["tensor_fraction"], low=0, high=1)
        if fraction < max(tensor):
            w.fail(
                f"{key}.tensor_fraction",
                f"at least the busiest tensor pipe ({max(tensor):g})",
                fraction,
            )
    else:
        fraction = min(1.0, sum(tensor))
    return fraction, pipes


def _mig_slice(
    w: Where, key: str, m: Mapping[str, object], nodes: list[Node], gpus: tuple[int, ...] | None
) -> int:
    """The MIG device the job uses on each of its MIG-enabled GPUs (default 0)."""
    index = w.integer(f"{key}.mig_slice", m.get("mig_slice", 0))
    for node in nodes:
        for spec in node.gpus:
            if (gpus is None or spec.index in gpus) and spec.mig and index >= len(spec.mig_slices):
                w.fail(
                    f"{key}.mig_slice",
                    f"an index below {len(spec.mig_slices)} (MIG devices of GPU {spec.index})",
                    index,
                )
    if "mig_slice" in m and not any(s.mig for n in nodes for s in n.gpus):
        w.problem(f"{key}.mig_slice", "the job has no MIG-enabled GPU")
    return index


def _job_nodes(
    w: Where, key: str, m: Mapping[str, object], nodes: tuple[Node, ...]
) -> tuple[str, ...]:
    known = [n.id for n in nodes]
    if ("nodes" in m) == ("node_prefix" in m):
        w.problem(key, "give exactly one of 'nodes' or 'node_prefix'")
    if "nodes" in m:
        if "count" in m:
            w.problem(f"{key}.count", "'count' goes with 'node_prefix', not 'nodes'")
        ids = []
        for j, raw in enumerate(w.list(f"{key}.nodes", m["nodes"], nonempty=True)):
            node_id = w.string(f"{key}.nodes[{j}]", raw)
            if node_id not in known:
                w.fail(f"{key}.nodes[{j}]", "the id of a node in this scenario", node_id)
            if node_id in ids:
                w.problem(f"{key}.nodes[{j}]", f"node {node_id!r} listed twice")
            ids.append(node_id)
        return tuple(ids)
    prefix = w.string(f"{key}.node_prefix", m["node_prefix"])
    matching = [n for n in known if n.startswith(prefix)]
    if not matching:
        w.fail(f"{key}.node_prefix", "a prefix of at least one node id", prefix)
    if "count" in m:
        count = w.integer(f"{key}.count", m["count"], low=1)
        if count > len(matching):
            w.fail(f"{key}.count", f"at most {len(matching)} (nodes starting {prefix!r})", count)
        matching = matching[:count]
    return tuple(matching)


def _job_gpus(
    w: Where, key: str, m: Mapping[str, object], nodes: list[Node]
) -> tuple[int, ...] | None:
    if "gpus_per_node" in m and "gpu_indices" in m:
        w.problem(key, "give at most one of 'gpus_per_node' or 'gpu_indices'")
    fewest = min(len(n.gpus) for n in nodes)
    if "gpus_per_node" in m:
        count = w.integer(f"{key}.gpus_per_node", m["gpus_per_node"], low=1, high=fewest)
        return tuple(range(count))
    if "gpu_indices" in m:
        raw = w.list(f"{key}.gpu_indices", m["gpu_indices"], nonempty=True)
        out: list[int] = []
        for j, value in enumerate(raw):
            index = w.integer(f"{key}.gpu_indices[{j}]", value, high=fewest - 1)
            if index in out:
                w.problem(f"{key}.gpu_indices[{j}]", f"GPU {index} listed twice")
            out.append(index)
        return tuple(out)
    return None


def _utilization(w: Where, key: str, raw: object) -> tuple[tuple[float, float], ...]:
    items = w.list(key, raw, nonempty=True)
    if len(items) > _MAX_POINTS:
        w.problem(key, f"more than {_MAX_POINTS} points")
    points: list[tuple[float, float]] = []
    for j, item in enumerate(items):
        if not isinstance(item, list) or len(item) != 2:
            w.fail(f"{key}[{j}]", "a pair [seconds_since_job_start, percent]", item)
        t = w.number(f"{key}[{j}][0]", item[0], low=0)
        u = w.number(f"{key}[{j}][1]", item[1], low=0, high=100)
        if points and t < points[-1][0]:
            w.fail(f"{key}[{j}][0]", f"a time >= {points[-1][0]:g} (points in order)", item[0])
        points.append((t, u))
    return tuple(points)


def _check_lineage(w: Where, jobs: list[Job]) -> None:
    parents = {j.id: j.parents for j in jobs}
    for i, job in enumerate(jobs):
        stack, seen = list(job.parents), set()
        while stack:
            parent = stack.pop()
            if parent == job.id:
                w.problem(f"jobs[{i}].parents", f"lineage of job {job.id!r} is a cycle")
            if parent not in seen:
                seen.add(parent)
                stack.extend(parents.get(parent, ()))
