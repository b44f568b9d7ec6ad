"""Which key may sign what, at each point of the log (docs/regulators.md, "Key events").

The regulator starts from the keys it was given (the collector key, and
optionally node and authority keys); key events in the log change that set in
log order: an enrolment adds a node key (signed by the current collector
key), a handover moves a node to a new key (signed by the old and the new
key), a revocation retires a node or authority key, and a rotation replaces
the collector key (signed by the old and the new key). A retired key signs
nothing valid after the event that retired it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from protos import dsse, keylog
from protos.computewatch.v1 import keylog_pb2
from protos.errors import (
    DecodeError,
    KeyEventError,
    RevokedKeyError,
    SignatureError,
    UnknownKeyError,
    VerificationError,
)
from protos.keys import PublicKey


@dataclass(frozen=True)
class NodeKey:
    # "" for a key the regulator was given: bound to a node by its first report.
    node_id: str
    since_index: int


@dataclass
class KeyState:
    collector: PublicKey
    nodes: dict[str, NodeKey] = field(default_factory=dict)
    authorities: dict[str, PublicKey] = field(default_factory=dict)
    # key id -> "<why> at entry N"
    retired: dict[str, str] = field(default_factory=dict)
    # every key seen, for signature checks (authorisation is separate)
    known: dict[str, PublicKey] = field(default_factory=dict)
    # (index of the rotation entry, new collector key), in log order
    rotations: list[tuple[int, PublicKey]] = field(default_factory=list)

    @classmethod
    def initial(
        cls,
        collector: PublicKey,
        nodes: dict[str, PublicKey],
        authorities: dict[str, PublicKey],
    ) -> KeyState:
        known = {**nodes, **authorities, collector.keyid: collector}
        return cls(
            collector,
            {k: NodeKey("", 0) for k in nodes},
            dict(authorities),
            known=known,
        )

    # -- authorisation -------------------------------------------------------------
    def _refuse(self, index: int, keyid: str, role: str) -> VerificationError:
        why = self.retired.get(keyid)
        if why is not None:
            return RevokedKeyError(f"entry {index}: key {keyid[:16]} was {why}; it signs no {role}")
        return UnknownKeyError(f"entry {index}: key {keyid[:16]} is not a current {role} key")

    def node_key(self, index: int, keyid: str) -> NodeKey:
        node = self.nodes.get(keyid)
        if node is None:
            raise self._refuse(index, keyid, "node")
        return node

    def require_collector(self, index: int, keyid: str) -> None:
        if keyid != self.collector.keyid:
            raise self._refuse(index, keyid, "collector")

    def require_authority(self, index: int, keyid: str) -> None:
        if keyid not in self.authorities:
            raise self._refuse(index, keyid, "authority")

    # -- events, in log order --------------------------------------------------------
    def apply(self, index: int, verified: dsse.Verified) -> None:
        t = verified.payload_type
        try:
            if t == keylog.ENROLMENT_TYPE:
                self.require_collector(index, verified.signer.keyid)
                self._enrol(index, verified.parse(keylog_pb2.NodeEnrolment))
            elif t == keylog.REVOCATION_TYPE:
                self.require_collector(index, verified.signer.keyid)
                self._revoke(index, verified.parse(keylog_pb2.KeyRevocation))
            elif t == keylog.HANDOVER_TYPE:
                self._handover(index, verified)
            elif t == keylog.ROTATION_TYPE:
                self._rotate(index, verified)
        except DecodeError as exc:
            raise KeyEventError(f"entry {index}: not a valid key event ({exc})") from exc

    def _add_node(self, index: int, node_id: str, key: PublicKey) -> None:
        if key.keyid in self.retired:
            raise KeyEventError(
                f"entry {index}: key {key.keyid[:16]} was {self.retired[key.keyid]};"
                " it cannot be enrolled again"
            )
        holder = self.nodes.get(key.keyid)
        if holder is not None and holder.node_id not in ("", node_id):
            raise KeyEventError(
                f"entry {index}: key {key.keyid[:16]} already belongs to node {holder.node_id!r}"
            )
        self.nodes[key.keyid] = NodeKey(node_id, index)
        self.known[key.keyid] = key

    def _retire(self, keyid: str, why: str) -> None:
        self.nodes.pop(keyid, None)
        self.authorities.pop(keyid, None)
        self.retired[keyid] = why

    def _enrol(self, index: int, msg: keylog_pb2.NodeEnrolment) -> None:
        key = keylog.public_key(msg.public_key, "public_key")
        if not msg.node_id:
            raise KeyEventError(f"entry {index}: enrolment names no node")
        if msg.replaces_public_key:
            old = keylog.public_key(msg.replaces_public_key, "replaces_public_key")
            self._retire(old.keyid, f"replaced by re-enrolment at entry {index}")
        for keyid, node in list(self.nodes.items()):
            if node.node_id == msg.node_id and keyid != key.keyid:
                self._retire(keyid, f"replaced by re-enrolment at entry {index}")
        self._add_node(index, msg.node_id, key)

    def _revoke(self, index: int, msg: keylog_pb2.KeyRevocation) -> None:
        key = keylog.public_key(msg.public_key, "public_key")
        if msg.role not in (keylog_pb2.KEY_ROLE_NODE, keylog_pb2.KEY_ROLE_AUTHORITY):
            raise KeyEventError(f"entry {index}: revocation of unknown role {msg.role}")
        self.known.setdefault(key.keyid, key)
        self._retire(key.keyid, f"revoked at entry {index}")

    def _handover(self, index: int, verified: dsse.Verified) -> None:
        try:
            msg, old, new = keylog.parse_handover(verified.envelope_bytes)
        except SignatureError as exc:
            raise KeyEventError(f"entry {index}: {exc}") from exc
        node = self.node_key(index, old.keyid)
        if node.node_id not in ("", msg.node_id):
            raise KeyEventError(
                f"entry {index}: handover for node {msg.node_id!r} by the key of {node.node_id!r}"
            )
        self._retire(old.keyid, f"handed over at entry {index}")
        self._add_node(index, msg.node_id, new)

    def _rotate(self, index: int, verified: dsse.Verified) -> None:
        msg = verified.parse(keylog_pb2.CollectorKeyRotation)
        old = keylog.public_key(msg.old_public_key, "old_public_key")
        new = keylog.public_key(msg.new_public_key, "new_public_key")
        self.require_collector(index, old.keyid)
        try:
            keylog.verify_both(verified.envelope_bytes, old, new)
        except (SignatureError, UnknownKeyError) as exc:
            raise KeyEventError(f"entry {index}: rotation not signed by both keys: {exc}") from exc
        self.retired[old.keyid] = f"rotated out at entry {index}"
        self.collector = new
        self.known[new.keyid] = new
        self.rotations.append((index, new))

    # -- persistence (the subscriber's saved state) --------------------------------------
    def to_json(self) -> str:
        return json.dumps(
            {
                "collector": self.collector.raw().hex(),
                "nodes": {k: [n.node_id, n.since_index] for k, n in self.nodes.items()},
                "authorities": [k.raw().hex() for k in self.authorities.values()],
                "retired": self.retired,
                "known": [k.raw().hex() for k in self.known.values()],
                "rotations": [[i, k.raw().hex()] for i, k in self.rotations],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> KeyState:
        doc = json.loads(text)

        def key(h: str) -> PublicKey:
            return PublicKey.from_raw(bytes.fromhex(h))

        known = {k.keyid: k for k in map(key, doc["known"])}
        return cls(
            key(doc["collector"]),
            {k: NodeKey(v[0], int(v[1])) for k, v in doc["nodes"].items()},
            {k.keyid: k for k in map(key, doc["authorities"])},
            dict(doc["retired"]),
            known,
            [(int(i), key(h)) for i, h in doc["rotations"]],
        )
