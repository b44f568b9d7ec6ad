"""The halt benchmark's world: a fleet scenario, a one-rule pack sized to it,
and what the collector's ledger says happened.

Every node has 8 H100s. All nodes but the last run Slurm jobs of 8 nodes
each (one real stand-in process per node and job, 90 % busy). The last node
is the *trigger*: its job's GPU process only appears when the benchmark says
"go", which adds 8 GPUs of allocated capacity. The pack's single cluster rule
halts when allocated capacity exceeds the fleet's baseline plus half of what
the trigger adds, so the trigger's first report after "go" is the one that
crosses, and nothing else can.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.accounting.aggregate import gpu_figures
from collector.store.ledger import iter_entries
from protos import devices, dsse
from protos.computewatch.v1 import control_pb2, telemetry_pb2

PRODUCT = "NVIDIA H100 80GB HBM3"
NODES_PER_JOB = 8
BASE_UTILIZATION = 90.0
TRIGGER_JOB = "199999"  # numeric: a Slurm job id
RULE_ID = "bench-cluster-allocated"
_DAY = 86_400


def job_id(index: int) -> str:
    return str(100_000 + index // NODES_PER_JOB)


def scenario_doc(node_ids: list[str], gpus: int, interval: float) -> dict[str, Any]:
    """The fleet (``node_ids[-1]`` is the trigger) as a scenario mapping."""
    if len(node_ids) < 2:
        raise ValueError("the halt benchmark needs at least 2 nodes (one is the trigger)")
    base = node_ids[:-1]
    jobs: list[dict[str, Any]] = []
    for start in range(0, len(base), NODES_PER_JOB):
        jobs.append(
            {
                "id": job_id(start),
                "scheduler": "slurm",
                "nodes": base[start : start + NODES_PER_JOB],
                "utilization": [[0, BASE_UTILIZATION], [_DAY, BASE_UTILIZATION]],
                "tensor_fraction": 0.6,
                "memory_gib": 60,
            }
        )
    jobs.append(
        {
            "id": TRIGGER_JOB,
            "scheduler": "slurm",
            "nodes": [node_ids[-1]],
            "utilization": [[0, 100], [_DAY, 100]],
            "tensor_fraction": 0.6,
            "memory_gib": 70,
        }
    )
    return {
        "name": "bench-halt",
        "duration_seconds": _DAY,
        "interval_seconds": interval,
        "nodes": [{"id": n, "gpus": [{"model": PRODUCT, "count": gpus}]} for n in node_ids],
        "jobs": jobs,
    }


def node_allocated_flops(gpus: int) -> float:
    """Allocated FLOP/s of one node whose every GPU holds a process."""
    spec = devices.lookup(PRODUCT)
    if spec is None:
        raise ValueError(f"{PRODUCT} is not in the device table")
    sample = telemetry_pb2.GpuSample(
        uuid="GPU-0",
        product_name=PRODUCT,
        processes_known=True,
        health=telemetry_pb2.GPU_HEALTH_OK,
    )
    sample.processes.add(pid=1)
    figures = gpu_figures(sample, devices.lookup)
    assert figures.allocated is not None
    return gpus * figures.allocated


def threshold(nodes: int, gpus: int) -> float:
    """Between the baseline (every node but the trigger) and the baseline plus the trigger."""
    per_node = node_allocated_flops(gpus)
    return (nodes - 1) * per_node + per_node / 2


def pack_yaml(limit: float) -> str:
    return f"""pack: bench-halt
version: "1"
description: One cluster capacity rule for the halt-latency benchmark.
rules:
  - id: {RULE_ID}
    description: Allocated cluster capacity above the benchmark fleet's baseline halts the cluster.
    metric: allocated_flops
    scope: cluster
    comparison: ">"
    threshold: {limit!r}
    unit: FLOP/s
    action: halt
