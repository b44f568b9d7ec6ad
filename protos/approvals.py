"""An authority's approval of lifting a halt: verified, and counted by distinct key.

Shared by the collector (which counts approvals toward its quorum before it
signs a RESUME) and by auditors (who check, from the log alone, that every
RESUME carries the approvals it claims): one verification code path.
An approval counts only when its envelope verifies under an authority key,
parses as an ``Approval`` and names the directive being lifted; each
authority key counts once, however many approvals it signs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from protos import dsse
from protos.computewatch.v1 import control_pb2
from protos.errors import QuorumError, VerificationError
from protos.keys import PublicKey

log = logging.getLogger(__name__)

MAX_AUTHORITY_NAME = 128
MAX_COMMENT = 2048


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
