"""The demo view fits the terminal: at 80x24 and 200x50 every line fits the
width, the frame fits the height, the header with the cluster and node
totals comes first and whole, compute keeps its interval forms, and what
does not fit is counted, not silently dropped."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from collector.accounting.aggregate import Aggregator
from collector.services.status import build_status
from collector.telemetry.ingest import IngestStats
from computewatch.demo.layout import build, node_totals
from computewatch.demo.view import DirectiveView, Frame, render
from protos.computewatch.v1 import control_pb2, status_pb2, telemetry_pb2
from tests.support import gpu

UNKNOWN = "NVIDIA RTX PRO 6000 Blackwell Server Edition"
JOBS = 30


def fleet_status(t: float = 105.0) -> status_pb2.ClusterStatus:
    """16 nodes with two GPUs each, 30 jobs (one on a GPU of unknown model),
    a node that stops reporting after its first report."""
    agg = Aggregator(silent_after_intervals=3)
    index = 0
    for seq in (1, 2, 3):
        for n in range(16):
            if n == 15 and seq > 1:
                continue  # goes silent
            product = UNKNOWN if n == 14 else "NVIDIA H100 80GB HBM3"
            gpus = [
                gpu(g, product=product, util=60.0, job=f"train-{(2 * n + g) % JOBS:02d}-{'x' * 30}")
                for g in range(2)
            ]
            agg.ingest(
                telemetry_pb2.NodeReport(
                    node_id=f"node-{n:02d}",
                    sequence=seq,
                    sample_unix_nanos=int((100 + seq) * 1e9),
                    interval_seconds=1.0,
                    gpus=gpus,
                ),
                index,
                100.0 + seq,
            )
            index += 1
    st = build_status(
        agg, IngestStats(), index, t, possibly_crossed=lambda: [("r", f"train-03-{'x' * 30}")]
    )
    for node in st.nodes:
        node.halted = True
    return st


def directives(n: int) -> list[DirectiveView]:
    out = []
    for i in range(n):
        d = control_pb2.Directive(
            id=f"{i:08d}-aaaa-bbbb",
            counter=i,
            action=control_pb2.ACTION_HALT if i % 2 == 0 else control_pb2.ACTION_RESUME,
            scope=control_pb2.Scope(
                kind=control_pb2.SCOPE_KIND_NODE, node_ids=[f"node-{k:02d}" for k in range(16)]
            ),
            rule_id="demo-job-cumulative-with-a-long-rule-identifier",
            issued_unix_nanos=10**9,
        )
        rec = control_pb2.DirectiveRecord(in_force=i % 2 == 0, effective_unix_nanos=2 * 10**9)
        out.append(DirectiveView(d, rec))
    return out


def frame(**kw: object) -> Frame:
    base: dict[str, object] = {
        "status": fleet_status(),
        "directives": directives(9),
        "elapsed": 12.5,
        "duration": 60.0,
        "job_thresholds": [2.5e17, 1e25],
        "events": [f"t={i:5.1f}s  event {i} " + "y" * 120 for i in range(20)],
        "log_lines": [
            f"WARNING collector.stop.decisions: rule {i} " + "z" * 150 for i in range(10)
        ],
        "log_path": "/tmp/" + "long-directory-name/" * 6 + "demo.log",
    }
    base.update(kw)
    return Frame(**base)  # type: ignore[arg-type]


def lines_at(f: Frame, width: int, height: int) -> list[str]:
    buf = io.StringIO()
    console = Console(file=buf, width=width, height=height, color_system=None, legacy_windows=False)
    console.print(build(f, width=width, height=height), crop=False)  # as Live: no cropping
    return buf.getvalue().splitlines()


@pytest.mark.parametrize(("width", "height"), [(80, 24), (120, 40), (200, 50), (60, 15)])
def test_the_frame_fits_and_starts_with_the_whole_header(width: int, height: int) -> None:
    lines = lines_at(frame(), width, height)
    assert len(lines) <= height
    assert all(len(ln) <= width for ln in lines), [ln for ln in lines if len(ln) > width]
    assert lines[0].startswith("computewatch demo  t= 12.5s / 60s")
    text = "\n".join(lines)
    # The totals: nodes, halts and GPUs are in the header, before any table.
    before_jobs = text[: text.index("job ")]
    assert "nodes 16: 15 reporting, 1 SILENT" in before_jobs
    assert "halt enforced on 16 of 16 nodes" in before_jobs
    assert "GPUs 32: 0 lost, 2 of unknown model" in before_jobs
    assert "not reporting: node-15" in before_jobs
    assert "cluster installed" in before_jobs
    assert "achieved" in before_jobs


def test_rows_that_do_not_fit_are_counted() -> None:
    small = "\n".join(lines_at(frame(), 80, 24))
    assert "more jobs" in small
    shown = sum(1 for ln in small.splitlines() if ln.startswith("train-"))
    assert f"... {JOBS - shown} more jobs" in small
    # The latest directives are kept; the earlier ones counted.
    assert "more earlier directives" in small or "directive" not in small
    big = "\n".join(lines_at(frame(), 200, 50))
    assert "log: latest warnings" in big
    assert "long-directory-name/demo.log" in big
    assert "00000008" in big  # the latest directive
    assert "event 19" in big  # the latest event


def test_at_80_columns_compute_keeps_its_interval_forms() -> None:
    lines = lines_at(frame(), 80, 80)
    rows = [ln for ln in lines if ln.startswith("train-")]
    assert rows
    unknown = [ln for ln in rows if "unknown (<= " in ln]
    assert unknown, rows  # the job on the GPU of unknown model
    # Each interval whole: "(<= Y)" closes before the next column.
    assert all(") " in ln or ")* " in ln for ln in rows), rows
    assert any("POSSIBLY CROSSED r" in ln for ln in rows)


def test_cells_are_text_not_markup() -> None:
    st = fleet_status()
    st.jobs[0].job_id = "[bold]odd[/bold]"
    # A line at 5 PFLOP: the first jobs are halfway, a bar of '#' and '.'.
    lines = lines_at(frame(status=st, job_thresholds=[5e15]), 80, 24)
    row = next(ln for ln in lines if ln.startswith("[bold]odd"))
    assert "[####....] of 5 PFLOP" in row


def test_without_a_height_every_row_is_shown() -> None:
    f = frame()
    text = render(
        f.status,
        f.directives,
        elapsed=1.0,
        duration=2.0,
        job_thresholds=[1e18],
        events=f.events,
    )
    assert sum(1 for ln in text.splitlines() if ln.startswith("train-")) == JOBS
    assert "more" not in text
    assert all(len(ln) <= 200 for ln in text.splitlines())


def test_halted_nodes_do_not_read_as_a_contradiction() -> None:
    st = fleet_status()
    totals = node_totals(st)
    assert totals[0] == "nodes 16: 15 reporting, 1 SILENT"
    assert totals[1] == "halt enforced on 16 of 16 nodes"
    for node in st.nodes:
        node.halted = False
    assert node_totals(st)[1] == "no node halted"
