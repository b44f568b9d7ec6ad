"""A collector started on a full disk stops with one clear line, no traceback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.faults.smallfs import TmpfsFiller, small_fs
from tests.support import new_key


def serve(ledger: Path, key: Path) -> subprocess.CompletedProcess[str]:
    argv = [
        "collector",
        "serve",
        "--ledger",
        str(ledger),
        "--key",
        str(key),
        "--insecure-plaintext",
    ]
    return subprocess.run(
        [sys.executable, "-m", "computewatch.cli", *argv, "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_full_disk_at_start_is_one_line(tmp_path: Path) -> None:
    key = tmp_path / "collector.key"
    new_key(key)
    with small_fs(tmp_path / "fs", 1 << 20) as mounted:
        if mounted:
            filler = TmpfsFiller(tmp_path / "fs", 0)
            asyncio.run(filler.fill())  # the whole filesystem, before the collector starts
            ledger = tmp_path / "fs" / "ledger.db"
        else:  # no mount here: a path whose folder cannot be created either
            blocker = tmp_path / "fs" / "blocker"
            blocker.write_text("a file where the ledger's folder should be\n")
            ledger = blocker / "ledger.db"
        res = serve(ledger, key)
    assert res.returncode == 1, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert lines[0].startswith("Error: ledger_unavailable: cannot open the ledger")
    if mounted:
        assert "disk_full" in lines[0]
