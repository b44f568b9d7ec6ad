"""A real full disk under a real spool file.

Where the tests may mount (root with ``mount``), the state directory lives on
a small tmpfs that ``fill`` fills with a filler file: SQLite's write() then
fails with ENOSPC, which its unix VFS turns into SQLITE_FULL. Elsewhere the
same SQLITE_FULL comes from ``PRAGMA max_page_count`` on the spool's own
connection (SQLite's documented per-connection size limit). Either way the
test runs; it never skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

from agent.spool import Spool

_CHUNK = 64 << 10
_TMPFS_BYTES = 8 << 20


class FullDisk:
    def __init__(self, root: Path) -> None:
        self.dir = root / "disk"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mounted = False
        if os.geteuid() == 0 and shutil.which("mount") and shutil.which("umount"):
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={_TMPFS_BYTES}", "tmpfs", str(self.dir)],
                capture_output=True,
                check=False,
                timeout=10,
            )
            self.mounted = done.returncode == 0
        self._filler = self.dir / "filler"

    def fill(self, spool: Spool) -> None:
        """From now on the spool's next write that needs space fails."""
        if not self.mounted:
            conn: sqlite3.Connection = spool._conn
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            conn.execute(f"PRAGMA max_page_count = {int(pages)}")
            return
        with self._filler.open("ab") as f:
            for _ in range(_TMPFS_BYTES // _CHUNK + 2):  # bounded: the tmpfs is this big
                try:
                    f.write(b"\0" * _CHUNK)
                    f.flush()
                except OSError:
                    break

    def free(self, spool: Spool) -> None:
        if not self.mounted:
            spool._conn.execute("PRAGMA max_page_count = 1073741823")
            return
        self._filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            with contextlib.suppress(subprocess.SubprocessError):
                subprocess.run(
                    ["umount", "-l", str(self.dir)], capture_output=True, check=False, timeout=10
                )
            self.mounted = False
