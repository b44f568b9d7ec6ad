"""Key events a collector (or whoever edits its ledger) could forge or abuse,
and the reason ``audit verify`` gives each (``computewatch.audit.keystate``).

Each case is a short log, checked entry by entry in log order like
``audit verify`` does, by a regulator given only the first collector key and
one authority key; the case names the entry and the reason of the first finding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from computewatch.audit.entries import EntryChecker
from computewatch.audit.store import LocalStore
from computewatch.audit.trust import Trust
from computewatch.cli import cli
from protos import dsse, keylog
from protos.computewatch.v1 import control_pb2, keylog_pb2, telemetry_pb2
from protos.errors import Error
from protos.keys import PrivateKey, write_public_key
from tests.integration.audit_support import Keys, audit_server

ZERO = bytes(32)


@dataclass
class Log:
    collector: PrivateKey = field(default_factory=PrivateKey.generate)
    authority: PrivateKey = field(default_factory=PrivateKey.generate)
    a: PrivateKey = field(default_factory=PrivateKey.generate)
    b: PrivateKey = field(default_factory=PrivateKey.generate)
    entries: list[bytes] = field(default_factory=list)
    heads: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    counter: int = 0

    def __post_init__(self) -> None:
        self.first_collector = self.collector  # what the regulator was given

    def enrol(self, node: str, key: PrivateKey, *, signer: PrivateKey | None = None,
              replaces: PrivateKey | None = None) -> None:  # fmt: skip
        msg = keylog_pb2.NodeEnrolment(
            node_id=node,
            public_key=key.public.raw(),
            enrolled_unix_nanos=1,
            replaces_public_key=b"" if replaces is None else replaces.public.raw(),
        )
        self.entries.append(dsse.seal(msg, signer or self.collector))

    def report(self, node: str, key: PrivateKey) -> None:
        seq, prev = self.heads.get(key.keyid, (0, ZERO))
        data = dsse.seal(
            telemetry_pb2.NodeReport(node_id=node, sequence=seq + 1, previous_digest=prev), key
        )
        self.heads[key.keyid] = (seq + 1, dsse.digest(data))
        self.entries.append(data)

    def revoke(self, key: PrivateKey, role: int = keylog_pb2.KEY_ROLE_NODE) -> None:
        msg = keylog_pb2.KeyRevocation(role=role, public_key=key.public.raw(), reason="stolen")
        self.entries.append(dsse.seal(msg, self.collector))

    def directive(self, key: PrivateKey | None = None) -> None:
        self.counter += 1
        d = control_pb2.Directive(id=f"d{self.counter}", counter=self.counter)
        self.entries.append(dsse.seal(d, key or self.collector))

    def approval(self) -> None:
        self.entries.append(dsse.seal(control_pb2.Approval(directive_id="d1"), self.authority))

    def first_finding(self) -> tuple[int, str] | None:
        authorities = {self.authority.keyid: self.authority.public}
        trust = Trust(self.first_collector.public, {}, authorities)
        checker = EntryChecker(trust)
        for i, data in enumerate(self.entries):
            try:
                checker.check(i, data)
            except Error as exc:
                return i, exc.reason
        return None


def _valid(log: Log) -> None:
    log.enrol("node-a", log.a)
    log.report("node-a", log.a)
    new = PrivateKey.generate()
    log.entries.append(keylog.handover("node-a", log.a, new, 2))
    log.report("node-a", new)  # a new key starts a new chain at sequence 1
    log.approval()
    log.directive()
    rotated = PrivateKey.generate()
    log.entries.append(keylog.rotation(log.collector, rotated, 3))
    log.collector = rotated
    log.directive()


def _report_before_enrolment(log: Log) -> None:
    log.report("node-a", log.a)


def _report_for_another_node(log: Log) -> None:
    log.enrol("node-a", log.a)
    log.report("node-b", log.a)


def _report_after_revocation(log: Log) -> None:
    log.enrol("node-a", log.a)
    log.report("node-a", log.a)
    log.revoke(log.a)
    log.report("node-a", log.a)


def _report_by_replaced_key(log: Log) -> None:
    log.enrol("node-a", log.a)
    log.enrol("node-a", log.b, replaces=log.a)
    log.report("node-a", log.a)


def _enrolment_not_by_collector(log: Log) -> None:
    log.enrol("node-a", log.a, signer=log.a)


def _handover_missing_old_signature(log: Log) -> None:
    log.enrol("node-a", log.a)
    new = PrivateKey.generate()
    msg = keylog_pb2.KeyHandover(
        node_id="node-a", old_public_key=log.a.public.raw(), new_public_key=new.public.raw()
    )
    log.entries.append(keylog.seal_all(keylog.HANDOVER_TYPE, msg.SerializeToString(), [new]))


def _handover_of_another_nodes_key(log: Log) -> None:
    log.enrol("node-a", log.a)
    log.enrol("node-b", log.b)
    log.entries.append(keylog.handover("node-b", log.a, PrivateKey.generate(), 2))


def _old_key_after_handover(log: Log) -> None:
    log.enrol("node-a", log.a)
    log.entries.append(keylog.handover("node-a", log.a, log.b, 2))
    log.report("node-a", log.a)


def _directive_by_rotated_out_key(log: Log) -> None:
    old = log.collector
    log.entries.append(keylog.rotation(old, PrivateKey.generate(), 3))
    log.directive(old)


def _rotation_not_by_current_key(log: Log) -> None:
    log.entries.append(keylog.rotation(PrivateKey.generate(), PrivateKey.generate(), 3))


def _approval_after_authority_revocation(log: Log) -> None:
    log.approval()
    log.revoke(log.authority, keylog_pb2.KEY_ROLE_AUTHORITY)
    log.approval()


CASES: list[tuple[str, Callable[[Log], None], tuple[int, str] | None]] = [
    ("valid history", _valid, None),
    ("report before its key is enrolled", _report_before_enrolment, (0, "unknown_key")),
    ("report for another node", _report_for_another_node, (1, "wrong_key")),
    ("report after revocation", _report_after_revocation, (3, "revoked_key")),
    ("report by a replaced key", _report_by_replaced_key, (2, "revoked_key")),
    ("enrolment not by the collector", _enrolment_not_by_collector, (0, "unknown_key")),
    ("handover without the old key", _handover_missing_old_signature, (1, "unknown_key")),
    ("handover of another node's key", _handover_of_another_nodes_key, (2, "key_event")),
    ("old key after a handover", _old_key_after_handover, (2, "revoked_key")),
    ("directive by a rotated-out key", _directive_by_rotated_out_key, (1, "revoked_key")),
    ("rotation not by the current key", _rotation_not_by_current_key, (0, "unknown_key")),
    ("approval after revocation", _approval_after_authority_revocation, (2, "revoked_key")),
]


@pytest.mark.parametrize(("name", "build", "expected"), CASES, ids=[c[0] for c in CASES])
def test_key_event_attack(
    name: str, build: Callable[[Log], None], expected: tuple[int, str] | None
) -> None:
    log = Log()
    build(log)
    assert log.first_finding() == expected, name


def test_subscriber_refuses_a_checkpoint_signed_by_a_key_a_forged_rotation_names(
    tmp_path: Path,
) -> None:
    """A collector with another key logs a 'rotation' to it that the regulator's
    key never signed, and signs checkpoints with it: ``audit subscribe`` keeps
    nothing (the checkpoint must be the key current after the entries)."""
    trusted = PrivateKey.generate()  # what the regulator was given
    keys = Keys(tmp_path / "keys")  # the server's collector key: someone else's
    write_public_key(trusted.public, tmp_path / "trusted.pub")
    forged = keylog.seal_all(
        keylog.ROTATION_TYPE,
        keylog_pb2.CollectorKeyRotation(
            old_public_key=trusted.public.raw(), new_public_key=keys.collector.public.raw()
        ).SerializeToString(),
        [keys.collector],
    )
    copy = tmp_path / "copy"

    async def run() -> None:
        async with audit_server(tmp_path, keys) as srv:
            srv.writer.append([forged])
            for _ in range(500):
                latest = srv.handle.checkpointer.latest()
                if latest is not None and latest.size == 1:
                    break
                await asyncio.sleep(0.01)
            args = ["audit", "subscribe", "--collector", srv.address, "--key"]
            args += [str(keys.auditor_key), "--out", str(copy), "--once"]
            args += ["--collector-key", str(tmp_path / "trusted.pub"), "--insecure-plaintext"]
            res = await asyncio.to_thread(CliRunner().invoke, cli, args)
            assert res.exit_code == 1, res.output
            assert "checkpoint:" in res.output

    asyncio.run(run())
    store = LocalStore(copy, create=False)
    try:
        assert store.size == 0
    finally:
        store.close()
