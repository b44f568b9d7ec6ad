"""Directive verification on the agent: the whole chain, in the protocol's order.

1. signature over the received bytes against the configured collector key
   (payload type must be a Directive);
2. parse, and reject fields nothing can act on (``InvalidDirectiveError``);
3. not expired (wall clock against ``not_after``);
4. the scope names this node's cluster (``Scope.cluster``, for every kind: one
   collector key may serve several clusters) and this node (its id in
   ``node_ids``, or kind CLUSTER);
5. a directive already applied (same id and counter) is a duplicate: it is
   acknowledged again, never applied twice; otherwise its counter must be
   higher than every counter seen in its class (leases have their own class);
6. RESUME: when authority keys are configured, its approvals must verify under
   them, name the halt it lifts, and come from ``quorum`` distinct public keys
   (counted by key id, the hash of the key, so one key under two names counts
   once). With no authority keys the collector's signature is trusted: the
   collector only issues a RESUME on a quorum.

Each failure raises a typed error from ``protos.errors``; ``DirectiveVerifier``
counts refusals per reason and logs them. Verification never changes state:
the caller records an accepted directive's counter once it has acted on it.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from protos import dsse, keylog
from protos.computewatch.v1 import control_pb2, keylog_pb2
from protos.errors import (
    CounterError,
    Error,
    ExpiredError,
    InvalidDirectiveError,
    KeyEventError,
    QuorumError,
    ScopeError,
)
from protos.keys import PublicKey

log = logging.getLogger(__name__)

# Counter classes: leases flow every interval, everything else is rare.
LEASE_CLASS = "lease"
ACTION_CLASS = "action"

# Ids the agent gives its own local actions; a collector directive may not use them.
LOCAL_ID_PREFIX = "local-"
MAX_ID_CHARS = 128
MAX_APPROVALS = 64
# A TERMINATE grace longer than this is a mistake, not a policy.
MAX_GRACE_SECONDS = 24 * 3600.0

_ACTIONS = frozenset(
    {
        control_pb2.ACTION_HALT,
        control_pb2.ACTION_RESUME,
        control_pb2.ACTION_THROTTLE,
        control_pb2.ACTION_TERMINATE,
        control_pb2.ACTION_LEASE,
    }
)
_SCOPES = frozenset(
    {
        control_pb2.SCOPE_KIND_CLUSTER,
        control_pb2.SCOPE_KIND_NODE,
        control_pb2.SCOPE_KIND_JOB,
        control_pb2.SCOPE_KIND_GPU,
        control_pb2.SCOPE_KIND_ACTOR,
    }
)


def counter_class(action: int) -> str:
    return LEASE_CLASS if action == control_pb2.ACTION_LEASE else ACTION_CLASS


def action_name(action: int) -> str:
    """'halt', 'resume', ... for logs, metrics and receipts."""
    try:
        return control_pb2.Action.Name(action).removeprefix("ACTION_").lower()
    except ValueError:
        return f"action_{action}"


class SeenCounters(Protocol):
    """What the verifier needs to know about directives accepted before."""

    def highest(self, cls: str) -> int:
        """Highest counter accepted in class ``cls`` (0 when none)."""
        ...

    def applied_counter(self, directive_id: str) -> int | None:
        """Counter of the directive with this id, if it was applied."""
        ...


@dataclass(frozen=True)
class Accepted:
    """A directive that passed every check."""

    directive: control_pb2.Directive
    # Already applied: acknowledge again, do not act.
    duplicate: bool = False
    # RESUME: key ids of the authorities whose approvals verified.
    approval_keyids: tuple[str, ...] = ()

    @property
    def counter_class(self) -> str:
        return counter_class(self.directive.action)


@dataclass
class RefusalStats:
    """Refused directives per reason label (``computewatch_agent_directives_refused_total``)."""

    refused: Counter[str] = field(default_factory=Counter)


class DirectiveVerifier:
    """Checks directive envelopes for one node. Holds only keys, no state."""

    def __init__(
        self,
        node_id: str,
        collector_key: PublicKey,
        *,
        authority_keys: Iterable[PublicKey] = (),
        quorum: int = 1,
        max_bytes: int = dsse.DEFAULT_MAX_ENVELOPE_BYTES,
        cluster: str = "default",
    ) -> None:
        self.node_id = node_id
        self.cluster = cluster
        self._collector = {collector_key.keyid: collector_key}
        # Keyed by key id: the same public key given twice is one authority.
        self._authorities = {k.keyid: k for k in authority_keys}
        if self._authorities and not 1 <= quorum <= len(self._authorities):
            raise QuorumError(
                f"quorum {quorum} is not between 1 and the {len(self._authorities)}"
                " distinct authority keys configured"
            )
        self.quorum = quorum
        self._max_bytes = max_bytes
        self.stats = RefusalStats()

    @property
    def authority_keyids(self) -> frozenset[str]:
        return frozenset(self._authorities)

    @property
    def collector_keyid(self) -> str:
        return next(iter(self._collector))

    @staticmethod
    def is_rotation(envelope_bytes: bytes) -> bool:
        """Whether ``envelope_bytes`` claims to be a ``CollectorKeyRotation``."""
        try:
            return dsse.open_envelope(envelope_bytes).payload_type == keylog.ROTATION_TYPE
        except Error:
            return False

    def rotate(self, envelope_bytes: bytes) -> bool:
        """Follow a collector key rotation (docs/regulators.md, section 5): the
        collector resends every rotation, oldest first, when a stream binds.
        It must name the current key as old and be signed by the old and the
        new key; then directives and leases verify under the new key only.
        False for a rotation already followed; KeyEventError (or a
        verification error) for one that is not allowed."""
        env = dsse.open_envelope(envelope_bytes, max_bytes=self._max_bytes)
        msg = dsse.parse_message(keylog_pb2.CollectorKeyRotation, env.payload)
        old = keylog.public_key(msg.old_public_key, "old_public_key")
        new = keylog.public_key(msg.new_public_key, "new_public_key")
        if new.keyid in self._collector:
            return False
        if old.keyid not in self._collector:
            raise KeyEventError(
                f"rotation from key {old.keyid[:16]}, which is not the collector key"
                f" {self.collector_keyid[:16]} this agent trusts"
            )
        keylog.verify_both(envelope_bytes, old, new)
        self._collector = {new.keyid: new}
        log.warning(
            "%s: collector key rotated %s -> %s", self.node_id, old.keyid[:16], new.keyid[:16]
        )
        return True

    def check(self, envelope_bytes: bytes, *, now_ns: int, seen: SeenCounters) -> Accepted:
        """``verify``, counting and logging a refusal before re-raising it."""
        try:
            return self.verify(envelope_bytes, now_ns=now_ns, seen=seen)
        except Error as exc:
            self.stats.refused[exc.reason] += 1
            log.warning("%s: directive refused (%s): %s", self.node_id, exc.reason, exc)
            raise

    def verify(self, envelope_bytes: bytes, *, now_ns: int, seen: SeenCounters) -> Accepted:
        """Run the chain; raise the first failure as a typed error."""
        verified = dsse.verify(
            envelope_bytes,
            self._collector,
            expected_type=dsse.DIRECTIVE_TYPE,
            max_bytes=self._max_bytes,
        )
        d = verified.parse(control_pb2.Directive)
        _check_fields(d)
        if now_ns >= d.not_after_unix_nanos:
            raise ExpiredError(
                f"directive {d.id} ({action_name(d.action)}) expired"
                f" {(now_ns - d.not_after_unix_nanos) / 1e9:.3f} s ago"
            )
        if d.scope.cluster != self.cluster:
            raise ScopeError(
                f"directive {d.id} ({action_name(d.action)}) is for cluster"
                f" {d.scope.cluster!r}, this node is in {self.cluster!r}"
            )
        if d.scope.kind != control_pb2.SCOPE_KIND_CLUSTER and self.node_id not in d.scope.node_ids:
            # A CLUSTER scope covers every node of the named cluster, also
            # one enrolled after it was issued (stop fast).
            raise ScopeError(
                f"directive {d.id} ({action_name(d.action)}) does not name node {self.node_id!r}"
            )
        if seen.applied_counter(d.id) == d.counter:
            return Accepted(d, duplicate=True)
        cls = counter_class(d.action)
        highest = seen.highest(cls)
        if d.counter <= highest:
            raise CounterError(
                f"directive {d.id} ({action_name(d.action)}) has counter {d.counter};"
                f" {cls} directives up to {highest} were already accepted"
            )
        keyids: tuple[str, ...] = ()
        if d.action == control_pb2.ACTION_RESUME and self._authorities:
            keyids = self._check_approvals(d)
        return Accepted(d, approval_keyids=keyids)

    def _check_approvals(self, d: control_pb2.Directive) -> tuple[str, ...]:
        if len(d.approvals) > MAX_APPROVALS:
            raise QuorumError(
                f"RESUME {d.id} carries {len(d.approvals)} approvals; at most {MAX_APPROVALS}"
            )
        signers: set[str] = set()
        problems: list[str] = []
        for i, raw in enumerate(d.approvals):
            try:
                v = dsse.verify(raw, self._authorities, expected_type=dsse.APPROVAL_TYPE)
                approval = v.parse(control_pb2.Approval)
            except Error as exc:
                problems.append(f"approval {i}: {exc.reason}: {exc}")
                continue
            if approval.directive_id != d.resumes_directive_id:
                problems.append(
                    f"approval {i} is for {approval.directive_id!r}, not {d.resumes_directive_id!r}"
                )
                continue
            signers.add(v.signer.keyid)
        if len(signers) < self.quorum:
            detail = "; ".join(problems) if problems else "no other problem"
            raise QuorumError(
                f"RESUME {d.id} of {d.resumes_directive_id}: approvals from {len(signers)}"
                f" distinct authority key(s), {self.quorum} needed ({detail})"
            )
        return tuple(sorted(signers))


def _check_fields(d: control_pb2.Directive) -> None:
    def bad(what: str) -> InvalidDirectiveError:
        return InvalidDirectiveError(f"directive {d.id[:MAX_ID_CHARS]!r}: {what}")

    if not d.id or len(d.id) > MAX_ID_CHARS or not d.id.isprintable():
        raise bad(f"id must be 1-{MAX_ID_CHARS} printable characters")
    if d.id.startswith(LOCAL_ID_PREFIX):
        raise bad(f"ids starting with {LOCAL_ID_PREFIX!r} are reserved for the agent")
    if d.action not in _ACTIONS:
        raise bad(f"unknown action {d.action}")
    if d.scope.kind not in _SCOPES:
        raise bad(f"unknown scope kind {d.scope.kind}")
    if d.scope.kind == control_pb2.SCOPE_KIND_JOB and not d.scope.job_ids:
        raise bad("JOB scope names no job")
    if d.scope.kind == control_pb2.SCOPE_KIND_GPU and not d.scope.gpu_uuids:
        raise bad("GPU scope names no GPU")
    if d.scope.kind == control_pb2.SCOPE_KIND_ACTOR and not d.scope.actor_ids:
        raise bad("ACTOR scope names no actor")
    if d.not_after_unix_nanos <= d.issued_unix_nanos:
        raise bad("not_after is not later than issued")
    if d.action == control_pb2.ACTION_THROTTLE and not (
        math.isfinite(d.power_cap_watts) and d.power_cap_watts > 0
    ):
        raise bad(f"THROTTLE needs a positive power cap, got {d.power_cap_watts!r}")
    if d.action == control_pb2.ACTION_RESUME and not d.resumes_directive_id:
        raise bad("RESUME names no directive to lift")
    if d.action == control_pb2.ACTION_TERMINATE and not (
        math.isfinite(d.grace_seconds) and 0 <= d.grace_seconds <= MAX_GRACE_SECONDS
    ):
        raise bad(f"TERMINATE grace must be 0..{MAX_GRACE_SECONDS:g} s, got {d.grace_seconds!r}")
