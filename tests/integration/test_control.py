"""The collector side of the stop protocol over real loopback gRPC.

Rules firing issue signed directives to exactly the nodes in scope; nodes
that connect later receive what is in force; k distinct authority keys lift
a halt with a RESUME that carries their approvals; leases go to healthy
nodes only; telemetry decides effectiveness; counters survive a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner, Result
from prometheus_client import generate_latest

from collector.stop.quorum import require_quorum
from computewatch.cli import cli
from protos import dsse
from protos.computewatch.v1 import control_pb2, envelope_pb2, telemetry_pb2
from protos.errors import ConfigError, RuleError
from protos.keys import PrivateKey, PublicKey, write_private_key, write_public_key
from tests.stop_support import (
    JOB_HALT_PACK,
    Control,
    Link,
    approval,
    authorities,
    collector_public,
    drain,
    evaluation,
    manual_halt,
    next_directive,
    node_scope,
    open_directive,
    receipt_report_gpus,
    write_pack,
)
from tests.support import Node, collector_config, enroll_nodes, gpu, running_collector

HALT = control_pb2.ACTION_HALT
RESUME = control_pb2.ACTION_RESUME
LEASE = control_pb2.ACTION_LEASE


def directive_rows(ledger: Path) -> list[bytes]:
    conn = sqlite3.connect(ledger)
    rows = conn.execute(
        "SELECT data FROM log WHERE payload_type = ? ORDER BY idx", (dsse.DIRECTIVE_TYPE,)
    ).fetchall()
    conn.close()
    return [bytes(r[0]) for r in rows]


async def report(node: Node, client: Link, gpus: list[telemetry_pb2.GpuSample]) -> None:
    await client.send(node.next(gpus))
    await client.ack_for(node.sequence)


async def enforced(
    node: Node,
    client: Link,
    directive: control_pb2.Directive,
    gpus: list[telemetry_pb2.GpuSample],
    *,
    prohibited: bool = True,
    util: float = 0.0,
) -> None:
    """Report like an agent that enforced ``directive`` (or claims to, GPUs still busy)."""
    rep = node.report(receipt_report_gpus(gpus, prohibited=prohibited, util=util))
    rep.receipts.add(
        directive_id=directive.id, directive_counter=directive.counter, enforced_unix_nanos=1
    )
    rep.enforcement.active_directive_ids.append(directive.id)
    await client.send(node.seal(rep))
    await client.ack_for(node.sequence)


def test_a_firing_rule_halts_exactly_the_nodes_running_the_job(tmp_path: Path) -> None:
    config = collector_config(
        tmp_path, rule_packs=(str(write_pack(tmp_path)),), interval_seconds=60.0
    )
    a, b, c = enroll_nodes(config.ledger, ["node-a", "node-b", "node-c"])
    collector_key = collector_public(config.key)

    async def scenario() -> None:
        async with running_collector(config) as service:
            clients = [Link(service.address) for _ in range(3)]
            ca, cb, cc = clients
            for node, client in zip((a, b, c), clients, strict=True):
                await client.prove(node)
            await report(a, ca, [gpu(0, job="big")])
            await report(b, cb, [gpu(0, job="big", pid=7)])
            await report(c, cc, [gpu(0, job="small", util=1.0)])
            halt_a = await next_directive(ca, collector_key)
            halt_b = await next_directive(cb, collector_key)
            assert halt_a == halt_b
            assert halt_a.action == HALT
            assert halt_a.rule_id == "big-job"
            assert halt_a.scope.kind == control_pb2.SCOPE_KIND_JOB
            assert list(halt_a.scope.job_ids) == ["big"]
            assert list(halt_a.scope.node_ids) == ["node-a", "node-b"]
            assert halt_a.evidence.metric == "cumulative_flop"
            assert halt_a.evidence.measured_value > halt_a.evidence.threshold == 1e15
            assert halt_a.evidence.unit == "FLOP"
            assert len(halt_a.evidence.log_indices) >= 2
            assert "job big" in halt_a.reason
            assert halt_a.counter == 1
            assert halt_a.not_after_unix_nanos > halt_a.issued_unix_nanos
            # Node c is not in scope: nothing but acks reach it.
            assert not [m for m in await drain(cc, 0.3) if m.HasField("directive")]
            # Logged before it was sent: the ledger holds exactly these bytes.
            rows = directive_rows(config.ledger)
            assert [open_directive(r, collector_key) for r in rows] == [halt_a]
            text = generate_latest(service.metrics_registry).decode()
            assert (
                'computewatch_rule_decisions_total{action="halt",kind="fire",rule="big-job"} 1.0'
                in text
            )
            assert 'computewatch_rule_firing{action="alert",rule="busy-cluster"} 1.0' in text
            assert 'computewatch_directives_issued_total{action="halt"} 1.0' in text
            assert "computewatch_directives_in_force 1.0" in text
            # The rule fires once per crossing: more reports issue nothing new.
            await report(a, ca, [gpu(0, job="big")])
            await asyncio.sleep(0.2)
            assert len(directive_rows(config.ledger)) == 1
            for client in clients:
                await client.close()

    asyncio.run(scenario())


def test_a_node_that_connects_later_receives_what_is_in_force(tmp_path: Path) -> None:
    keys, paths = authorities(tmp_path, 2)
    config = collector_config(
        tmp_path, authority_keys=tuple(paths), quorum=1, interval_seconds=60.0
    )
    a, b, c = enroll_nodes(config.ledger, ["node-a", "node-b", "node-c"])
    collector_key = collector_public(config.key)

    async def scenario() -> None:
        async with running_collector(config) as service:
            control = Control(service.address)
            cluster = await control.halt(
                manual_halt(keys[0], control_pb2.Scope(kind=control_pb2.SCOPE_KIND_CLUSTER))
            )
            only_b = await control.halt(manual_halt(keys[1], node_scope("node-b")))
            assert len(cluster.directive_ids) == len(only_b.directive_ids) == 1
            # Both issued while no node is connected; they connect now.
            ca, cb = Link(service.address), Link(service.address)
            await ca.prove(a)
            await ca.send(a.next([gpu(0)]))
            await cb.prove(b)
            await cb.send(b.next([gpu(0)]))
            first_a = await next_directive(ca, collector_key)
            assert first_a.id == cluster.directive_ids[0]
            assert first_a.scope.kind == control_pb2.SCOPE_KIND_CLUSTER
            assert sorted(first_a.scope.node_ids) == ["node-a", "node-b", "node-c"]
            assert first_a.rule_id == "manual"
            assert first_a.evidence.log_indices == [cluster.log_index]
            got_b = [
                await next_directive(cb, collector_key),
                await next_directive(cb, collector_key),
            ]
            assert [d.id for d in got_b] == [cluster.directive_ids[0], only_b.directive_ids[0]]
            assert got_b[0].counter < got_b[1].counter  # in counter order
            assert not [m for m in await drain(ca, 0.3) if m.HasField("directive")]
            # Lifted directives are no longer sent to newcomers.
            await control.approve(approval(keys[0], only_b.directive_ids[0]))
            cc = Link(service.address)
            await cc.prove(c)
            await cc.send(c.next([gpu(0)]))
            assert (await next_directive(cc, collector_key)).id == cluster.directive_ids[0]
            assert not [m for m in await drain(cc, 0.3) if m.HasField("directive")]
            listed = await control.list(in_force_only=True)
            assert [open_directive(r.envelope, collector_key).id for r in listed] == [
                cluster.directive_ids[0]
            ]
            for client in (ca, cb, cc):
                await client.close()
            await control.close()

    asyncio.run(scenario())


def test_resume_needs_k_distinct_authority_keys_and_carries_their_approvals(
    tmp_path: Path,
) -> None:
    keys, paths = authorities(tmp_path, 3)
    # The first authority's key configured a second time under another file name.
    alias = tmp_path / "same-key-other-name.pub"
    alias.write_bytes(paths[0].read_bytes())
    config = collector_config(
        tmp_path, authority_keys=(*paths, alias), quorum=2, interval_seconds=60.0
    )
    (a,) = enroll_nodes(config.ledger, ["node-a"])
    collector_key = collector_public(config.key)
    trusted = {k.keyid: k.public for k in keys}

    async def scenario() -> None:
        async with running_collector(config) as service:
            control = Control(service.address)
            client = Link(service.address)
            await client.prove(a)
            await report(a, client, [gpu(0)])
            halted = await control.halt(manual_halt(keys[2], node_scope("node-a")))
            halt = await next_directive(client, collector_key)
            assert halt.id == halted.directive_ids[0]
            first = await control.approve(approval(keys[0], halt.id))
            assert not first.directive_ids
            assert "1 of 2" in first.message
            # The same key again (fresh bytes) counts once: refused, no RESUME.
            with pytest.raises(grpc.aio.AioRpcError) as again:
                await control.approve(approval(keys[0], halt.id))
            assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS
            # A key that is no authority is refused.
            with pytest.raises(grpc.aio.AioRpcError) as stranger:
                await control.approve(approval(a.key, halt.id))
            assert stranger.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert (await control.list(in_force_only=True))[0].approval_keyids == [keys[0].keyid]
            second = await control.approve(approval(keys[1], halt.id))
            assert len(second.directive_ids) == 1
            resume = await next_directive(client, collector_key)
            assert resume.action == RESUME
            assert resume.id == second.directive_ids[0]
            assert resume.resumes_directive_id == halt.id
            assert resume.counter > halt.counter
            assert list(resume.scope.node_ids) == ["node-a"]
            assert require_quorum(resume.approvals, trusted, halt.id, 2) == {
                keys[0].keyid,
                keys[1].keyid,
            }
            assert await control.list(in_force_only=True) == []
            records = {
                open_directive(r.envelope, collector_key).id: r for r in await control.list()
            }
            assert sorted(records[resume.id].approval_keyids) == sorted(
                [keys[0].keyid, keys[1].keyid]
            )
            # A third approval arrives late: the halt is no longer in force.
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await control.approve(approval(keys[2], halt.id))
            assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            await client.close()
            await control.close()

    asyncio.run(scenario())


def test_leases_go_each_interval_to_healthy_nodes_only(tmp_path: Path) -> None:
    keys, paths = authorities(tmp_path, 1)
    config = collector_config(
        tmp_path,
        interval_seconds=0.1,
        lease_seconds=5.0,
        authority_keys=tuple(paths),
        quorum=1,
    )
    live, quiet = enroll_nodes(config.ledger, ["node-live", "node-quiet"])
    collector_key = collector_public(config.key)

    async def lease_ids(client: Link, seconds: float) -> list[control_pb2.Directive]:
        out = []
        for msg in await drain(client, seconds):
            if msg.HasField("directive"):
                d = open_directive(msg.directive, collector_key)
                if d.action == LEASE:
                    out.append(d)
        return out

    async def scenario() -> None:
        async with running_collector(config) as service:
            cl, cq = Link(service.address), Link(service.address)
            # Reports claim a 0.1 s interval: silent after 3 x 0.1 s without one.
            await cl.prove(live)
            await cl.send(live.next([gpu(0)], interval=0.1))
            await cq.prove(quiet)
            await cq.send(quiet.next([gpu(0)], interval=0.1))
            both = await next_directive(cl, collector_key, actions=[LEASE])
            assert both.scope.kind == control_pb2.SCOPE_KIND_NODE
            assert "node-live" in both.scope.node_ids
            assert both.not_after_unix_nanos - both.issued_unix_nanos == 5 * 10**9
            quiet_first = await next_directive(cq, collector_key, actions=[LEASE])
            assert "node-quiet" in quiet_first.scope.node_ids
            # node-live keeps reporting; node-quiet stays connected but silent.
            seen_live: list[control_pb2.Directive] = []
            for _ in range(10):
                await cl.send(live.next([gpu(0)], interval=0.1))
                seen_live += await lease_ids(cl, 0.1)
            seen_quiet = await lease_ids(cq, 0.05)
            assert "node-live" in seen_live[-1].scope.node_ids
            assert "node-quiet" not in seen_live[-1].scope.node_ids
            last_quiet = max((d.issued_unix_nanos for d in seen_quiet), default=0)
            assert last_quiet < seen_live[-1].issued_unix_nanos
            assert len(seen_quiet) < len(seen_live)
            counters = [d.counter for d in seen_live]
            assert counters == sorted(counters)
            assert len(set(counters)) == len(counters)
            # Lease counters are their own class: a halt now is counter 1.
            control = Control(service.address)
            halted = await control.halt(manual_halt(keys[0], node_scope("node-live")))
            halt = await next_directive(cl, collector_key)
            assert halt.id == halted.directive_ids[0]
            assert halt.counter == 1
            assert max(counters) > 1
            await control.close()
            for client in (cl, cq):
                await client.close()

    asyncio.run(scenario())


def test_effective_only_when_telemetry_shows_it_else_the_alert(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys, paths = authorities(tmp_path, 1)
    config = collector_config(
        tmp_path,
        authority_keys=tuple(paths),
        quorum=1,
        interval_seconds=60.0,
        effective_timeout_seconds=1.5,
    )
    good, bad = enroll_nodes(config.ledger, ["node-good", "node-bad"])
    collector_key = collector_public(config.key)
    gpus = [gpu(0, job="j"), gpu(1, job="j")]

    async def scenario() -> None:
        async with running_collector(config) as service:
            control = Control(service.address)
            cg, cb = Link(service.address), Link(service.address)
            await cg.prove(good)
            await cb.prove(bad)
            await report(good, cg, gpus)
            await report(bad, cb, gpus)
            for scope in (node_scope("node-good"), node_scope("node-bad")):
                await control.halt(manual_halt(keys[0], scope))
            halt_good = await next_directive(cg, collector_key)
            halt_bad = await next_directive(cb, collector_key)
            # A receipt alone is not enough: the GPUs must show it.
            await enforced(good, cg, halt_good, gpus, prohibited=False, util=0.0)
            await enforced(bad, cb, halt_bad, gpus, prohibited=True, util=80.0)
            await asyncio.sleep(0.2)
            records = {
                open_directive(r.envelope, collector_key).id: r for r in await control.list()
            }
            assert records[halt_good.id].effective_unix_nanos == 0
            assert list(records[halt_good.id].receipt_node_ids) == ["node-good"]
            await enforced(good, cg, halt_good, gpus, prohibited=True, util=0.0)
            for _ in range(100):
                records = {
                    open_directive(r.envelope, collector_key).id: r for r in await control.list()
                }
                if records[halt_good.id].effective_unix_nanos:
                    break
                await asyncio.sleep(0.05)
            assert records[halt_good.id].effective_unix_nanos >= halt_good.issued_unix_nanos
            # node-bad still computes: past the timeout the alert is raised.
            for _ in range(100):
                text = generate_latest(service.metrics_registry).decode()
                if "computewatch_directives_not_effective 1.0" in text:
                    break
                await asyncio.sleep(0.05)
            assert "computewatch_directives_not_effective 1.0" in text
            assert records[halt_bad.id].effective_unix_nanos == 0
            assert any(
                "not effective" in r.getMessage() and halt_bad.id in r.getMessage()
                for r in caplog.records
            )
            assert not any(
                halt_good.id in r.getMessage()
                for r in caplog.records
                if r.levelno >= logging.WARNING
            )
            await control.close()
            for client in (cg, cb):
                await client.close()

    with caplog.at_level(logging.INFO, logger="collector.stop.effectiveness"):
        asyncio.run(scenario())


def test_counters_in_force_halts_and_approvals_survive_a_restart(tmp_path: Path) -> None:
    keys, paths = authorities(tmp_path, 2)
    config = collector_config(
        tmp_path,
        authority_keys=tuple(paths),
        quorum=2,
        interval_seconds=0.1,
    )
    (a,) = enroll_nodes(config.ledger, ["node-a"])
    collector_key = collector_public(config.key)

    async def first_run() -> tuple[str, int, int]:
        async with running_collector(config) as service:
            control = Control(service.address)
            client = Link(service.address)
            await client.prove(a)
            await client.send(a.next([gpu(0)], interval=0.1))
            await next_directive(client, collector_key, actions=[LEASE])
            await control.halt(manual_halt(keys[0], node_scope("node-a")))
            halted = await control.halt(manual_halt(keys[0], node_scope("node-a")))
            await control.approve(approval(keys[0], halted.directive_ids[0]))
            await client.close()
            await control.close()
            book = service.stop_protocol.book if service.stop_protocol else None
            assert book is not None
            return halted.directive_ids[0], book.counters.last(HALT), book.counters.last(LEASE)

    async def second_run(halt_id: str, action_counter: int, lease_counter: int) -> None:
        async with running_collector(config) as service:
            control = Control(service.address)
            client = Link(service.address)
            await client.prove(a)
            await client.send(a.next([gpu(0)], interval=0.1))
            # Both halts are still in force and resent, in counter order.
            resent = [await next_directive(client, collector_key) for _ in range(2)]
            assert [d.counter for d in resent] == [action_counter - 1, action_counter]
            lease = await next_directive(client, collector_key, actions=[LEASE])
            assert lease.counter > lease_counter
            # The approval from before the restart still counts: one more makes the quorum.
            done = await control.approve(approval(keys[1], halt_id))
            assert len(done.directive_ids) == 1
            resume = await next_directive(client, collector_key)
            assert resume.action == RESUME
            assert resume.counter == action_counter + 1
            assert len(resume.approvals) == 2
            await client.close()
            await control.close()

    async def scenario() -> None:
        halt_id, action_counter, lease_counter = await first_run()
        assert action_counter == 2
        assert lease_counter >= 1
        await second_run(halt_id, action_counter, lease_counter)

    asyncio.run(scenario())


def test_an_evaluation_halts_the_job_and_its_descendants(tmp_path: Path) -> None:
    keys, paths = authorities(tmp_path, 1)
    config = collector_config(
        tmp_path,
        rule_packs=(str(write_pack(tmp_path)),),
        authority_keys=tuple(paths),
        quorum=1,
        interval_seconds=60.0,
    )
    base, tune, other = enroll_nodes(config.ledger, ["node-base", "node-tune", "node-other"])
    collector_key = collector_public(config.key)

    async def scenario() -> None:
        async with running_collector(config) as service:
            clients = [Link(service.address) for _ in range(3)]
            cbase, ctune, cother = clients
            for node, client in zip((base, tune, other), clients, strict=True):
                await client.prove(node)
            await report(base, cbase, [gpu(0, job="base", util=1.0)])
            rep = tune.report([gpu(0, job="tune", util=1.0)])
            rep.jobs.add(job_id="tune", parent_job_ids=["base"], model_id="m-2")
            await ctune.send(tune.seal(rep))
            await ctune.ack_for(tune.sequence)
            await report(other, cother, [gpu(0, job="other", util=1.0)])
            control = Control(service.address)
            low = await control.evaluate(evaluation(keys[0], "base", "cyber-offense", 0.2))
            assert low.log_index > 0
            high = await control.evaluate(evaluation(keys[0], "base", "cyber-offense", 0.7))
            halt = await next_directive(cbase, collector_key)
            assert halt.rule_id == "cyber"
            assert sorted(halt.scope.job_ids) == ["base", "tune"]
            assert sorted(halt.scope.node_ids) == ["node-base", "node-tune"]
            assert high.log_index in halt.evidence.log_indices
            assert (await next_directive(ctune, collector_key)).id == halt.id
            assert not [m for m in await drain(cother, 0.3) if m.HasField("directive")]
            await control.close()
            for client in clients:
                await client.close()

    asyncio.run(scenario())


def test_a_node_that_missed_the_resume_gets_it_again(tmp_path: Path) -> None:
    keys, paths = authorities(tmp_path, 1)
    config = collector_config(
        tmp_path, authority_keys=tuple(paths), quorum=1, interval_seconds=60.0
    )
    (a,) = enroll_nodes(config.ledger, ["node-a"])
    collector_key = collector_public(config.key)

    async def scenario() -> None:
        async with running_collector(config) as service:
            control = Control(service.address)
            halted = await control.halt(manual_halt(keys[0], node_scope("node-a")))
            halt_id = halted.directive_ids[0]
            resumed = await control.approve(approval(keys[0], halt_id))
            # The node was away for both; it comes back still enforcing the halt.
            client = Link(service.address)
            await client.prove(a)
            rep = a.report([gpu(0)])
            rep.enforcement.active_directive_ids.append(halt_id)
            await client.prove(a)
            await client.send(a.seal(rep))
            resume = await next_directive(client, collector_key)
            assert resume.action == RESUME
            assert resume.id == resumed.directive_ids[0]
            assert resume.resumes_directive_id == halt_id
            await client.close()
            await control.close()

    asyncio.run(scenario())


def test_directives_verify_only_under_the_collector_key(tmp_path: Path) -> None:
    keys, paths = authorities(tmp_path, 1)
    config = collector_config(
        tmp_path, authority_keys=tuple(paths), quorum=1, interval_seconds=60.0
    )
    enroll_nodes(config.ledger, ["node-a"])

    async def scenario() -> None:
        async with running_collector(config) as service:
            control = Control(service.address)
            await control.halt(manual_halt(keys[0], node_scope("node-a")))
            (record,) = await control.list()
            other: PublicKey = keys[0].public
            with pytest.raises(Exception, match="no trusted key"):
                dsse.verify(record.envelope, {other.keyid: other})
            await control.close()

    asyncio.run(scenario())


def test_the_cli_halts_approves_evaluates_and_lists(tmp_path: Path) -> None:
    keys, paths = authorities(tmp_path, 2)
    key_files = []
    for i, key in enumerate(keys):
        path = tmp_path / f"authority-{i}.key"
        write_private_key(key, path)
        key_files.append(str(path))
    config = collector_config(
        tmp_path, authority_keys=tuple(paths), quorum=2, interval_seconds=60.0
    )
    (a,) = enroll_nodes(config.ledger, ["node-a"])
    collector_pub = tmp_path / "collector.pub"
    write_public_key(collector_public(config.key), collector_pub)
    runner = CliRunner()

    async def cw(*args: str) -> Result:
        return await asyncio.to_thread(runner.invoke, cli, list(args), catch_exceptions=False)

    async def scenario() -> None:
        async with running_collector(config) as service:
            link = Link(service.address)
            await link.prove(a)
            await report(a, link, [gpu(0, job="j")])
            addr = ("--collector", service.address, "--insecure-plaintext")
            halted = await cw(
                "halt", *addr, "--scope", "node:node-a", "--reason", "drill", "--key", key_files[0]
            )
            assert halted.exit_code == 0, halted.output
            halt_id = halted.output.strip().splitlines()[-1]
            assert (await next_directive(link, collector_public(config.key))).id == halt_id
            bad_scope = await cw(
                "halt",
                *addr,
                "--scope",
                "node:x",
                "--scope",
                "job:y",
                "--reason",
                "r",
                "--key",
                key_files[0],
            )
            assert bad_scope.exit_code != 0
            assert "one kind per halt" in bad_scope.output
            first = await cw("approve", halt_id, *addr, "--key", key_files[0])
            assert first.exit_code == 0
            assert "1 of 2" in first.output
            twice = await cw("approve", halt_id, *addr, "--key", key_files[0])
            assert twice.exit_code == 1
            assert "ALREADY_EXISTS" in twice.output
            second = await cw("approve", halt_id, *addr, "--key", key_files[1], "--comment", "ok")
            assert second.exit_code == 0
            assert "quorum reached" in second.output
            scored = await cw(
                "evaluate",
                *addr,
                "--job",
                "j",
                "--evaluation",
                "cyber-offense",
                "--score",
                "0.1",
                "--key",
                key_files[1],
            )
            assert scored.exit_code == 0, scored.output
            listed = await cw(
                "directives", "list", *addr, "--json", "--collector-key", str(collector_pub)
            )
            assert listed.exit_code == 0, listed.output
            docs = json.loads(listed.stdout)
            assert [d["action"] for d in docs] == ["HALT", "RESUME"]
            assert all(d["signature_verified"] for d in docs)
            assert all(isinstance(d["counter"], int) and d["counter"] > 0 for d in docs)
            assert docs[0]["in_force"] is False
            assert len(docs[1]["approval_keyids"]) == 2
            shown = await cw("directives", "show", halt_id, *addr)
            assert shown.exit_code == 0
            assert '"manual"' in shown.output
            table_out = await cw("directives", "list", *addr)
            assert halt_id in table_out.output
            assert "not verified" in table_out.output
            await link.close()

    asyncio.run(scenario())


def test_the_collector_refuses_to_start_on_a_bad_pack_or_an_unreachable_quorum(
    tmp_path: Path,
) -> None:
    broken = write_pack(tmp_path, JOB_HALT_PACK.replace("unit: FLOP\n", "unit: seconds\n"))
    _, paths = authorities(tmp_path, 2)
    twice = tmp_path / "again.pub"
    twice.write_bytes(paths[0].read_bytes())

    async def start(**overrides: object) -> None:
        async with running_collector(collector_config(tmp_path, **overrides)):
            pass

    with pytest.raises(RuleError):
        asyncio.run(start(rule_packs=(str(broken),)))
    # Three files but two distinct keys: a quorum of three could never be reached.
    with pytest.raises(ConfigError, match="distinct authority keys"):
        asyncio.run(start(authority_keys=(*paths, twice), quorum=3))


def test_a_manual_halt_replayed_after_a_restart_is_refused_whoever_else_signed_it(
    tmp_path: Path,
) -> None:
    # The authority's signature is the second one: the first is by a key the
    # collector does not know. Replay protection must remember the halt under
    # the key that verified, after a restart too, not under the first key id.
    keys, paths = authorities(tmp_path, 1)
    config = collector_config(tmp_path, authority_keys=tuple(paths), quorum=1)
    enroll_nodes(config.ledger, ["node-a"])
    stranger = PrivateKey.generate()
    signed = envelope_pb2.Envelope.FromString(manual_halt(keys[0], node_scope("node-a")))
    pae = dsse.pae(signed.payload_type, signed.payload)
    both = envelope_pb2.Envelope(payload=signed.payload, payload_type=signed.payload_type)
    both.signatures.add(keyid=stranger.keyid, sig=stranger.sign(pae))
    both.signatures.extend(signed.signatures)
    envelope = both.SerializeToString()

    async def submit() -> control_pb2.SubmitResponse:
        async with running_collector(config) as service:
            control = Control(service.address)
            try:
                return await control.halt(envelope)
            finally:
                await control.close()

    async def scenario() -> None:
        first = await submit()
        assert len(first.directive_ids) == 1
        with pytest.raises(grpc.aio.AioRpcError) as replayed:
            await submit()
        assert replayed.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert len(directive_rows(config.ledger)) == 1

    asyncio.run(scenario())
