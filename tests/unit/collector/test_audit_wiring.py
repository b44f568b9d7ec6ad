"""``start_audit`` releases what it opened when it refuses to start."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest

from collector.services.audit_wiring import start_audit
from protos.errors import LogError
from protos.keys import PrivateKey
from tests.integration.audit_support import ORIGIN, LogWriter


def open_files_under(folder: Path) -> int:
    """File descriptors of this process open on files in ``folder`` (Linux /proc)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(str(folder))
    return count


def test_a_refused_start_closes_its_connection(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    writer = LogWriter(tmp_path / "ledger.db")

    async def start(origin: str) -> None:
        server = grpc.aio.server()
        try:
            handle = await start_audit(
                server, writer.path, writer.merkle, key, origin, checkpoint_interval_seconds=10.0
            )
            await handle.close()
        finally:
            await server.stop(0)

    async def scenario() -> None:
        await start(ORIGIN)  # signs and stores a first checkpoint
        before = open_files_under(tmp_path)
        # Another log id over the same ledger: refused, as it must be...
        with pytest.raises(LogError, match="does not verify under this key and origin"):
            await start("another.example/log")
        # ...without leaving its connection to the ledger open.
        assert open_files_under(tmp_path) == before

    try:
        asyncio.run(scenario())
    finally:
        writer.close()
