"""A throwaway PostgreSQL server from Debian's binaries (initdb + pg_ctl).

For the failover benchmark and the test suite's ``pg_server`` fixture: a
temporary data directory, 127.0.0.1 on a free port, the unix socket in that
directory, ``fsync=on``. As root the binaries run as the ``postgres`` user the
package creates (initdb refuses root). Stopped with ``-m immediate`` at exit.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


class PgUnavailableError(RuntimeError):
    """PostgreSQL's server binaries are not installed here."""


def bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<ver>/bin`` with initdb and pg_ctl."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("initdb")
    return None if found is None else Path(found).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(args: list[str], as_postgres: bool) -> None:
    if as_postgres:
        args = ["runuser", "-u", "postgres", "--", *args]
    proc = subprocess.run(args, capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).decode(errors="replace")
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{out}")


@contextlib.contextmanager
def temp_server() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:PORT`` of a server that lives for the block."""
    bins = bindir()
    if bins is None:
        raise PgUnavailableError("PostgreSQL's initdb/pg_ctl are not installed")
    as_postgres = os.geteuid() == 0
    top = Path(tempfile.mkdtemp(prefix="cw-pg-"))
    data = top / "data"
    if as_postgres:
        pw = pwd.getpwnam("postgres")
        os.chown(top, pw.pw_uid, pw.pw_gid)
    port = _free_port()
    try:
        _run(
            [str(bins / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"],
            as_postgres,
        )
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={top}"
            " -c fsync=on -c max_connections=200"
        )
        _run(
            [
                str(bins / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                opts,
                "-l",
                str(top / "log"),
                "-w",
                "start",
            ],
            as_postgres,
        )
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}"
        finally:
            _run(
                [str(bins / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                as_postgres,
            )
    finally:
        shutil.rmtree(top, ignore_errors=True)


def create_database(server: str, name: str) -> str:
    """Create ``name`` on ``server``; its URL."""
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    return f"{server}/{name}"
