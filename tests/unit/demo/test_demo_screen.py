"""While the live screen is up, log records and whatever is written to file
descriptor 2 go to the log file, never over the view; the latest warnings
are kept in a bounded tail; on exit the handlers and fd 2 are restored."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from computewatch.demo.screen import LiveScreen, LogTail

log = logging.getLogger("computewatch.test.screen")


def test_logs_and_stderr_go_to_the_file_and_are_restored(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = root.handlers[:]
    level = root.level
    root.setLevel(logging.INFO)
    out = io.StringIO()
    path = tmp_path / "demo.log"
    try:
        with LiveScreen(out, path) as screen:
            log.info("an info line")
            log.warning("a warning\nover two lines")
            os.write(2, b"written to fd 2 by C code or a child\n")
            tail = list(screen.tail.lines)
    finally:
        root.setLevel(level)
    text = path.read_text()
    # (In the format of the handler it replaced: here pytest's.)
    assert "computewatch.test.screen" in text
    assert "an info line" in text
    assert "a warning" in text
    assert "written to fd 2 by C code or a child" in text
    # Only warnings in the tail, each on one line.
    assert tail == ["WARNING computewatch.test.screen: a warning over two lines"]
    assert "an info line" not in out.getvalue()
    assert root.handlers == before
    log.warning("after the screen")
    assert "after the screen" not in path.read_text()


def test_the_tail_is_bounded_and_keeps_warnings_only() -> None:
    tail = LogTail(maxlen=3)
    logger = logging.getLogger("computewatch.test.tail")
    logger.addHandler(tail)
    try:
        for i in range(10):
            logger.error("e%d", i)
        logger.warning("info follows")
        logger.info("info")
    finally:
        logger.removeHandler(tail)
    name = logger.name
    assert list(tail.lines) == [
        f"ERROR {name}: e8",
        f"ERROR {name}: e9",
        f"WARNING {name}: info follows",
    ]
