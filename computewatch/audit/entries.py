"""Checks each log entry: who signed it, and whether each signer's chain holds.

``authenticate`` (pure, safe to run in threads) verifies the DSSE signature
over the exact bytes with every key seen so far; ``advance`` (in log order)
checks that the signer may sign that type at that index (``KeyState``: key
events move keys between nodes, revoke them and rotate the collector key),
applies key events, and checks each node key's chain: the first report of
a key is sequence 1 with a zero previous digest, then +1 each with
previous_digest = SHA-256 of the previous envelope; and that directive
counters only go up. On a chain finding the state still moves forward, so one
missing report is reported once, not at every later entry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from computewatch.audit.keystate import KeyState
from computewatch.audit.trust import Trust
from protos import dsse, keylog
from protos.approvals import distinct_approvers
from protos.computewatch.v1 import control_pb2, telemetry_pb2
from protos.errors import (
    BrokenChainError,
    DecodeError,
    DroppedEntryError,
    EquivocationError,
    Error,
    InvalidReportError,
    KeyMismatchError,
    OversizeError,
    PayloadTypeError,
    QuorumError,
    ReplayError,
    RewrittenEntryError,
    RollbackError,
    SignatureError,
    UnknownKeyError,
)

ZERO_DIGEST = bytes(32)
# Generous: the auditor must never call a valid entry oversize.
MAX_ENTRY_BYTES = 16 << 20


@dataclass(frozen=True)
class ChainHead:
    node_id: str
    sequence: int
    digest: bytes
    index: int


class EntryChecker:
    """Holds the chain heads (per node key) and the highest directive counters.

    Directive counters rise within their class: leases have one counter,
    every other action another (docs/stop-protocol.md).
    """

    def __init__(
        self,
        trust: Trust,
        heads: dict[str, ChainHead] | None = None,
        directive_counter: int = 0,
        lease_counter: int = 0,
        keys: KeyState | None = None,
    ) -> None:
        self.trust = trust
        self.heads: dict[str, ChainHead] = dict(heads or {})
        self.directive_counter = directive_counter
        self.lease_counter = lease_counter
        self.keys = keys or KeyState.initial(
            trust.collector, dict(trust.nodes), dict(trust.authorities)
        )

    def copy(self) -> EntryChecker:
        return EntryChecker(
            self.trust,
            self.heads,
            self.directive_counter,
            self.lease_counter,
            KeyState.from_json(self.keys.to_json()),
        )

    def settle(self, index: int, data: bytes, result: dsse.Verified | Error) -> dsse.Verified:
        """``result`` of an ``authenticate`` run ahead in a thread, or raise it;
        an unknown key is looked up again, since an earlier entry (applied
        since) may have introduced it."""
        if isinstance(result, UnknownKeyError):
            return self.authenticate(index, data)
        if isinstance(result, Error):
            raise result
        return result

    def authenticate(self, index: int, data: bytes) -> dsse.Verified:
        """Verify entry ``index``'s signature; raise a typed error naming the entry."""
        try:
            env = dsse.open_envelope(data, max_bytes=MAX_ENTRY_BYTES)
            if self.trust.signers_for(env.payload_type) is None:
                raise PayloadTypeError(f"entry {index}: unknown payload type {env.payload_type!r}")
            return dsse.verify(data, self.keys.known, max_bytes=MAX_ENTRY_BYTES)
        except (DecodeError, OversizeError) as exc:
            raise RewrittenEntryError(f"entry {index}: not a valid envelope ({exc})") from exc
        except SignatureError as exc:
            raise RewrittenEntryError(
                f"entry {index}: the signature does not verify over its bytes,"
                f" which were changed after signing ({exc})"
            ) from exc
        except UnknownKeyError as exc:
            raise UnknownKeyError(f"entry {index}: {exc}") from exc

    def advance(self, index: int, verified: dsse.Verified) -> None:
        """Apply one authenticated entry, in log order."""
        t, signer = verified.payload_type, verified.signer.keyid
        if t == dsse.REPORT_TYPE:
            self._report(index, verified)
        elif t == dsse.DIRECTIVE_TYPE:
            self.keys.require_collector(index, signer)
            self._directive(index, verified)
        elif t in (dsse.APPROVAL_TYPE, dsse.MANUAL_HALT_TYPE, dsse.EVALUATION_TYPE):
            self.keys.require_authority(index, signer)
        elif t in keylog.KEY_EVENT_TYPES:
            self.keys.apply(index, verified)

    def check(self, index: int, data: bytes) -> None:
        self.advance(index, self.authenticate(index, data))

    def _report(self, index: int, verified: dsse.Verified) -> None:
        try:
            report = verified.parse(telemetry_pb2.NodeReport)
        except DecodeError as exc:
            raise InvalidReportError(f"entry {index}: signed payload is not a report") from exc
        keyid = verified.signer.keyid
        bound = self.keys.node_key(index, keyid).node_id
        if bound and report.node_id != bound:
            raise KeyMismatchError(
                f"entry {index}: key {keyid[:16]} is enrolled for node {bound!r},"
                f" not {report.node_id!r}"
            )
        seq, prev = report.sequence, report.previous_digest
        digest = hashlib.sha256(verified.envelope_bytes).digest()
        head = self.heads.get(keyid)
        node = report.node_id
        new = ChainHead(node, seq, digest, index)
        if head is None:
            self.heads[keyid] = new
            if seq != 1:
                raise DroppedEntryError(
                    f"entry {index}: the first report of node {node!r} (key {keyid[:16]}) in"
                    f" the log is sequence {seq}; reports 1..{seq - 1} are missing"
                )
            if prev != ZERO_DIGEST:
                raise BrokenChainError(
                    f"entry {index}: node {node!r} sequence 1 has a non-zero previous digest"
                )
            return
        if node != head.node_id:
            raise KeyMismatchError(
                f"entry {index}: key {keyid[:16]} signed for node {head.node_id!r}"
                f" (entry {head.index}) and now for {node!r}"
            )
        if seq <= head.sequence:
            if seq == head.sequence and digest == head.digest:
                raise ReplayError(f"entry {index}: repeats entry {head.index} of node {node!r}")
            if seq == head.sequence:
                raise EquivocationError(
                    f"entry {index}: node {node!r} sequence {seq} differs from entry {head.index}"
                )
            raise RollbackError(
                f"entry {index}: node {node!r} sequence {seq} after {head.sequence}"
                f" (entry {head.index})"
            )
        self.heads[keyid] = new
        if seq > head.sequence + 1:
            raise DroppedEntryError(
                f"entry {index}: node {node!r} sequence {seq} follows {head.sequence}"
                f" (entry {head.index}); {seq - head.sequence - 1} report(s) missing"
            )
        if prev != head.digest:
            raise BrokenChainError(
                f"entry {index}: node {node!r} sequence {seq} does not chain to sequence"
                f" {head.sequence} (entry {head.index}): previous_digest"
                f" {prev.hex()[:16]} != {head.digest.hex()[:16]}"
            )

    def _directive(self, index: int, verified: dsse.Verified) -> None:
        try:
            directive = verified.parse(control_pb2.Directive)
        except DecodeError as exc:
            raise InvalidReportError(f"entry {index}: signed payload is not a directive") from exc
        lease = directive.action == control_pb2.ACTION_LEASE
        last = self.lease_counter if lease else self.directive_counter
        if directive.counter <= last:
            kind = "lease" if lease else "directive"
            raise RollbackError(
                f"entry {index}: {kind} counter {directive.counter} is not above {last}"
            )
        if lease:
            self.lease_counter = directive.counter
        else:
            self.directive_counter = directive.counter
        if directive.action == control_pb2.ACTION_RESUME:
            self._resume(index, directive)

    def _resume(self, index: int, directive: control_pb2.Directive) -> None:
        """A RESUME carries approvals of the halt it lifts from at least
        ``resume_quorum`` distinct authority keys valid at this entry."""
        lifted = directive.resumes_directive_id
        if not lifted:
            raise QuorumError(f"entry {index}: RESUME {directive.id} names no halt it lifts")
        keys = distinct_approvers(directive.approvals, self.keys.authorities, lifted)
        need = self.trust.resume_quorum
        if len(keys) < need:
            raise QuorumError(
                f"entry {index}: RESUME {directive.id} of {lifted} carries approvals from"
                f" {len(keys)} distinct authority key(s) valid here; {need} are needed"
            )
