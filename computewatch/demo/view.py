"""The demo's live terminal view and its summary, built from what the
collector's public APIs (Status, Control.ListDirectives) return."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from computewatch.cli_status import cluster_achieved, job_cumulative
from computewatch.render import bar, interval, si, table
from protos import dsse
from protos.computewatch.v1 import control_pb2, status_pb2

_ACTION = {
    control_pb2.ACTION_HALT: "HALT",
    control_pb2.ACTION_RESUME: "RESUME",
    control_pb2.ACTION_THROTTLE: "THROTTLE",
    control_pb2.ACTION_TERMINATE: "TERMINATE",
    control_pb2.ACTION_LEASE: "LEASE",
}
_SCOPE = {
    control_pb2.SCOPE_KIND_CLUSTER: "cluster",
    control_pb2.SCOPE_KIND_NODE: "node",
    control_pb2.SCOPE_KIND_JOB: "job",
    control_pb2.SCOPE_KIND_GPU: "gpu",
}
_STATE = {
    status_pb2.NODE_STATE_OK: "reporting",
    status_pb2.NODE_STATE_SILENT: "SILENT",
    status_pb2.NODE_STATE_NEVER_SEEN: "never seen",
}


@dataclass(frozen=True)
class DirectiveView:
    directive: control_pb2.Directive
    record: control_pb2.DirectiveRecord

    @property
    def action(self) -> str:
        return _ACTION.get(self.directive.action, "?")

    @property
    def scope(self) -> str:
        s = self.directive.scope
        names = list(s.job_ids) if s.kind == control_pb2.SCOPE_KIND_JOB else list(s.node_ids)
        if s.kind == control_pb2.SCOPE_KIND_GPU:
            names = list(s.gpu_uuids)
        shown = ",".join(names[:3]) + (f",+{len(names) - 3}" if len(names) > 3 else "")
        return f"{_SCOPE.get(s.kind, '?')}:{shown}" if shown else _SCOPE.get(s.kind, "?")

    @property
    def seconds_to_effective(self) -> float | None:
        if not self.record.effective_unix_nanos:
            return None
        return (self.record.effective_unix_nanos - self.directive.issued_unix_nanos) / 1e9


def directive_views(listing: control_pb2.DirectiveList) -> list[DirectiveView]:
    """Parse the envelopes of a directive listing (the collector signed them)."""
    views = []
    for rec in listing.directives:
        env = dsse.open_envelope(rec.envelope)
        directive = dsse.parse_message(control_pb2.Directive, env.payload)
        if directive.action != control_pb2.ACTION_LEASE:
            views.append(DirectiveView(directive, rec))
    return sorted(views, key=lambda v: v.directive.counter)


def nearest_threshold(value: float, thresholds: Sequence[float]) -> float | None:
    above = [t for t in thresholds if t > value]
    return min(above) if above else (max(thresholds) if thresholds else None)


def render(
    st: status_pb2.ClusterStatus,
    directives: Sequence[DirectiveView],
    *,
    elapsed: float,
    duration: float,
    job_thresholds: Sequence[float],
    events: Sequence[str],
) -> str:
    out = [
        f"computewatch demo  t={elapsed:5.1f}s / {duration:.0f}s   log size {st.log_size}"
        f"   reports {st.reports_accepted}   rejected "
        + (", ".join(f"{k}={v}" for k, v in sorted(st.rejected_by_reason.items())) or "0"),
        f"cluster  installed {si(st.installed_flops, 'FLOP/s'):>14}   allocated"
        f" {si(st.allocated_flops, 'FLOP/s'):>14}   achieved"
        f" {interval(cluster_achieved(st), st.achieved_flops_upper_bound, 'FLOP/s')}",
        f"         {st.gpus_total} GPUs, {st.gpus_lost} lost,"
        f" {st.gpus_unknown_model} of unknown model",
        "",
    ]
    rows = []
    for job in st.jobs:
        line = nearest_threshold(job.cumulative_flop, job_thresholds)
        progress = f"{bar(job.cumulative_flop / line)} of {si(line, 'FLOP')}" if line else ""
        if job.gpus_unknown_model:
            progress = f"unknown: {job.gpus_unknown_model} GPU(s) of a model not in the table"
        if job.possibly_crossed_rules:
            progress = "POSSIBLY CROSSED " + ",".join(job.possibly_crossed_rules)
        rows.append(
            [
                job.job_id[:24],
                job_cumulative(job) + ("*" if job.upper_bound else ""),
                interval(
                    job.achieved_flops_estimate
                    if job.HasField("achieved_flops_estimate")
                    else None,
                    job.achieved_flops_upper_bound,
                    "FLOP/s",
                ),
                str(job.gpus),
                progress,
            ]
        )
    out.append(table(["job", "cumulative", "achieved", "gpus", "toward threshold"], rows))
    out.append(
        "  (estimate (<= upper bound at each GPU's highest dense peak); '>=': some GPU-seconds"
        " unmeasured; * estimate rests on utilization.gpu: the GPU has no GPM)"
    )
    out.append("")
    counts: dict[str, int] = {}
    halted = 0
    for node in st.nodes:
        state = _STATE.get(node.state, "?")
        counts[state] = counts.get(state, 0) + 1
        halted += node.halted
    out.append(
        "nodes    "
        + "  ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        # Halted nodes still report (that is how a halt is seen to hold).
        + f"  (halted by a directive: {halted} of {len(st.nodes)})"
        + "".join(
            f"\n         {n.node_id}: {_STATE.get(n.state, '?')}"
            for n in st.nodes
            if n.state != status_pb2.NODE_STATE_OK
        )
    )
    if directives:
        out.append("")
        out.append(
            table(
                ["directive", "action", "scope", "rule", "effective", "approvals"],
                [
                    [
                        v.directive.id[:8],
                        v.action,
                        v.scope[:40],
                        v.directive.rule_id[:36],
                        "in force"
                        if v.record.in_force and v.seconds_to_effective is None
                        else (
                            f"{v.seconds_to_effective:.2f} s"
                            if v.seconds_to_effective is not None
                            else "-"
                        ),
                        str(len(v.record.approval_keyids)),
                    ]
                    for v in directives
                ],
            )
        )
    if events:
        out.append("")
        out.extend(f"  {e}" for e in events[-6:])
    return "\n".join(out)
