"""A regulator beside the demo: `computewatch audit subscribe --follow` in its
own process with nothing but public keys (its own token key, and the demo CA's
certificate to check the collector's TLS certificate), then
`computewatch audit verify` on its copy once the demo ends."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from computewatch.demo.cluster import KeyPaths


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "computewatch.cli", "--log-level", "warning", *args]


class Auditor:
    def __init__(self, address: str, keys: KeyPaths, out: Path) -> None:
        self._address = address
        self._keys = keys
        self.out = out
        self._proc: asyncio.subprocess.Process | None = None

    def _trust(self) -> list[str]:
        return [
            "--collector-key",
            str(self._keys.collector_pub),
            "--node-keys",
            str(self._keys.nodes),
            "--authority-keys",
            str(self._keys.authorities),
        ]

    def subscribe_command(self) -> list[str]:
        return _cli(
            "audit", "subscribe", "--collector", self._address, "--out", str(self.out),
            "--key", str(self._keys.regulator), "--tls-ca", str(self._keys.tls_ca),
            *self._trust(), "--follow",
        )  # fmt: skip

    def verify_command(self) -> list[str]:
        return _cli("audit", "verify", str(self.out), *self._trust())

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self.subscribe_command(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )

    async def stop(self) -> str:
        """Stop following (the copy is committed round by round); its output."""
        proc, self._proc = self._proc, None
        if proc is None:
            return ""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), 10)
        except TimeoutError:
            proc.kill()
            output, _ = await proc.communicate()
        return output.decode(errors="replace")

    async def finish(self, checkpoint_interval: float) -> dict[str, Any]:
        """Give the follower a last checkpoint round, stop it, verify the copy."""
        await asyncio.sleep(checkpoint_interval + 0.5)  # the copy catches up
        running = self._proc is not None and self._proc.returncode is None
        follow_output = await self.stop()
        proc = await asyncio.create_subprocess_exec(
            *self.verify_command(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        verify_output = out.decode(errors="replace").strip()
        last = verify_output.splitlines()[-1] if verify_output else ""
        ok = proc.returncode == 0 and running
        return {
            "followed_live": running,
            "follow_output": follow_output.strip()[-2000:],
            "verify_exit": proc.returncode,
            "verify_output": verify_output[-2000:],
            "summary": ("verified: " if ok else "FAILED: ") + last,
            "commands": {
                "subscribe": " ".join(self.subscribe_command()[1:]),
                "verify": " ".join(self.verify_command()[1:]),
            },
        }
