"""The live demo view under a real terminal: ``computewatch demo`` runs in a
tmux pane of 80x24 and of 200x50, and every capture of the pane while it is
live shows the header and the totals on top, no line longer than the pane
(a wrapped row would scroll the header away) and no log line over the view. At
80x24, with rules that halt at once so directives and events pile up, Ctrl-C
after the first resume prints the partial summary; at 200x50 the run ends by
itself.

tmux is installed by ``.ci/run``; where it is missing this test is skipped
with a reason that says so (and fails where ``CI`` is set).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from computewatch.cli_demo import DEFAULT_SCENARIO

TMUX = shutil.which("tmux")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR) ")
FRAME_TOP = "computewatch demo  t="
POLL_SECONDS = 0.3
MAX_POLLS = 400  # 120 s at most


@dataclass
class Pane:
    socket: str
    width: int
    height: int
    frames: list[list[str]] = field(default_factory=list)

    def tmux(self, *args: str) -> str:
        assert TMUX is not None
        out = subprocess.run(
            [TMUX, "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout

    def start(self, command: str) -> None:
        self.tmux(
            "new-session", "-d", "-s", "demo", "-x", str(self.width), "-y", str(self.height),
            command,
        )  # fmt: skip

    def screen(self) -> list[str]:
        """The visible pane, row by row."""
        return self.tmux("capture-pane", "-p", "-t", "demo").splitlines()

    def history(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-1000", "-t", "demo")


def check_frame(pane: Pane, lines: list[str]) -> None:
    text = "\n".join(lines)
    # The frame is exactly the pane's height: a row wider than the pane would
    # wrap, push the last row past the bottom and scroll the header out of
    # row 0 (the alternate screen keeps no history). So the header in row 0
    # of every capture also says that no row wrapped.
    assert lines[0].startswith(FRAME_TOP), text
    assert len(lines) <= pane.height, text
    header = text[: text.index("\njob ")] if "\njob " in text else text
    for total in ("cluster installed", "achieved", "nodes 16:", "GPUs "):
        assert total in header, text
    assert not [ln for ln in lines if LOG_LINE.match(ln)], text


# Halts within a second or two of the start, resumes a second later: the
# directives and events pile up while the 80x24 view is watched.
FAST_PACK = """
pack: fast
version: "1"
description: Thresholds that halt at once, to fill the view with directives.
rules:
  - id: fast-job
    description: A job past 1e16 FLOP halts.
    metric: cumulative_flop
    bound: estimate
    scope: job
    comparison: ">"
    threshold: 1e16
    unit: FLOP
    action: halt
  - id: fast-density
    description: Cluster above 1e15 FLOP/s for 1 s halts.
    metric: achieved_flops
    bound: estimate
    scope: cluster
    comparison: ">"
    threshold: 1e15
    unit: FLOP/s
    for: 1s
    action: halt
"""


def run_in_pane(
    tmp_path: Path,
    width: int,
    height: int,
    duration: int,
    *,
    interrupt_when: Callable[[Pane], bool] | None,
    extra: Sequence[str] = (),
) -> tuple[Pane, str, dict[str, object]]:
    """Run the demo in a fresh tmux server; check every live frame; press
    Ctrl-C once ``interrupt_when(pane)`` holds; return the pane, its history
    after the run, and the summary JSON."""
    if TMUX is None:
        if os.environ.get("CI") or os.environ.get("COMPUTEWATCH_REQUIRE_TOOLS"):
            pytest.fail("tmux is missing on CI: .ci/run installs it; the live view needs it")
        pytest.skip("tmux is not installed: the live view was NOT tested in a terminal")
    pane = Pane(f"cw-view-{os.getpid()}-{width}x{height}", width, height)
    summary = tmp_path / "summary.json"
    argv = [
        sys.executable, "-m", "computewatch.cli", "demo", "--live",
        "--scenario", str(DEFAULT_SCENARIO), "--duration", str(duration),
        "--workdir", str(tmp_path / "w"), "--summary-json", str(summary), *extra,
    ]  # fmt: skip
    pane.start(f"{shlex.join(argv)}; echo DEMO-EXIT=$?; sleep 300")
    try:
        interrupted = False
        for _ in range(MAX_POLLS):
            time.sleep(POLL_SECONDS)
            lines = pane.screen()
            if any(ln.startswith("DEMO-EXIT=") for ln in lines):
                break
            if any("demo summary" in ln for ln in lines):
                continue  # the screen is down; the summary is printing
            if lines and lines[0].startswith(FRAME_TOP):
                check_frame(pane, lines)
                pane.frames.append(lines)
                if interrupt_when is not None and not interrupted and interrupt_when(pane):
                    pane.tmux("send-keys", "-t", "demo", "C-c")
                    interrupted = True
        else:
            pytest.fail("the demo did not end: " + "\n".join(pane.screen()))
        history = pane.history()
    finally:
        subprocess.run([TMUX, "-L", pane.socket, "kill-server"], timeout=10, check=False)
    # Interrupted, the command exits 130 (128 + SIGINT) after its summary.
    assert f"DEMO-EXIT={0 if interrupt_when is None else 130}" in history, history
    return pane, history, json.loads(summary.read_text())


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_at_80x24_the_header_stays_and_ctrl_c_prints_the_partial_summary(
    tmp_path: Path,
) -> None:
    pack = tmp_path / "fast.yaml"
    pack.write_text(FAST_PACK)

    def resumed(pane: Pane) -> bool:
        # Ctrl-C once a resume shows (halts came first), or after 100 frames.
        return any(" RESUME " in ln for ln in pane.frames[-1]) or len(pane.frames) >= 100

    pane, history, result = run_in_pane(
        tmp_path,
        80,
        24,
        60,
        interrupt_when=resumed,
        extra=["--rule-pack", str(pack), "--rule-pack", "operator-default", "--resume-after", "1"],
    )
    shown = "\n".join(ln for f in pane.frames for ln in f)
    assert " HALT " in shown
    assert " RESUME " in shown
    assert result["interrupted"] is True
    assert float(str(result["duration_seconds"])) < 50
    assert "INTERRUPTED: partial" in history
    assert "jobs:" in history
    # The log went to the workdir: the start-up "no data yet" line, once for
    # the demo's collector (the only one with the fast pack), and at most once
    # for the second operator's (provider-b: its 2 nodes may report before its
    # first tick, and then it has no such line).
    log = (tmp_path / "w" / "demo.log").read_text()
    no_data = [ln for ln in log.splitlines() if "no data yet: " in ln]
    assert len([ln for ln in no_data if "fast-density" in ln]) == 1, log
    assert len(no_data) <= 2, log
    assert "rule op-node-silent cannot be evaluated" not in log, log


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_at_200x50_the_header_stays_for_the_whole_run(tmp_path: Path) -> None:
    pane, history, result = run_in_pane(tmp_path, 200, 50, 8, interrupt_when=None)
    assert len(pane.frames) >= 5, history
    assert result["interrupted"] is False
    seconds = [float(f[0][len(FRAME_TOP) :].split("s", 1)[0]) for f in pane.frames]
    assert seconds[-1] >= 7.0  # frames to the end of the run
    assert "demo summary" in history
    assert f"log: {tmp_path / 'w' / 'demo.log'}" in history
