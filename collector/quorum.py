"""k-of-n approvals, counted by distinct public key.

An authority is a public key; its key id is the hex SHA-256 of the raw key
(``protos.keys``), so the same key loaded from two files, or named by two
people, is one authority. An approval counts toward a quorum only when its
envelope verifies under a configured authority key, parses as an
``Approval`` and names the directive being lifted; each authority key counts
once, however many approvals it signs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from protos import dsse
from protos.computewatch.v1 import control_pb2
from protos.errors import ConfigError, QuorumError, VerificationError
from protos.keys import PublicKey, load_public_key

log = logging.getLogger(__name__)

MAX_AUTHORITY_NAME = 128
MAX_COMMENT = 2048


def load_authorities(paths: Iterable[Path]) -> dict[str, PublicKey]:
    """key id -> key for every configured authority file (duplicates collapse)."""
    keys: dict[str, PublicKey] = {}
    for path in paths:
        key = load_public_key(path)
        if key.keyid in keys:
            log.warning(
                "authority key %s is configured twice (%s); it counts once", key.keyid[:16], path
            )
        keys[key.keyid] = key
    return keys


def check_quorum(quorum: int, authorities: Mapping[str, PublicKey]) -> None:
    """Refuse a configuration under which a halt could never be lifted."""
    if quorum < 1:
        raise ConfigError(f"quorum = {quorum}: expected at least 1")
    if authorities and quorum > len(authorities):
        raise ConfigError(
            f"quorum = {quorum} but only {len(authorities)} distinct authority keys are"
            " configured (a key listed twice counts once): a halt could never be lifted"
        )


@dataclass(frozen=True)
class VerifiedApproval:
    """An approval whose signature verified under ``keyid`` (an authority)."""

    keyid: str
    approval: control_pb2.Approval
    envelope: bytes


def verify_approval(
    envelope: bytes,
    authorities: Mapping[str, PublicKey],
    *,
    max_bytes: int = dsse.DEFAULT_MAX_ENVELOPE_BYTES,
) -> VerifiedApproval:
    """Verify the bytes under an authority key, then parse and check the fields.

    Raises a ``VerificationError`` subclass (unknown key, bad signature, wrong
    payload type, undecodable) or ``QuorumError`` for an approval that names
    no directive.
    """
    verified = dsse.verify(
        envelope, authorities, expected_type=dsse.APPROVAL_TYPE, max_bytes=max_bytes
    )
    approval = verified.parse(control_pb2.Approval)
    if not approval.directive_id:
        raise QuorumError("approval names no directive_id")
    if len(approval.authority) > MAX_AUTHORITY_NAME or len(approval.comment) > MAX_COMMENT:
        raise QuorumError("approval authority name or comment is too long")
    return VerifiedApproval(verified.signer.keyid, approval, envelope)


@dataclass
class ApprovalSet:
    """Approvals collected for one directive: one per authority key."""

    directive_id: str
    by_key: dict[str, bytes] = field(default_factory=dict)

    def add(self, approval: VerifiedApproval) -> bool:
        """Record ``approval``; False when its key already approved (counts once)."""
        if approval.approval.directive_id != self.directive_id:
            raise QuorumError(
                f"approval is for directive {approval.approval.directive_id!r},"
                f" not {self.directive_id!r}"
            )
        if approval.keyid in self.by_key:
            return False
        self.by_key[approval.keyid] = approval.envelope
        return True

    def count(self) -> int:
        return len(self.by_key)

    def reached(self, quorum: int) -> bool:
        return len(self.by_key) >= quorum

    def envelopes(self) -> list[bytes]:
        """The approvals' envelope bytes, ordered by key id (stable)."""
        return [self.by_key[k] for k in sorted(self.by_key)]


def distinct_approvers(
    envelopes: Iterable[bytes],
    authorities: Mapping[str, PublicKey],
    directive_id: str,
) -> set[str]:
    """Key ids of the authorities whose approvals of ``directive_id`` verify.

    Envelopes that fail to verify or name another directive are skipped (and
    logged); a key that signed several approvals appears once.
    """
    keys: set[str] = set()
    for data in envelopes:
        try:
            approval = verify_approval(data, authorities)
        except (VerificationError, QuorumError) as exc:
            log.warning("approval does not count for %s: %s: %s", directive_id, exc.reason, exc)
            continue
        if approval.approval.directive_id != directive_id:
            log.warning(
                "approval by %s is for %s, not %s; it does not count",
                approval.keyid[:16],
                approval.approval.directive_id,
                directive_id,
            )
            continue
        keys.add(approval.keyid)
    return keys


def require_quorum(
    envelopes: Iterable[bytes],
    authorities: Mapping[str, PublicKey],
    directive_id: str,
    quorum: int,
) -> set[str]:
    """``distinct_approvers`` or ``QuorumError`` when fewer than ``quorum``."""
    keys = distinct_approvers(envelopes, authorities, directive_id)
    if len(keys) < quorum:
        raise QuorumError(
            f"{len(keys)} distinct authority keys approved {directive_id}; {quorum} are needed"
        )
    return keys
