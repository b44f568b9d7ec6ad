"""A SQLite ledger written by the running collector's Ledger, copied into PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from collector.nodes.registry import enroll, list_nodes
from collector.store.copy import copy_ledger
from collector.store.ledger import Ledger
from collector.store.ledger_store import Entry
from collector.store.merkle_log import MerkleLog
from collector.store.pg_store import PgStore
from collector.store.sequencer import StoreLedger
from collector.store.sql import open_db
from protos import merkle
from protos.errors import LogError
from protos.keys import PrivateKey
from tests.pg_support import fresh_database


def report(key: str, seq: int) -> Entry:
    data = f"{key}:{seq}".encode()
    return Entry(data, "t", f"node-{key}", key, seq, merkle.leaf_hash(data))


def sqlite_ledger(path: Path) -> tuple[int, bytes]:
    """Write a ledger the way the collector does; (size, root)."""

    async def write() -> tuple[int, bytes]:
        ledger = Ledger(path, clock_ns=lambda: 1234)
        tree = MerkleLog(ledger.connection)
        ledger.attach_tree(tree)
        await asyncio.gather(*(ledger.append(report(f"k{i % 3}", i // 3 + 1)) for i in range(30)))
        ledger.record_evidence("equivocation", "node-k1", 2, b"a", b"b", keyid="k1", keep=1)
        ledger.record_evidence("equivocation", "node-k1", 2, b"a", b"c", keyid="k1", keep=1)
        snap = tree.snapshot()
        tree.close()
        await ledger.close()
        return snap

    size_root = asyncio.run(write())
    enroll(path, "gpu-1", PrivateKey.generate().public)
    return size_root


def test_the_copy_keeps_every_row_and_the_tree_and_the_leader_goes_on(
    tmp_path: Path,
    pg_server: str,
) -> None:
    path = tmp_path / "ledger.db"
    size, root = sqlite_ledger(path)
    url = fresh_database(pg_server)
    result = copy_ledger(path, url)
    assert (result.entries, result.root) == (size, root) == (30, root)
    assert result.rows["log"] == 30
    assert result.rows["nodes"] == 1
    assert result.rows["evidence"] == 1
    assert result.rows["evidence_counts"] == 1
    assert (result.rows["key_event"], result.rows["key_state"]) == (1, 1)
    # The enrolment and its queued key event came along; new events go on after it.
    assert [n.node_id for n in list_nodes(url)] == ["gpu-1"]
    enroll(url, "gpu-2", PrivateKey.generate().public)
    reader = open_db(url, readonly=True)
    try:
        assert reader.execute("SELECT id FROM key_event ORDER BY id") == [(1,), (2,)]
    finally:
        reader.close()
    store = PgStore(url)
    assert (store.size, store.root()) == (30, root)
    assert store.entries(0, 1)[0].received_unix_nanos == 1234  # receipt times kept
    assert store.stored_sequence("k2") == 10
    assert store.evidence_seen("k1", "equivocation") == 2
    kept = store.record_evidence("other", None, None, None, b"x", keyid="k", keep=1, now_ns=1)
    assert kept  # the evidence ids go on after the copied ones

    async def go_on() -> int:
        ledger = StoreLedger(store)
        index = await ledger.append(report("k0", 11))
        await ledger.close()
        return index

    assert asyncio.run(go_on()) == 30
    with pytest.raises(LogError, match="not empty"):
        copy_ledger(path, url)


def test_a_tree_that_does_not_match_the_log_is_not_copied(
    tmp_path: Path,
    pg_server: str,
) -> None:
    path = tmp_path / "ledger.db"
    sqlite_ledger(path)
    with sqlite3.connect(path) as conn:  # rewrite one entry's bytes behind the tree's back
        conn.execute("UPDATE log SET data = x'00' WHERE idx = 7")
    url = fresh_database(pg_server)
    with pytest.raises(LogError, match="does not match its log"):
        copy_ledger(path, url)
    store = PgStore(url)
    try:
        assert store.size == 0
    finally:
        store.close()


def test_the_cli_copies_and_names_the_leader(
    tmp_path: Path,
    pg_server: str,
) -> None:
    from click.testing import CliRunner

    from collector.ha.leader import LeaderLease
    from computewatch.cli import cli

    path = tmp_path / "ledger.db"
    _, root = sqlite_ledger(path)
    url = fresh_database(pg_server)
    runner = CliRunner()
    neither = runner.invoke(cli, ["ledger", "copy", "--from", str(path)])
    assert neither.exit_code == 2
    assert "exactly one of --to and --to-file" in neither.output
    out = runner.invoke(cli, ["ledger", "copy", "--from", str(path), "--to", url])
    assert out.exit_code == 0, out.output
    assert f"copied 30 entries, root {root.hex()}" in out.output
    again = runner.invoke(
        cli, ["ledger", "copy", "--from", str(path)], env={"COMPUTEWATCH_LEDGER_URL": url}
    )
    assert again.exit_code == 1
    assert "log: the destination's log table is not empty" in again.output
    url_file = tmp_path / "ledger.url"
    url_file.write_text(url + "\n")
    shown = runner.invoke(cli, ["ledger", "leader", "--url-file", str(url_file)])
    assert shown.exit_code == 0, shown.output
    assert "no collector has led" in shown.output
    both = runner.invoke(cli, ["ledger", "leader", "--url", url, "--url-file", str(url_file)])
    assert both.exit_code == 2
    assert "exactly one of --url and --url-file" in both.output
    lease = LeaderLease(url, "collector-a", lease_seconds=30)
    try:
        lease.try_acquire()
        shown = runner.invoke(cli, ["ledger", "leader", "--url", url])
        assert "leader collector-a term 1" in shown.output
    finally:
        lease.close()
    bad = runner.invoke(cli, ["ledger", "leader", "--url", "postgresql://127.0.0.1:1/x"])
    assert bad.exit_code == 1
    assert bad.output.startswith("Error: postgresql: ")
