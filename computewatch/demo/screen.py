"""The demo's live screen: a ``rich`` Live display on the terminal's
alternate screen, redrawn each tick at the terminal's current size, while
every log line goes to a file instead of over the view.

For as long as the screen is up, the root logger's handlers are swapped for
one writing ``log_path`` (same format as before) and a bounded tail of the
latest warnings that the view shows in a panel; file descriptor 2 points at
the same file, so what C libraries and child processes write to stderr
cannot tear the screen either. Both are restored on exit. This is terminal
handling for the ``demo`` command, the one place outside the CLI's logging
set-up that touches handlers.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text

from computewatch.demo.layout import build
from computewatch.demo.view import Frame

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TAIL_LINES = 20


class LogTail(logging.Handler):
    """The latest ``maxlen`` warning-or-worse records, formatted one line each."""

    def __init__(self, maxlen: int = TAIL_LINES) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: deque[str] = deque(maxlen=maxlen)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(" ".join(self.format(record).split()))
        except Exception:  # noqa: BLE001  # logging must never raise into the caller
            self.handleError(record)


class LiveScreen:
    """``with LiveScreen(out, log_path) as screen: screen.show(frame)``."""

    def __init__(self, out: TextIO, log_path: Path) -> None:
        self.log_path = log_path
        self.console = Console(file=out)
        self.tail = LogTail()
        self._live = Live(
            Text("computewatch demo: starting the cluster ..."),
            console=self.console,
            screen=True,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
            vertical_overflow="crop",
        )
        self._stack = contextlib.ExitStack()

    def show(self, frame: Frame) -> None:
        width, height = self.console.size
        self._live.update(build(frame, width=width, height=height), refresh=True)

    def __enter__(self) -> LiveScreen:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_logs_to(self.log_path, self.tail))
            stack.enter_context(_stderr_to(self.log_path))
            stack.enter_context(self._live)
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()


@contextlib.contextmanager
def _logs_to(path: Path, tail: LogTail) -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:]
    handler = logging.FileHandler(path, encoding="utf-8")
    # Keep the format the CLI chose (JSON lines or text).
    formatter = next((h.formatter for h in saved if h.formatter is not None), None)
    handler.setFormatter(formatter or logging.Formatter(LOG_FORMAT))
    root.handlers[:] = [handler, tail]
    try:
        yield
    finally:
        root.handlers[:] = saved
        handler.close()


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
