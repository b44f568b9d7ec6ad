"""Replaying a recorded ledger against packs, through the library and the CLI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from collector.rules.load import load_packs
from collector.rules.model import DecisionKind
from collector.rules.replay import replay_entries, replay_ledger
from collector.store.ledger import Entry, Ledger, iter_entries
from computewatch.cli import cli
from protos import dsse
from protos.computewatch.v1 import control_pb2
from protos.errors import LogError
from protos.keys import PrivateKey
from tests.support import Node, gpu

T0 = 1_750_000_000.0

PACK = """\
pack: replay-test
version: "1"
description: Rules for the replay test.
rules:
  - id: big-job
    description: A job past 5e16 FLOP halts.
    metric: cumulative_flop
    bound: estimate
    scope: job
    comparison: ">"
    threshold: 5e16
    unit: FLOP
    action: halt
  - id: cyber
    description: Cyber-offense capability halts the lineage.
    metric: capability:cyber-offense
    scope: job
    comparison: ">="
    threshold: 0.5
    unit: score
    lineage: descendants
    action: halt
  - id: silent
    description: A node silent for 10 s.
    metric: silent_seconds
    scope: node
    comparison: ">"
    threshold: 10
    unit: seconds
    action: alert
"""


def write_ledger(path: Path) -> None:
    """Two nodes at 1 s for 10 s; node b stops at 5 s; an evaluation at 8 s; a gap."""
    a = Node("node-a", PrivateKey.generate())
    b = Node("node-b", PrivateKey.generate())
    evaluator = PrivateKey.generate()
    now = [0]

    async def scenario() -> None:
        ledger = Ledger(path, clock_ns=lambda: now[0])

        async def put(data: bytes, ptype: str, node: Node | None = None) -> None:
            if node is None:
                await ledger.append(Entry(data, ptype))
            else:
                await ledger.append(
                    Entry(
                        data,
                        ptype,
                        node_id=node.node_id,
                        keyid=node.key.keyid,
                        sequence=node.sequence,
                        digest=dsse.digest(data),
                    )
                )

        for t in range(10):
            now[0] = int((T0 + t) * 1e9)
            # 8 H100 at 90% on node a: 7.1e15 FLOP/s, past 5e16 FLOP after 8 s.
            gpus_a = [gpu(i, util=90.0, job="train", pid=100 + i) for i in range(8)]
            await put(a.next(gpus_a), dsse.REPORT_TYPE, a)
            if t < 5:
                report = b.report([gpu(0, util=10.0, job="ft")])
                # ft fine-tunes train's checkpoint (declared lineage).
                report.jobs.add(job_id="ft", parent_job_ids=["train"])
                await put(b.seal(report), dsse.REPORT_TYPE, b)
            if t == 8:
                ev = control_pb2.Evaluation(
                    model_id="m", job_id="train", evaluation="cyber-offense", score=0.8
                )
                await put(dsse.seal(ev, evaluator), dsse.EVALUATION_TYPE)
        now[0] = int((T0 + 3600) * 1e9)
        await put(b"not an envelope", dsse.REPORT_TYPE)
        await put(b"directive bytes", dsse.DIRECTIVE_TYPE)
        await ledger.close()

    asyncio.run(scenario())


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    write_ledger(path)
    return path


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    path = tmp_path / "replay.yaml"
    path.write_text(PACK)
    return path


def test_replay_reports_what_would_have_fired_and_when(ledger: Path, pack: Path) -> None:
    result = replay_ledger(ledger, load_packs([pack]))
    assert result.entries == 18
    assert (result.reports, result.evaluations) == (15, 1)
    assert dict(result.skipped) == {"decode": 1}
    assert dict(result.other) == {dsse.DIRECTIVE_TYPE: 1}
    assert result.first_time == T0
    assert result.last_time == T0 + 3600
    # 1 s ticks for 10 s, then across the hour-long gap only a handful.
    assert result.ticks < 20
    got = [(str(d.kind), d.rule.id, d.key, d.time - T0) for d in result.decisions]
    fires = [g for g in got if g[0] == "fire"]
    assert ("fire", "big-job", "train", 8.0) in fires
    # The evaluation arrived at t=8 and shows at the next tick.
    assert ("fire", "cyber", "train", 9.0) in fires
    cyber = next(d for d in result.decisions if d.rule.id == "cyber")
    assert cyber.targets == ("train", "ft")
    # node-b stopped at 4: silent (3 intervals) but not yet for 10 s at the
    # first tick after the last report (10); both are at the tick before the
    # entries an hour later.
    silent = [g for g in fires if g[1] == "silent"]
    assert sorted(silent) == [("fire", "silent", n, 3600.0) for n in ("node-a", "node-b")]
    big = next(d for d in result.decisions if d.rule.id == "big-job")
    assert big.log_indices
    entries = {e.index: e for e in iter_entries(ledger)}
    assert all(entries[i].payload_type == dsse.REPORT_TYPE for i in big.log_indices)


def test_replay_writes_nothing(ledger: Path, pack: Path) -> None:
    before = ledger.read_bytes()
    replay_ledger(ledger, load_packs([pack]))
    assert ledger.read_bytes() == before


def test_replay_refuses_missing_ledgers_and_bad_ticks(tmp_path: Path, pack: Path) -> None:
    with pytest.raises(LogError, match="does not exist"):
        replay_ledger(tmp_path / "nope.db", load_packs([pack]))
    not_sqlite = tmp_path / "junk.db"
    not_sqlite.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LogError, match="cannot read ledger"):
        replay_ledger(not_sqlite, load_packs([pack]))
    with pytest.raises(ValueError, match="tick_seconds"):
        replay_entries([], load_packs([pack]), tick_seconds=0)


def test_cli_rules_test_prints_decisions_and_a_summary(ledger: Path, pack: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["rules", "test", "--ledger", str(ledger), "--pack", str(pack)])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert any("FIRE" in ln and "big-job" in ln and "(+8.0s)" in ln for ln in lines)
    assert "dry run, nothing written" in lines[-1]
    res = runner.invoke(
        cli, ["rules", "test", "--ledger", str(ledger), "--pack", str(pack), "--json"]
    )
    assert res.exit_code == 0, res.output
    docs = [json.loads(ln) for ln in res.stdout.strip().splitlines()]
    summary = docs[-1]["summary"]
    assert summary["reports"] == 15
    assert summary["fired"] == sum(1 for d in docs[:-1] if d["kind"] == DecisionKind.FIRE)
    cyber = next(d for d in docs[:-1] if d["rule"] == "cyber")
    assert cyber["targets"] == ["train", "ft"]


def test_cli_rules_test_refuses_a_broken_pack(ledger: Path) -> None:
    bad = Path(__file__).resolve().parents[2] / "data" / "rules" / "many-mistakes.yaml"
    res = CliRunner().invoke(cli, ["rules", "test", "--ledger", str(ledger), "--pack", str(bad)])
    assert res.exit_code == 1
    assert "rule: 11 problems in rule packs" in res.output


def test_a_ledger_copied_to_postgresql_replays_the_same(
    ledger: Path, pack: Path, pg_server: str
) -> None:
    """The same entries read from PostgreSQL (pages of rows) decide the same."""
    from collector.store import open_store
    from tests.pg_support import fresh_database

    url = fresh_database(pg_server)
    store = open_store(url)
    try:
        for e in iter_entries(ledger):  # each with its own receipt time
            store.append_batch(e.index, [Entry(e.data, e.payload_type)], e.received_unix_nanos)
    finally:
        store.close()
    assert [e.data for e in iter_entries(url)] == [e.data for e in iter_entries(ledger)]
    packs = load_packs([pack])
    here, there = replay_ledger(ledger, packs), replay_ledger(url, packs)
    assert there.entries == here.entries == 18
    assert [(d.kind, d.rule.id, d.key, d.time) for d in there.decisions] == [
        (d.kind, d.rule.id, d.key, d.time) for d in here.decisions
    ]
