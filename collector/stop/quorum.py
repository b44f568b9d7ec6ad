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

from protos.approvals import VerifiedApproval, distinct_approvers, verify_approval
from protos.errors import ConfigError, QuorumError
from protos.keys import PublicKey, load_public_key

log = logging.getLogger(__name__)

__all__ = [
    "ApprovalSet",
    "VerifiedApproval",
    "check_quorum",
    "distinct_approvers",
    "load_authorities",
    "require_quorum",
    "verify_approval",
]


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
