"""Debian's ``promtool`` and ``prometheus`` for the tests, or a loud skip.

CI (``.ci/run``) installs the ``prometheus`` package, so these tests always
run there; a developer machine without it skips them and says so.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest

INSTALL_HINT = "apt-get install prometheus (Debian; .ci/run installs it, so CI runs this)"


def tool(name: str, hint: str = INSTALL_HINT) -> str:
    """Path of ``name`` on PATH, or skip the test saying loudly what is not run
    (fail instead where COMPUTEWATCH_REQUIRE_TOOLS is set, as in CI)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("COMPUTEWATCH_REQUIRE_TOOLS"):
            pytest.fail(f"{name} is required here (COMPUTEWATCH_REQUIRE_TOOLS is set)")
        pytest.skip(f"SKIPPED, NOT RUN: {name} is not installed here; {hint}")
    return path


def run_tool(args: list[str], *, stdin: bytes | None = None, timeout: float = 60.0) -> str:
    """Run a tool; return its output, or fail the test with that output."""
    proc = subprocess.run(args, input=stdin, capture_output=True, timeout=timeout, check=False)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{out}"
    return out


def free_port() -> int:
    """A loopback port free now (prometheus cannot listen on port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str, timeout: float = 10.0, *, ca: Path | None = None) -> bytes:
    """GET ``url``; an https URL is verified against the CA certificate ``ca``."""
    context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
        return bytes(response.read())


def check_metrics(promtool: str, body: bytes, where: str) -> None:
    """``promtool check metrics`` on one exposition: no lint problem at all."""
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
    )
    out = (proc.stdout + proc.stderr).decode(errors="replace").strip()
    assert proc.returncode == 0, f"promtool check metrics on {where}:\n{out}"
    assert not out, f"promtool check metrics on {where}:\n{out}"


DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
