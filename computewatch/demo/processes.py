"""Real stand-in processes for the simulated jobs.

Each (node, job) gets a real, idle child process. The fake NVML lists its
pid as the job's GPU process, and reads its real state from /proc: when the
agent's enforcement SIGSTOPs it, the simulated GPU goes idle; SIGCONT brings
the work back; SIGKILL ends it. So enforcement in the demo acts on real
processes, exactly as on a GPU node.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def process_state(pid: int, proc: Path = Path("/proc")) -> str:
    """``running``, ``stopped`` or ``gone``, read from ``/proc/<pid>/stat``."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return "gone"
    state = text.rpartition(")")[2].split()[0]
    if state in {"T", "t"}:
        return "stopped"
    if state in {"Z", "X", "x"}:
        return "gone"
    return "running"


class StandIns:
    """Spawns and reaps the stand-in processes."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        sleep = shutil.which("sleep")
        self._argv = (
            [sleep, "86400"] if sleep else [sys.executable, "-c", "import time; time.sleep(86400)"]
        )

    def spawn(self) -> int:
        proc = subprocess.Popen(
            self._argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        self._procs.append(proc)
        return proc.pid

    def reap(self) -> None:
        """Reap children that exited (so /proc shows them gone, not zombies)."""
        for proc in self._procs:
            proc.poll()

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.kill()
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()
