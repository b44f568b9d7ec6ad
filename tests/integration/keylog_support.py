"""The demo log for the key-event tests: a real collector over loopback with
two nodes, a node key handover, a node revocation, an authority revocation
and a collector key rotation (restart with ``previous_keys``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from click.testing import CliRunner
from prometheus_client import generate_latest

from collector.nodes.keyadmin import handover, revoke_authority, revoke_node
from collector.server import Collector
from collector.store.ledger import iter_entries
from computewatch.cli import cli
from protos import dsse, keylog
from protos.computewatch.v1 import telemetry_pb2
from protos.keys import PrivateKey, PublicKey, write_private_key, write_public_key
from tests.stop_support import Control, approval, authorities, manual_halt, node_scope
from tests.support import (
    Node,
    StreamClient,
    collector_config,
    enroll_nodes,
    gpu,
    running_collector,
)


async def wait_for_entry(ledger: Path, payload_type: str, count: int = 1) -> int:
    """Index of the ``count``-th committed entry of ``payload_type`` (bounded wait)."""
    for _ in range(500):
        found = [e.index for e in iter_entries(ledger) if e.payload_type == payload_type]
        if len(found) >= count:
            return found[count - 1]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {payload_type} entry appeared in the log")


async def reject_for(client: StreamClient) -> telemetry_pb2.Reject:
    for _ in range(50):
        msg = await client.receive()
        if msg.HasField("reject"):
            return msg.reject
    raise AssertionError("no rejection")


@dataclass
class DemoLog:
    ledger: Path
    collector_key: PrivateKey  # the key the log started with (collector.pub)
    new_collector_key: PrivateKey  # after the rotation
    origin: str
    handover_index: int
    node_revocation_index: int
    authority_revocation_index: int
    rotation_index: int
    revoked_authority: PrivateKey
    authorities: dict[str, PublicKey]
    node_a_new: PrivateKey
    node_b: Node
    # what the collector answered
    old_key_reject: str = ""
    revoked_node_reject: str = ""
    second_approval: str = ""
    revoked_token: str = ""  # the status code a token by the revoked authority got
    metrics: str = ""
    rotation_pushed: bool = False


async def covered(service: Collector) -> None:
    """Wait (bounded) until a signed checkpoint covers the whole log."""
    assert service.audit is not None
    for _ in range(500):
        latest = service.audit.checkpointer.latest()
        if latest is not None and latest.size == service.ledger.size:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no checkpoint covers the log")


async def subscribe(address: str, auditor: Path, collector_pub: Path, copy: Path) -> str:
    """``computewatch audit subscribe --once`` with only the first collector key."""
    args = ["audit", "subscribe", "--collector", address, "--key", str(auditor)]
    args += ["--out", str(copy), "--collector-key", str(collector_pub), "--once"]
    args += ["--insecure-plaintext"]  # the test collector's explicit opt-out; tokens are on
    for i in range(2):
        args += ["--authority-keys", str(collector_pub.parent / f"authority-{i}.pub")]
    res = await asyncio.to_thread(CliRunner().invoke, cli, args)
    assert res.exit_code == 0, res.output
    return res.output


async def build_demo_log(tmp: Path, copy: Path) -> DemoLog:
    """Run the scenario; ``copy`` gets a regulator's copy of the whole log."""
    (auth1, auth2), auth_paths = authorities(tmp, 2)
    auditor = PrivateKey.generate()
    write_private_key(auditor, tmp / "auditor.key")
    write_public_key(auditor.public, tmp / "auditor.pub")
    config = collector_config(
        tmp,
        authority_keys=tuple(auth_paths),
        quorum=2,
        auditor_keys=(tmp / "auditor.pub",),
        require_auth=True,  # the default: Audit and Control calls carry tokens
    )
    first_key = PrivateKey.generate()
    config.key.unlink()
    write_private_key(first_key, config.key)
    write_public_key(first_key.public, tmp / "collector.pub")
    node_a, node_b = enroll_nodes(config.ledger, ["node-a", "node-b"])
    new_a = PrivateKey.generate()
    async with running_collector(config) as service:
        client = StreamClient(service.address)
        for _ in range(3):
            await client.send(node_a.next([gpu(0)]))
        await client.ack_for(3)
        client_b = StreamClient(service.address)
        for _ in range(2):
            await client_b.send(node_b.next([gpu(0)]))
        await client_b.ack_for(2)

        # Node a moves to a new key, signed by the old one.
        handover(config.ledger, keylog.handover("node-a", node_a.key, new_a, 1))
        handover_index = await wait_for_entry(config.ledger, keylog.HANDOVER_TYPE)
        await client.send(node_a.next([gpu(0)]))
        old_reject = (await reject_for(client)).reason
        await client.close()
        moved = Node("node-a", new_a)
        client = StreamClient(service.address)
        await client.send(moved.next([gpu(0)]))
        await client.ack_for(1)

        # Node b's key is stolen: revoked, refused from then on.
        revoke_node(config.ledger, "node-b", "key stolen")
        node_rev = await wait_for_entry(config.ledger, keylog.REVOCATION_TYPE)
        await client_b.send(node_b.next([gpu(0)]))
        b_reject = (await reject_for(client_b)).reason
        await client_b.close()

        # An authority approves a halt, then its key is revoked: the approval
        # stops counting, and a later one by the other key is 1 of 2.
        control = Control(service.address, token_key=auth2)
        halted = await control.halt(manual_halt(auth2, node_scope("node-a")))
        directive_id = halted.directive_ids[0]
        await control.approve(approval(auth1, directive_id))
        revoke_authority(config.ledger, auth1.public, "key compromised")
        auth_rev = await wait_for_entry(config.ledger, keylog.REVOCATION_TYPE, 2)
        second = await control.approve(approval(auth2, directive_id))
        await control.close()
        revoked = Control(service.address, token_key=auth1)
        try:
            await revoked.list()
        except grpc.aio.AioRpcError as exc:
            revoked_token = exc.code().name
        else:
            revoked_token = "OK"
        await revoked.close()
        await client.close()
        metrics = generate_latest(service.metrics_registry).decode()
        # The regulator's copy, before the rotation: resumed after it below.
        await covered(service)
        await subscribe(service.address, tmp / "auditor.key", tmp / "collector.pub", copy)

    # The collector key is rotated: restart under a new key, announced under the old.
    rotated = PrivateKey.generate()
    (tmp / "collector-new.key").unlink(missing_ok=True)
    write_private_key(rotated, tmp / "collector-new.key")
    config2 = replace(config, key=tmp / "collector-new.key", previous_keys=(config.key,))
    async with running_collector(config2) as service:
        rotation_index = await wait_for_entry(config.ledger, keylog.ROTATION_TYPE)
        client = StreamClient(service.address)
        await client.prove(moved)  # the new key proves possession; the stream binds
        await client.send(moved.next([gpu(0)]))
        acked = pushed = False
        for _ in range(50):  # the ack, and the rotation pushed when the stream binds
            msg = await client.receive()
            acked = acked or (msg.HasField("ack") and msg.ack.sequence >= 2)
            if msg.HasField("directive"):
                env = dsse.open_envelope(msg.directive)
                pushed = pushed or env.payload_type == keylog.ROTATION_TYPE
            if acked and pushed:
                break
        await client.close()
        await covered(service)
        await subscribe(service.address, tmp / "auditor.key", tmp / "collector.pub", copy)

    return DemoLog(
        ledger=config.ledger,
        collector_key=first_key,
        new_collector_key=rotated,
        origin=config.log_origin,
        handover_index=handover_index,
        node_revocation_index=node_rev,
        authority_revocation_index=auth_rev,
        rotation_index=rotation_index,
        revoked_authority=auth1,
        authorities={k.keyid: k.public for k in (auth1, auth2)},
        node_a_new=new_a,
        node_b=node_b,
        old_key_reject=old_reject,
        revoked_node_reject=b_reject,
        second_approval=second.message,
        revoked_token=revoked_token,
        metrics=metrics,
        rotation_pushed=pushed,
    )
