"""A real PostgreSQL server for the tests, from Debian's ``postgresql`` binaries.

``pg_server`` (session scope) starts one with ``bench.pg_temp.temp_server``
(initdb + pg_ctl on a temporary directory, 127.0.0.1 and a free port,
``fsync=on``, run as the ``postgres`` user when we are root) and stops it at
the end of the session. Without the binaries or psycopg the tests that need
it skip LOUDLY, or fail where COMPUTEWATCH_REQUIRE_TOOLS is set (.ci/run sets
it and installs the package). ``fresh_database`` gives each test its own
empty database on that server.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.pg_temp import bindir, create_database, temp_server

INSTALL_HINT = "apt-get install postgresql (Debian) and pip install 'psycopg[binary]'"
_names = itertools.count()


def _missing(what: str) -> None:
    if os.environ.get("COMPUTEWATCH_REQUIRE_TOOLS"):
        pytest.fail(f"{what} is required here (COMPUTEWATCH_REQUIRE_TOOLS is set)")
    pytest.skip(f"SKIPPED, NOT RUN: {what} is not installed here; {INSTALL_HINT}")


def need_psycopg() -> None:
    """psycopg is importable, or a loud skip (a failure where tools are required)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("psycopg")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:PORT`` of a server this session started."""
    need_psycopg()
    if bindir() is None:
        _missing("PostgreSQL's initdb/pg_ctl")
    with temp_server() as url:
        yield url


def fresh_database(server: str) -> str:
    """A new, empty database on ``server``; its URL."""
    return create_database(server, f"cw_test_{os.getpid()}_{next(_names)}")


BACKENDS = ["sqlite", "postgresql"]


def backend_location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """For a fixture with ``params=BACKENDS``: the ledger file's path (SQLite,
    as the CLI and ``collector serve`` pass it) or a fresh PostgreSQL
    database's URL on the session's server."""
    if request.param == "sqlite":
        return tmp_path / "ledger.db"
    return fresh_database(request.getfixturevalue("pg_server"))
