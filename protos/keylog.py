"""Key events in the log: enrolment, re-enrolment, handover, revocation and
collector key rotation (``keylog.proto``; docs/regulators.md, "Key events").

Shared by the collector (which writes them) and the auditor (which follows
them): the payload types, the two-signature envelopes of a handover and a
rotation, and ``verify_both`` which checks that both named keys signed.
"""

from __future__ import annotations

from collections.abc import Sequence

from protos import dsse
from protos.computewatch.v1 import envelope_pb2, keylog_pb2
from protos.errors import KeyEventError, SignatureError, UnknownKeyError
from protos.keys import PrivateKey, PublicKey

ENROLMENT_TYPE = dsse.payload_type_for(keylog_pb2.NodeEnrolment())
HANDOVER_TYPE = dsse.payload_type_for(keylog_pb2.KeyHandover())
REVOCATION_TYPE = dsse.payload_type_for(keylog_pb2.KeyRevocation())
ROTATION_TYPE = dsse.payload_type_for(keylog_pb2.CollectorKeyRotation())
KEY_EVENT_TYPES = (ENROLMENT_TYPE, HANDOVER_TYPE, REVOCATION_TYPE, ROTATION_TYPE)
# Signed by the collector key alone.
COLLECTOR_SIGNED = (ENROLMENT_TYPE, REVOCATION_TYPE)
MAX_REASON = 1024


def seal_all(payload_type: str, payload: bytes, keys: Sequence[PrivateKey]) -> bytes:
    """A DSSE envelope with one signature per key, in the order given."""
    pae = dsse.pae(payload_type, payload)
    env = envelope_pb2.Envelope(payload=payload, payload_type=payload_type)
    for key in keys:
        env.signatures.add(keyid=key.keyid, sig=key.sign(pae))
    data: bytes = env.SerializeToString(deterministic=True)
    return data


def public_key(raw: bytes, field: str) -> PublicKey:
    """A raw key from a key event; KeyEventError naming ``field`` if malformed."""
    if len(raw) != 32:
        raise KeyEventError(f"{field}: an Ed25519 public key is 32 bytes, got {len(raw)}")
    try:
        return PublicKey.from_raw(raw)
    except ValueError as exc:
        raise KeyEventError(f"{field}: not an Ed25519 public key ({exc})") from exc


def handover(node_id: str, old: PrivateKey, new: PrivateKey, now_ns: int) -> bytes:
    """The envelope moving ``node_id`` from ``old`` to ``new``, signed by both."""
    if old.keyid == new.keyid:
        raise KeyEventError("a handover needs a new key, not the old one again")
    msg = keylog_pb2.KeyHandover(
        node_id=node_id,
        old_public_key=old.public.raw(),
        new_public_key=new.public.raw(),
        handover_unix_nanos=now_ns,
    )
    return seal_all(HANDOVER_TYPE, msg.SerializeToString(), [old, new])


def rotation(old: PrivateKey, new: PrivateKey, now_ns: int) -> bytes:
    """The envelope announcing collector key ``new`` under ``old``, signed by both."""
    if old.keyid == new.keyid:
        raise KeyEventError("a rotation needs a new collector key, not the old one again")
    msg = keylog_pb2.CollectorKeyRotation(
        old_public_key=old.public.raw(), new_public_key=new.public.raw(), rotated_unix_nanos=now_ns
    )
    return seal_all(ROTATION_TYPE, msg.SerializeToString(), [old, new])


def verify_both(envelope: bytes, first: PublicKey, second: PublicKey) -> dsse.Verified:
    """Verify that ``first`` and ``second`` both signed ``envelope``.

    Each must carry its own valid signature: a missing one is UnknownKeyError,
    a bad one SignatureError.
    """
    verified = dsse.verify(envelope, {first.keyid: first}, expected_type=None)
    dsse.verify(envelope, {second.keyid: second})
    if verified.payload_type not in (HANDOVER_TYPE, ROTATION_TYPE):
        raise KeyEventError(f"payload type {verified.payload_type!r} is not a two-key event")
    return verified


def parse_handover(envelope: bytes) -> tuple[keylog_pb2.KeyHandover, PublicKey, PublicKey]:
    """Parse (unverified) and check a handover's fields; then ``verify_both``."""
    env = dsse.open_envelope(envelope)
    if env.payload_type != HANDOVER_TYPE:
        raise KeyEventError(f"expected a KeyHandover envelope, got {env.payload_type!r}")
    msg = dsse.parse_message(keylog_pb2.KeyHandover, env.payload)
    old = public_key(msg.old_public_key, "old_public_key")
    new = public_key(msg.new_public_key, "new_public_key")
    if old.keyid == new.keyid:
        raise KeyEventError("handover names the same key as old and new")
    try:
        verify_both(envelope, old, new)
    except UnknownKeyError as exc:
        raise SignatureError(
            f"a handover must be signed by the old and the new key: {exc}"
        ) from exc
    return msg, old, new
