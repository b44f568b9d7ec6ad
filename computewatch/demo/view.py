"""The demo's view, built from what the collector's public APIs (Status,
Control.ListDirectives) return: what one frame shows (``Frame``), and the
plain-text rendering of it for ``--no-live``. The layout that fits a
terminal is ``computewatch.demo.layout``; the live screen is
``computewatch.demo.screen``."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console

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
STATE = {
    status_pb2.NODE_STATE_OK: "ok",
    status_pb2.NODE_STATE_SILENT: "SILENT",
    status_pb2.NODE_STATE_NEVER_SEEN: "never seen",
}
# Width of the text that --no-live prints (a log, not a terminal).
TEXT_WIDTH = 200


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

    @property
    def effective(self) -> str:
        if self.seconds_to_effective is not None:
            return f"{self.seconds_to_effective:.2f} s"
        return "in force" if self.record.in_force else "-"


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


@dataclass(frozen=True)
class Frame:
    """Everything one frame of the view shows."""

    status: status_pb2.ClusterStatus
    directives: Sequence[DirectiveView]
    elapsed: float
    duration: float
    job_thresholds: Sequence[float]
    events: Sequence[str] = ()
    # The latest warning and error log lines, and the file that has them all.
    log_lines: Sequence[str] = ()
    log_path: str = ""
    # One line per actor (``computewatch.demo.actors.actor_lines``).
    actor_lines: Sequence[str] = ()


def render(
    st: status_pb2.ClusterStatus,
    directives: Sequence[DirectiveView],
    *,
    elapsed: float,
    duration: float,
    job_thresholds: Sequence[float],
    events: Sequence[str],
    width: int = TEXT_WIDTH,
) -> str:
    """The whole view as plain text ``width`` columns wide, every row shown."""
    from computewatch.demo.layout import build

    frame = Frame(st, directives, elapsed, duration, job_thresholds, events)
    buf = io.StringIO()
    console = Console(
        file=buf, width=width, color_system=None, force_terminal=False, legacy_windows=False
    )
    console.print(build(frame, width=width, height=None))
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines())