"""


# -- reading the ledger afterwards --------------------------------------------------


@dataclass(frozen=True)
class Receipt:
    node_id: str
    log_index: int
    received_ns: int  # the ledger's received_unix_nanos of the report carrying it
    enforced_ns: int  # EnforcementReceipt.enforced_unix_nanos
    sampled_ns: int  # NodeReport.sample_unix_nanos of that report
    steps_failed: int


@dataclass(frozen=True)
class Timeline:
    crossing_index: int
    crossing_received_ns: int
    directive: control_pb2.Directive
    directive_index: int
    directive_logged_ns: int
    receipts: dict[str, Receipt]
    refusals: int


def _allocated(report: telemetry_pb2.NodeReport) -> bool:
    return any(g.processes for g in report.gpus)


def read_timeline(ledger: Path, trigger: str, after_ns: int) -> Timeline | None:
    """The crossing report, the HALT and each node's first receipt for it
    (None when the ledger holds no HALT)."""
    crossing: tuple[int, int] | None = None
    halt: tuple[control_pb2.Directive, int, int] | None = None
    receipts: dict[str, Receipt] = {}
    refusals = 0
    for entry in iter_entries(ledger):
        if entry.payload_type == dsse.DIRECTIVE_TYPE and halt is None:
            d = dsse.parse_message(control_pb2.Directive, dsse.open_envelope(entry.data).payload)
            if d.action == control_pb2.ACTION_HALT:
                halt = (d, entry.index, entry.received_unix_nanos)
            continue
        if entry.payload_type != dsse.REPORT_TYPE or entry.received_unix_nanos < after_ns:
            continue
        report = dsse.parse_message(
            telemetry_pb2.NodeReport, dsse.open_envelope(entry.data).payload
        )
        if crossing is None and report.node_id == trigger and _allocated(report):
            crossing = (entry.index, entry.received_unix_nanos)
        if halt is None:
            continue
        for r in _receipts_for(report.receipts, halt[0].id):
            if r.refused_reason:
                refusals += 1
            elif report.node_id not in receipts:
                receipts[report.node_id] = Receipt(
                    report.node_id,
                    entry.index,
                    entry.received_unix_nanos,
                    r.enforced_unix_nanos,
                    report.sample_unix_nanos,
                    sum(1 for s in r.steps if not s.ok),
                )
    if halt is None or crossing is None:
        return None
    d, index, logged = halt
    return Timeline(crossing[0], crossing[1], d, index, logged, receipts, refusals)


def short_nodes(
    ledger: Path, crossing_index: int, *, within: float, silent_after: float = 3.0
) -> str:
    """Why the crossing report did not cross: the nodes that, as the collector
    saw them up to ``within`` seconds (a tick) after it logged that report,
    were silent or held fewer GPUs than the rest (empty when every node
    counted in full)."""
    # node -> (received ns, interval, GPUs held, NVML status) of its last report
    last: dict[str, tuple[int, float, int, int]] = {}
    at_ns = 0
    for entry in iter_entries(ledger):
        if entry.index > crossing_index:
            break
        if entry.payload_type != dsse.REPORT_TYPE or entry.node_id is None:
            continue
        report = dsse.parse_message(
            telemetry_pb2.NodeReport, dsse.open_envelope(entry.data).payload
        )
        held = sum(1 for g in report.gpus if g.processes and g.processes_known)
        last[entry.node_id] = (
            entry.received_unix_nanos,
            report.interval_seconds,
            held,
            report.nvml_status,
        )
        at_ns = entry.received_unix_nanos
    most = max((v[2] for v in last.values()), default=0)
    notes = []
    for node, (received, interval, held, status) in sorted(last.items()):
        age = (at_ns - received) / 1e9 + within
        if age > silent_after * interval:
            notes.append(f"{node} silent ({age:.1f} s > {silent_after:g} x {interval:.2f} s)")
        elif held < most:
            notes.append(f"{node} {held} of {most} GPUs held (NVML status {status})")
    return "; ".join(notes[:10]) + (f"; ... {len(notes)} in all" if len(notes) > 10 else "")


def _receipts_for(
    receipts: Iterable[telemetry_pb2.EnforcementReceipt], directive_id: str
) -> list[telemetry_pb2.EnforcementReceipt]:
    return [r for r in receipts if r.directive_id == directive_id]
