"""DSSE envelopes: sign PAE(type, payload), verify received bytes, then parse.

https://github.com/secure-systems-lab/dsse/blob/master/protocol.md
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError as _PbDecodeError
from google.protobuf.message import Message

from protos.computewatch.v1 import envelope_pb2
from protos.errors import (
    DecodeError,
    OversizeError,
    PayloadTypeError,
    SignatureError,
    UnknownKeyError,
)
from protos.keys import PrivateKey, PublicKey

_PREFIX = "application/vnd.computewatch."
_SUFFIX = "+protobuf"

# Payload types, one per signed message.
REPORT_TYPE = f"{_PREFIX}NodeReport{_SUFFIX}"
DIRECTIVE_TYPE = f"{_PREFIX}Directive{_SUFFIX}"
APPROVAL_TYPE = f"{_PREFIX}Approval{_SUFFIX}"
MANUAL_HALT_TYPE = f"{_PREFIX}ManualHalt{_SUFFIX}"
EVALUATION_TYPE = f"{_PREFIX}Evaluation{_SUFFIX}"
STREAM_PROOF_TYPE = f"{_PREFIX}StreamProof{_SUFFIX}"

DEFAULT_MAX_ENVELOPE_BYTES = 1 << 20

M = TypeVar("M", bound=Message)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def payload_type_for(message: Message) -> str:
    return f"{_PREFIX}{message.DESCRIPTOR.name}{_SUFFIX}"


def digest(envelope_bytes: bytes) -> bytes:
    """SHA-256 of serialised envelope bytes: the link in a node's chain."""
    return hashlib.sha256(envelope_bytes).digest()


def seal(message: Message, key: PrivateKey) -> bytes:
    """Serialise ``message``, sign it, and return the serialised Envelope."""
    return seal_payload(payload_type_for(message), message.SerializeToString(), key)


def seal_payload(payload_type: str, payload: bytes, key: PrivateKey) -> bytes:
    env = envelope_pb2.Envelope(payload=payload, payload_type=payload_type)
    env.signatures.add(keyid=key.keyid, sig=key.sign(pae(payload_type, payload)))
    return env.SerializeToString(deterministic=True)


@dataclass(frozen=True)
class Verified:
    """An envelope whose payload verified under ``signer``; not yet parsed."""

    payload_type: str
    payload: bytes
    signer: PublicKey
    envelope_bytes: bytes

    def parse(self, cls: type[M]) -> M:
        """Parse the verified payload; DecodeError if it is not a ``cls``."""
        if self.payload_type != f"{_PREFIX}{cls.DESCRIPTOR.name}{_SUFFIX}":
            raise PayloadTypeError(
                f"payload type {self.payload_type!r} is not {cls.DESCRIPTOR.name}"
            )
        return parse_message(cls, self.payload)


def parse_message(cls: type[M], data: bytes) -> M:
    msg = cls()
    try:
        msg.ParseFromString(data)
    except (_PbDecodeError, ValueError, RuntimeError) as exc:
        raise DecodeError(f"bytes are not a valid {cls.DESCRIPTOR.name}: {exc}") from exc
    return msg


def open_envelope(
    envelope_bytes: bytes, *, max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
) -> envelope_pb2.Envelope:
    """Parse the outer Envelope (not the payload) with size and shape checks."""
    if len(envelope_bytes) > max_bytes:
        raise OversizeError(f"envelope is {len(envelope_bytes)} bytes; the limit is {max_bytes}")
    env = parse_message(envelope_pb2.Envelope, envelope_bytes)
    if not env.payload_type:
        raise DecodeError("envelope has no payload_type")
    if not env.signatures:
        raise SignatureError("envelope carries no signature")
    return env


def verify(
    envelope_bytes: bytes,
    trusted: Mapping[str, PublicKey] | Callable[[str], PublicKey | None],
    *,
    expected_type: str | None = None,
    max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
) -> Verified:
    """Verify ``envelope_bytes`` against ``trusted`` (keyid -> key, or a lookup).

    Succeeds when at least one signature is by a trusted key and verifies over
    PAE(type, payload). A signature claiming a trusted key id that fails to
    verify is an error even if another one verifies: a tampered envelope is
    never accepted on the strength of a second signature.
    """
    env = open_envelope(envelope_bytes, max_bytes=max_bytes)
    if expected_type is not None and env.payload_type != expected_type:
        raise PayloadTypeError(f"expected payload type {expected_type!r}, got {env.payload_type!r}")
    resolve = trusted.get if isinstance(trusted, Mapping) else trusted
    message = pae(env.payload_type, env.payload)
    signer: PublicKey | None = None
    for sig in env.signatures:
        key = resolve(sig.keyid)
        if key is None:
            continue
        key.verify(sig.sig, message)
        signer = signer or key
    if signer is None:
        ids = ", ".join(s.keyid[:16] for s in env.signatures)
        raise UnknownKeyError(f"no trusted key among the envelope's key ids ({ids})")
    return Verified(env.payload_type, env.payload, signer, envelope_bytes)


def signer_keyids(
    envelope_bytes: bytes, *, max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
) -> list[str]:
    """Key ids the envelope claims, before any verification (for lookups)."""
    return [s.keyid for s in open_envelope(envelope_bytes, max_bytes=max_bytes).signatures]
