"""A filesystem that fills up on demand, for fault-injection tests.

``small_fs`` mounts a small tmpfs (the tests run as root on this machine and
on CI's); a filler eats its free space with files and frees a little or all
of it again. Where mounting is refused, ``PageCap`` stands in: SQLite's
``max_page_count`` on the ledger's writer connection, which fails writes
with SQLITE_FULL exactly where a full disk does, so the tests never skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from collector.store.ledger import Ledger

_CHUNK = b"\0" * (64 << 10)


class Filler(Protocol):
    kind: str

    async def fill(self) -> None: ...

    async def free_some(self) -> None: ...

    async def free_all(self) -> None: ...


class TmpfsFiller:
    """Eats a mounted tmpfs's free space with files; frees by deleting them."""

    kind = "tmpfs"

    def __init__(self, root: Path, little: int) -> None:
        self._dir = root / "filler"
        self._dir.mkdir(exist_ok=True)
        self._files: list[Path] = []
        self._little = little

    def _fill(self) -> None:
        for _ in range(100_000):  # bounded: the filesystem is a few MiB
            path = self._dir / f"f{len(self._files)}"
            self._files.append(path)
            try:
                with path.open("wb") as f:
                    for _ in range(16):
                        f.write(_CHUNK)
                        f.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return

    def _free(self, nbytes: int | None) -> None:
        freed = 0
        while self._files and (nbytes is None or freed < nbytes):
            path = self._files.pop()
            with contextlib.suppress(FileNotFoundError):
                freed += path.stat().st_size
                path.unlink()

    async def fill(self) -> None:
        await asyncio.to_thread(self._fill)

    async def free_some(self) -> None:
        await asyncio.to_thread(self._free, self._little)

    async def free_all(self) -> None:
        await asyncio.to_thread(self._free, None)


class PageCap:
    """The fallback: cap the ledger file at its current page count."""

    kind = "max_page_count"

    def __init__(self, ledger: Ledger, little_pages: int) -> None:
        self._ledger = ledger
        self._little = little_pages

    async def fill(self) -> None:
        await self._ledger.limit_pages(await self._ledger.page_count())

    async def free_some(self) -> None:
        await self._ledger.limit_pages(await self._ledger.page_count() + self._little)

    async def free_all(self) -> None:
        await self._ledger.limit_pages(1 << 30)


@contextlib.contextmanager
def small_fs(root: Path, size_bytes: int, *, mount: bool = True) -> Iterator[bool]:
    """Mount a tmpfs of ``size_bytes`` on ``root`` (if ``mount``); yields whether
    it is mounted."""
    root.mkdir(parents=True, exist_ok=True)
    mounted = False
    if mount and os.geteuid() == 0:
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(root)],
            capture_output=True,
            check=False,
            timeout=10,
        )
        mounted = res.returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            res = subprocess.run(
                ["umount", str(root)],
                capture_output=True,
                check=False,
                timeout=10,
            )
            if res.returncode != 0:
                subprocess.run(
                    ["umount", "-l", str(root)],
                    capture_output=True,
                    check=False,
                    timeout=10,
                )
