"""A real PostgreSQL server for the tests, from Debian's ``postgresql`` binaries.

``pg_server`` (session scope) runs initdb and pg_ctl on a temporary directory,
listening on 127.0.0.1 and a free port with its unix socket in that
directory, ``fsync=on``; it stops the server at the end of the session. As
root (CI containers) the binaries run as the ``postgres`` user the package
creates, since initdb refuses root. Without the binaries or psycopg the tests
that need it skip LOUDLY, or fail where COMPUTEWATCH_REQUIRE_TOOLS is set
(.ci/run sets it and installs the package). ``pg_url`` gives each test its
own fresh database on that server.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL_HINT = "apt-get install postgresql (Debian) and pip install 'psycopg[binary]'"
_names = itertools.count()


def _missing(what: str) -> None:
    if os.environ.get("COMPUTEWATCH_REQUIRE_TOOLS"):
        pytest.fail(f"{what} is required here (COMPUTEWATCH_REQUIRE_TOOLS is set)")
    pytest.skip(f"SKIPPED, NOT RUN: {what} is not installed here; {INSTALL_HINT}")


def _bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
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
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{out}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:PORT`` of a server this session started."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("psycopg")
    bindir = _bindir()
    if bindir is None:
        _missing("PostgreSQL's initdb/pg_ctl")
    assert bindir is not None
    as_postgres = os.geteuid() == 0
    top = Path(tempfile.mkdtemp(prefix="cw-pg-"))
    data = top / "data"
    if as_postgres:
        pw = pwd.getpwnam("postgres")
        os.chown(top, pw.pw_uid, pw.pw_gid)
    port = _free_port()
    _run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-instructions",
        ],
        as_postgres,
    )
    opts = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={top}"
        " -c fsync=on -c max_connections=200"
    )
    _run(
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-l",
            str(top / "log"),
            "-w",
            "-t",
            "60",
            "start",
        ],
        as_postgres,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        _run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], as_postgres
        )
        shutil.rmtree(top, ignore_errors=True)


def fresh_database(server: str) -> str:
    """A new, empty database on ``server``; its URL."""
    import psycopg

    name = f"cw_test_{os.getpid()}_{next(_names)}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    return f"{server}/{name}"
