"""Lay one frame of the demo view out to fit ``width`` x ``height`` cells.

Top to bottom: a fixed header (time, log size, reports, the cluster's
compute and the node and GPU totals; always shown whole, its segments
packed into as few lines as the width allows), the jobs table, the
directives, the latest events and a bounded panel of warning log lines.
Every row is one line: cells are cut with an ellipsis, never wrapped. When
the rows do not fit, the sections below the header give up rows, the
largest first, each keeping a line that says how many it does not show;
sections that still do not fit are left out, lowest priority first (log,
events, directives). Compute keeps its interval forms: ``X (<= Y)``,
``>= X (<= Y)`` (some GPU-seconds unmeasured) and ``unknown (<= Y)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from computewatch.cli_status import cluster_achieved, job_cumulative
from computewatch.demo.view import STATE, DirectiveView, Frame, nearest_threshold
from computewatch.render import bar, interval, si
from protos.computewatch.v1 import status_pb2

# Widths at which the jobs table shows more.
WIDE = 150
MEDIUM = 110
MAX_EVENTS = 6
MAX_LOG_LINES = 4
_GAP = "   "


def compact(estimate: float | None, upper: float, unit: str, unmeasured: float) -> str:
    """An interval without its GPU-seconds: ``X (<= Y)``, ``>= X (<= Y)``, ``unknown (<= Y)``."""
    text = "unknown" if estimate is None else (">= " if unmeasured > 0 else "") + si(estimate, unit)
    return f"{text} (<= {si(upper, unit)})"


def _line(text: str, style: str = "") -> Text:
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def _left_cut(text: str, width: int) -> str:
    """``text`` in ``width`` cells, its start replaced by "..." (a path keeps its end)."""
    return text if len(text) <= width else "..." + text[len(text) - max(width - 3, 0) :]


def _pack(segments: Sequence[str], width: int) -> list[str]:
    """Join segments with a gap into as few lines of ``width`` as they fit."""
    lines: list[str] = []
    for seg in segments:
        if lines and len(lines[-1]) + len(_GAP) + len(seg) <= width:
            lines[-1] += _GAP + seg
        else:
            lines.append(seg)
    return lines


def node_totals(st: status_pb2.ClusterStatus) -> list[str]:
    """How many nodes report, and on how many a halt is in force: two
    separate facts ("nodes 16: 16 reporting", "halt enforced on 16 of 16
    nodes"), where "ok: 16 halted: 16" read as a contradiction."""
    counts: dict[str, int] = {}
    for node in st.nodes:
        state = STATE.get(node.state, "?")
        counts[state] = counts.get(state, 0) + 1
    ok = counts.pop("ok", 0)
    states = ", ".join([f"{ok} reporting", *(f"{n} {k}" for k, n in sorted(counts.items()))])
    halted = sum(1 for n in st.nodes if n.halted)
    out = [
        f"nodes {len(st.nodes)}: {states}",
        f"halt enforced on {halted} of {len(st.nodes)} nodes" if halted else "no node halted",
        f"GPUs {st.gpus_total}: {st.gpus_lost} lost, {st.gpus_unknown_model} of unknown model",
    ]
    quiet = [n.node_id for n in st.nodes if n.state != status_pb2.NODE_STATE_OK]
    if quiet:
        shown = ", ".join(quiet[:4]) + (f", +{len(quiet) - 4}" if len(quiet) > 4 else "")
        out.append(f"not reporting: {shown}")
    return out


def header(frame: Frame, width: int) -> list[Text]:
    st = frame.status
    rejected = ", ".join(f"{k}={v}" for k, v in sorted(st.rejected_by_reason.items())) or "0"
    top = [
        f"computewatch demo  t={frame.elapsed:5.1f}s / {frame.duration:.0f}s",
        f"log size {st.log_size}",
        f"reports {st.reports_accepted}",
        f"rejected {rejected}",
    ]
    achieved = interval(cluster_achieved(st), st.achieved_flops_upper_bound, "FLOP/s")
    cluster = [
        f"cluster installed {si(st.installed_flops, 'FLOP/s')}",
        f"allocated {si(st.allocated_flops, 'FLOP/s')}",
        f"achieved {achieved}",
    ]
    lines = [_line(ln, "bold reverse") for ln in _pack(top, width)]
    lines += [_line(ln, "bold") for ln in _pack(cluster, width)]
    lines += [_line(ln, "bold") for ln in _pack(node_totals(st), width)]
    return lines


def _toward(job: status_pb2.JobStatus, thresholds: Sequence[float], bar_width: int) -> str:
    if job.possibly_crossed_rules:
        return "POSSIBLY CROSSED " + ",".join(job.possibly_crossed_rules)
    if job.gpus_unknown_model:
        return f"unknown model: {job.gpus_unknown_model} GPU(s) not in the device table"
    line = nearest_threshold(job.cumulative_flop, thresholds)
    if not line:
        return ""
    # A threshold is a round number: "250 PFLOP", not "250.00 PFLOP".
    return (
        f"{bar(job.cumulative_flop / line, bar_width)} of {si(line, 'FLOP').replace('.00 ', ' ')}"
    )


def _table(headers: Sequence[str], widths: Sequence[int | None]) -> Table:
    t = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold")
    for name, max_width in zip(headers, widths, strict=True):
        t.add_column(name, no_wrap=True, overflow="ellipsis", max_width=max_width)
    return t


def _more(what: str, n: int) -> list[RenderableType]:
    return [_line(f"... {n} more {what}", "dim")] if n else []


def _widths(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> list[int]:
    """Column widths that fit ``width`` with every compute interval whole: the
    last column (progress) gives up room first, down to 10, then the first
    (the job id), down to 8."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    padding = 2 * len(headers)
    for col, floor in ((len(headers) - 1, 10), (0, 8)):
        excess = sum(widths) + padding - width
        if excess > 0:
            widths[col] = max(floor, widths[col] - excess)
    return widths


def jobs_table(frame: Frame, width: int, rows: int) -> list[RenderableType]:
    """The jobs, ``rows`` lines at most: the first ones and a line counting the rest."""
    jobs = list(frame.status.jobs)
    wide = width >= WIDE
    headers = ["job", "cumulative", *(["achieved"] if wide else []), "gpus", "toward threshold"]
    id_limit = 36 if wide else 24 if width >= MEDIUM else 14
    shown = jobs if len(jobs) <= rows else jobs[: max(rows - 1, 0)]
    cells = []
    for job in shown:
        estimate = (
            job.cumulative_flop_estimate if job.HasField("cumulative_flop_estimate") else None
        )
        if width >= MEDIUM:
            cumulative = job_cumulative(job)
        else:
            cumulative = compact(
                estimate, job.cumulative_flop_upper_bound, "FLOP", job.unmeasured_gpu_seconds
            )
        row = [job.job_id[: id_limit - 1] + "~" if len(job.job_id) > id_limit else job.job_id]
        row.append(cumulative + ("*" if job.upper_bound else ""))
        if wide:
            rate = job.achieved_flops_estimate if job.HasField("achieved_flops_estimate") else None
            row.append(interval(rate, job.achieved_flops_upper_bound, "FLOP/s"))
        row += [str(job.gpus), _toward(job, frame.job_thresholds, 20 if wide else 8)]
        cells.append(row)
    t = _table(headers, _widths(headers, cells, width))
    for row in cells:
        t.add_row(*map(Text, row))  # Text: "[#..]" and job ids are not markup
    return [t, *_more("jobs", len(jobs) - len(shown))]


LEGEND = (
    "X (<= Y): estimate (<= upper bound at each GPU's highest dense peak); '>=': some"
    " GPU-seconds unmeasured; *: estimate rests on utilization.gpu (no GPM)"
)
SHORT_LEGEND = "X (<= Y): estimate (<= upper bound); >=: GPU-s unmeasured; *: no GPM"


def directives_table(
    directives: Sequence[DirectiveView], width: int, rows: int
) -> list[RenderableType]:
    """The latest directives, ``rows`` lines at most, after a line counting the earlier."""
    wide = width >= MEDIUM
    t = _table(
        ["id", "action", "scope", "rule", "effective", "approvals"],
        [8, 9, 40 if wide else 16, 36 if wide else 20, 9, 9],
    )
    if len(directives) <= rows:
        latest = list(directives)
    else:
        latest = list(directives[len(directives) - rows + 1 :])
    for v in latest:
        cells = (
            v.directive.id[:8],
            v.action,
            v.scope,
            v.directive.rule_id,
            v.effective,
            str(len(v.record.approval_keyids)),
        )
        t.add_row(*map(Text, cells))
    return [*_more("earlier directives", len(directives) - len(latest)), t]


@dataclass
class _Section:
    """A section below the header: ``fixed`` lines around ``rows`` rows."""

    name: str
    fixed: int
    wanted: int
    build: Callable[[int], list[RenderableType]]
    # Rows given up per row of the others (the jobs keep more).
    weight: int = 1
    rows: int = 0

    @property
    def lines(self) -> int:
        return self.fixed + self.rows if self.rows else 0


def _fit(sections: list[_Section], room: int | None) -> None:
    """Give each section rows: all it wants when there is room; else take
    rows from the largest (at least one each), then drop sections from the
    end of the list (the lowest priority)."""
    for s in sections:
        s.rows = s.wanted
    if room is None:
        return
    while sum(s.lines for s in sections) > room:
        donors = [s for s in sections if s.rows > 1]
        if donors:
            max(reversed(donors), key=lambda s: s.rows / s.weight).rows -= 1
            continue
        shown = [s for s in sections if s.rows]
        if not shown:
            return
        shown[-1].rows = 0


def build(frame: Frame, *, width: int, height: int | None) -> RenderableType:
    """The frame as one renderable at most ``height`` lines tall (None: all rows)."""
    parts: list[RenderableType] = list(header(frame, width))
    st = frame.status
    sections = [
        _Section(
            "jobs",
            3,  # blank, column names, legend
            max(len(st.jobs), 1),
            lambda rows: [
                _line(""),
                *jobs_table(frame, width, rows),
                _line(LEGEND if width >= MEDIUM else SHORT_LEGEND, "dim"),
            ],
            weight=2,
        ),
        _Section(
            "actors",
            1,
            len(frame.actor_lines),
            lambda rows: [_line(""), *(_line(a) for a in frame.actor_lines[:rows])],
        ),
        _Section(
            "directives",
            2,
            len(frame.directives),
            lambda rows: [_line(""), *directives_table(frame.directives, width, rows)],
        ),
        _Section(
            "events",
            1,
            min(len(frame.events), MAX_EVENTS if height is not None else len(frame.events)),
            lambda rows: [_line(""), *(_line(f"  {e}") for e in frame.events[-rows:])],
        ),
        _Section(
            "log",
            2,  # the panel's borders
            min(len(frame.log_lines), MAX_LOG_LINES),
            lambda rows: [
                Panel(
                    Group(*(_line(ln) for ln in frame.log_lines[-rows:])),
                    title="log: latest warnings",
                    subtitle=_left_cut(f"all of it: {frame.log_path}", width - 6)
                    if frame.log_path
                    else None,
                    title_align="left",
                    subtitle_align="left",
                    box=box.SQUARE,
                    expand=True,
                    height=rows + 2,
                )
            ],
        ),
    ]
    room = None if height is None else height - len(parts)
    _fit(sections, room)
    for s in sections:
        if s.rows:
            parts.extend(s.build(s.rows))
    return Group(*parts)
