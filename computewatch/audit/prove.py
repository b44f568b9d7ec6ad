"""``audit prove``: one entry's inclusion in a signed tree, as a portable bundle.

A bundle (JSON) holds the entry bytes, its index, the tree size, the audit
path and the signed checkpoint note; anyone with the collector's public key
checks it offline with ``check_bundle``. Bundles are fetched from a
collector (``fetch_bundle``) or computed from a local copy (``local_bundle``).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import grpc

from computewatch.audit.keystate import KeyState
from computewatch.audit.store import LocalStore
from computewatch.audit.trust import Trust
from protos import checkpoint as cpmod
from protos import merkle
from protos.computewatch.v1 import audit_pb2, audit_pb2_grpc
from protos.errors import CheckpointError, DecodeError, InconsistentLogError, LogError, ProofError

BUNDLE_FORMAT = "computewatch-inclusion-v1"


@dataclass(frozen=True)
class InclusionBundle:
    index: int
    tree_size: int
    entry: bytes
    proof: tuple[bytes, ...]
    checkpoint: bytes

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": BUNDLE_FORMAT,
                "index": self.index,
                "tree_size": self.tree_size,
                "entry": base64.b64encode(self.entry).decode("ascii"),
                "proof": [base64.b64encode(h).decode("ascii") for h in self.proof],
                "checkpoint": self.checkpoint.decode("utf-8"),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> InclusionBundle:
        try:
            doc: dict[str, Any] = json.loads(text)
            if doc.get("format") != BUNDLE_FORMAT:
                raise DecodeError(f"not a {BUNDLE_FORMAT} bundle")
            return cls(
                index=int(doc["index"]),
                tree_size=int(doc["tree_size"]),
                entry=base64.b64decode(doc["entry"], validate=True),
                proof=tuple(base64.b64decode(h, validate=True) for h in doc["proof"]),
                checkpoint=str(doc["checkpoint"]).encode("utf-8"),
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise DecodeError(f"inclusion bundle is malformed: {exc}") from exc


def check_bundle(bundle: InclusionBundle, trust: Trust) -> cpmod.SignedCheckpoint:
    """Verify the checkpoint signature and the entry's audit path; return the checkpoint."""
    signed = cpmod.open_note(bundle.checkpoint, [trust.collector], origin=trust.origin)
    if bundle.tree_size != signed.size:
        raise ProofError(
            f"the proof is for tree size {bundle.tree_size}, the checkpoint is {signed.size}"
        )
    merkle.verify_inclusion(
        merkle.leaf_hash(bundle.entry), bundle.index, signed.size, bundle.proof, signed.root
    )
    return signed


async def fetch_bundle(
    stub: audit_pb2_grpc.AuditStub,
    index: int,
    trust: Trust,
    *,
    entry: bytes | None = None,
    since: cpmod.SignedCheckpoint | None = None,
) -> InclusionBundle:
    """Ask the collector for its checkpoint, the entry (unless given) and the path.

    With ``since`` (a checkpoint the caller already trusts), also demand a
    consistency proof that the collector's tree extends it.
    """
    try:
        reply = await stub.GetCheckpoint(audit_pb2.GetCheckpointRequest())
        signed = cpmod.open_note(reply.note, [trust.collector], origin=trust.origin)
        if index >= signed.size:
            raise LogError(f"entry {index} is not in the collector's tree of {signed.size}")
        if since is not None:
            await _check_extends(stub, since, signed)
        if entry is None:
            got = await stub.GetEntries(audit_pb2.GetEntriesRequest(start=index, end=index + 1))
            if len(got.entries) != 1 or got.entries[0].index != index:
                raise LogError(f"the collector did not return entry {index}")
            entry = got.entries[0].data
        proof = await stub.GetInclusionProof(
            audit_pb2.InclusionProofRequest(index=index, tree_size=signed.size)
        )
    except grpc.aio.AioRpcError as exc:
        raise LogError(f"collector answered {exc.code().name}: {exc.details()}") from exc
    bundle = InclusionBundle(index, signed.size, entry, tuple(proof.hashes), signed.note)
    check_bundle(bundle, trust)
    return bundle


async def _check_extends(
    stub: audit_pb2_grpc.AuditStub, old: cpmod.SignedCheckpoint, new: cpmod.SignedCheckpoint
) -> None:
    if new.size < old.size:
        raise InconsistentLogError(f"the collector's tree ({new.size}) is below {old.size}")
    if old.size == 0:
        return
    proof: list[bytes] = []
    if new.size > old.size:
        reply = await stub.GetConsistencyProof(
            audit_pb2.ConsistencyProofRequest(old_size=old.size, new_size=new.size)
        )
        proof = list(reply.hashes)
    try:
        merkle.verify_consistency(old.size, new.size, proof, old.root, new.root)
    except ProofError as exc:
        raise InconsistentLogError(
            f"the collector's tree {new.size} does not extend checkpoint {old.size}: {exc}"
        ) from exc


def local_bundle(store: LocalStore, index: int, trust: Trust) -> InclusionBundle:
    """A bundle from the local copy, against its newest checkpoint."""
    latest = store.latest_checkpoint()
    if latest is None:
        raise CheckpointError(f"{store.dir}: the copy holds no checkpoint")
    signed = cpmod.open_note(latest.note, [trust.collector], origin=trust.origin)
    if index >= signed.size:
        raise LogError(f"entry {index} is not in the copy's checkpoint of {signed.size}")
    leaves: list[bytes] = []
    entry = b""
    for idx, data in store.iter_entries():
        if idx >= signed.size:
            break
        if idx != len(leaves):
            raise LogError(f"entry {len(leaves)} is missing from the copy")
        leaves.append(merkle.leaf_hash(data))
        if idx == index:
            entry = data
    if len(leaves) < signed.size:
        raise LogError(f"the copy holds {len(leaves)} entries, its checkpoint {signed.size}")
    tree = merkle.MemoryTree(leaves)
    proof = merkle.inclusion_proof(index, signed.size, tree.subtree)
    bundle = InclusionBundle(index, signed.size, entry, tuple(proof), signed.note)
    check_bundle(bundle, trust)
    return bundle


def trust_from_copy(store: LocalStore, trust: Trust) -> Trust:
    """``trust`` extended with what the verified copy learned from key events:
    every node and authority key it has seen, and the current collector key
    (after rotations). Unchanged for a copy saved before key events existed."""
    keys = store.follow_state().keys
    if not keys:
        return trust
    state = KeyState.from_json(keys)
    # Every key seen, current or retired (directives before a rotation,
    # reports before a revocation): they only check the entry's own signature.
    nodes = dict(trust.nodes)
    for keyid in [*state.nodes, *state.retired]:
        key = state.known.get(keyid)
        if key is not None and keyid not in state.authorities:
            nodes.setdefault(keyid, key)
    return Trust(state.collector, nodes, {**trust.authorities, **state.authorities}, trust.origin)
