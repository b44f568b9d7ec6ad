"""Binding a ``Telemetry.Stream`` to a node by a fresh proof of possession.

Every report is public (the log publishes them), so a report proves nothing
about who holds the stream: a replayed envelope would tie a stream to another
node and deliver that node's directives to whoever sent it. Instead the
collector sends a ``Challenge`` (32 random bytes) first on every stream, and
the agent answers with a DSSE envelope of a ``StreamProof`` (its node id and
that nonce) signed by its enrolled node key. Only that binds the stream; the
nonce is never reused, so a recorded proof is worthless on another stream.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from protos import dsse
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import (
    KeyMismatchError,
    StreamBindingError,
    UnknownKeyError,
    UnknownNodeError,
    VerificationError,
)
from protos.keys import PublicKey

if TYPE_CHECKING:
    from collector.nodes.registry import Registry

NONCE_BYTES = 32
# A proof is a small envelope; anything larger is not one.
MAX_PROOF_BYTES = 4096


def new_challenge() -> telemetry_pb2.Challenge:
    return telemetry_pb2.Challenge(nonce=os.urandom(NONCE_BYTES))


def registry_key_node(registry: Registry, keyid: str) -> tuple[PublicKey, str] | None:
    """``key_node`` over an enrolment registry: (enrolled key, node id), or None."""
    node = registry.by_keyid(keyid)
    return None if node is None else (node.key, node.node_id)


def verify_proof(
    data: bytes,
    nonce: bytes,
    key_node: Callable[[str], tuple[PublicKey, str] | None],
) -> str:
    """The node id ``data`` proves possession for, or ``StreamBindingError``
    (reason ``stream_binding``: the agent keeps its reports and reconnects).

    ``key_node`` maps a key id to (enrolled key, node id), or None.
    """
    try:
        return _verify(data, nonce, key_node)
    except StreamBindingError:
        raise
    except VerificationError as exc:
        raise StreamBindingError(f"stream proof refused ({exc.reason}): {exc}") from exc


def _verify(
    data: bytes,
    nonce: bytes,
    key_node: Callable[[str], tuple[PublicKey, str] | None],
) -> str:
    # What the signature was checked against: the same synchronous call, so
    # no enrolment can change between the check and reading the node id.
    resolved: dict[str, tuple[PublicKey, str]] = {}

    def resolve(keyid: str) -> PublicKey | None:
        found = key_node(keyid)
        if found is None:
            return None
        resolved[keyid] = found
        return found[0]

    try:
        verified = dsse.verify(
            data, resolve, expected_type=dsse.STREAM_PROOF_TYPE, max_bytes=MAX_PROOF_BYTES
        )
    except UnknownKeyError as exc:
        raise UnknownNodeError(f"stream proof: no enrolled node holds the key: {exc}") from exc
    proof = verified.parse(telemetry_pb2.StreamProof)
    found = resolved.get(verified.signer.keyid) or key_node(verified.signer.keyid)
    if found is None:
        raise UnknownNodeError(f"key {verified.signer.keyid[:16]} is no longer enrolled")
    node_id = found[1]
    if proof.node_id != node_id:
        raise KeyMismatchError(
            f"stream proof claims node {proof.node_id!r} but is signed by the key of {node_id}"
        )
    if not nonce or not hmac.compare_digest(proof.nonce, nonce):
        raise StreamBindingError("stream proof does not answer this stream's challenge (replayed?)")
    return node_id
