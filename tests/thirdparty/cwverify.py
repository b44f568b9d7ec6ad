"""A verifier for a computewatch log written only from docs/regulators.md,
"Specification: checking the record without our code".

It imports nothing from the project: only the standard library and
``cryptography`` (for Ed25519). Protobuf is parsed by hand (section 2).
Section numbers in comments refer to that document.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PREFIX = "application/vnd.computewatch."
SUFFIX = "+protobuf"
SPKI_ED25519 = bytes.fromhex("302a300506032b6570032100")  # section 1
ACTION_LEASE = 5
ROLE_NODE, ROLE_AUTHORITY = 1, 2


class FindingError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


# -- section 1 -------------------------------------------------------------------
def keyid(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def raw_from_pem(pem: str) -> bytes:
    body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
    der = base64.b64decode(body)
    if len(der) != 44 or der[:12] != SPKI_ED25519:
        raise ValueError("not an Ed25519 SubjectPublicKeyInfo")
    return der[12:]


def ed25519_ok(raw: bytes, sig: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(sig, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# -- section 2: protobuf wire format ---------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos
    raise ValueError("varint too long")


def fields(buf: bytes) -> dict[int, list[int | bytes]]:
    """field number -> values in order (ints for varints, bytes otherwise)."""
    out: dict[int, list[int | bytes]] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
            if pos > len(buf):
                raise ValueError("truncated field")
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def one_bytes(f: dict[int, list[int | bytes]], number: int) -> bytes:
    values = f.get(number)
    if not values:
        return b""
    v = values[-1]
    if not isinstance(v, bytes):
        raise ValueError(f"field {number} is not length-delimited")
    return v


def one_int(f: dict[int, list[int | bytes]], number: int) -> int:
    values = f.get(number)
    if not values:
        return 0
    v = values[-1]
    if not isinstance(v, int):
        raise ValueError(f"field {number} is not a varint")
    return v


@dataclass
class Envelope:
    data: bytes
    payload: bytes
    payload_type: str
    signatures: list[tuple[str, bytes]]

    @property
    def message(self) -> str:
        t = self.payload_type
        if not (t.startswith(PREFIX) and t.endswith(SUFFIX)):
            return ""
        return t[len(PREFIX) : -len(SUFFIX)]

    def pae(self) -> bytes:
        t = self.payload_type.encode()
        return b"DSSEv1 %d %s %d %s" % (len(t), t, len(self.payload), self.payload)

    def signed_by(self, raw: bytes) -> bool:
        """True if a signature names this key and verifies; FindingError if one
        names it and does not verify."""
        kid = keyid(raw)
        found = False
        for sid, sig in self.signatures:
            if sid == kid:
                if not ed25519_ok(raw, sig, self.pae()):
                    raise FindingError("rewritten_entry", f"{kid[:16]} signature is bad")
                found = True
        return found


def envelope(data: bytes) -> Envelope:
    f = fields(data)
    sigs = []
    for s in f.get(3, []):
        if not isinstance(s, bytes):
            raise ValueError("signature is not a message")
        sf = fields(s)
        sigs.append((one_bytes(sf, 1).decode(), one_bytes(sf, 2)))
    return Envelope(data, one_bytes(f, 1), one_bytes(f, 2).decode(), sigs)


# -- section 4 -------------------------------------------------------------------
def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def tree_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + tree_root(leaves[:k]) + tree_root(leaves[k:])).digest()


def root_from_proof(index: int, size: int, leaf: bytes, proof: list[bytes]) -> bytes:
    """RFC 9162 2.1.3.2."""
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ValueError("proof too long")
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("proof too short")
    return r


@dataclass
class Checkpoint:
    origin: str
    size: int
    root: bytes
    timestamp: int


def open_checkpoint(note: str, origin: str, raw: bytes) -> Checkpoint:
    text, sep, sigs = note.partition("\n\n")
    if not sep:
        raise FindingError("checkpoint", "no blank line before the signatures")
    lines = text.split("\n")
    if len(lines) < 4 or lines[0] != origin or not lines[3].startswith("timestamp "):
        raise FindingError("checkpoint", "malformed body or another origin")
    signed = (text + "\n").encode()
    khash = hashlib.sha256(origin.encode() + b"\n\x01" + raw).digest()[:4]
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            continue
        name, _, b64 = line[2:].rpartition(" ")
        blob = base64.b64decode(b64)
        if name == origin and blob[:4] == khash and ed25519_ok(raw, blob[4:], signed):
            return Checkpoint(origin, int(lines[1]), base64.b64decode(lines[2]), int(lines[3][10:]))
    raise FindingError("checkpoint", "not signed by the expected collector key")


# -- sections 5 to 7 ----------------------------------------------------------------
@dataclass
class State:
    collector: bytes
    authorities: set[bytes]
    nodes: dict[bytes, str] = field(default_factory=dict)  # raw key -> node ("" unbound)
    retired: set[bytes] = field(default_factory=set)
    heads: dict[bytes, tuple[int, bytes, str]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: {"lease": 0, "other": 0})
    collector_at: list[tuple[int, bytes]] = field(default_factory=list)
    reports: dict[str, int] = field(default_factory=dict)
    resumes: dict[str, int] = field(default_factory=dict)  # RESUME id -> distinct approvers

    def signer(self, env: Envelope, candidates: set[bytes] | list[bytes], index: int) -> bytes:
        for raw in candidates:
            if env.signed_by(raw):
                return raw
        for raw in self.retired:
            if env.signed_by(raw):
                raise FindingError("revoked_key", f"entry {index}: signed by a retired key")
        raise FindingError("unknown_key", f"entry {index}: no current key of the right role signed")


def check_entry(state: State, index: int, data: bytes) -> None:
    env = envelope(data)
    kind = env.message
    f = fields(env.payload)
    if kind == "NodeReport":
        raw = state.signer(env, list(state.nodes), index)
        node = one_bytes(f, 1).decode()
        bound = state.nodes[raw]
        if bound and bound != node:
            raise FindingError("wrong_key", f"entry {index}: key of {bound} reports for {node}")
        state.nodes[raw] = node
        _chain(state, index, raw, (node, one_int(f, 3), one_bytes(f, 4)), data)
        state.reports[node] = state.reports.get(node, 0) + 1
    elif kind == "Directive":
        state.signer(env, [state.collector], index)
        cls = "lease" if one_int(f, 6) == ACTION_LEASE else "other"
        counter = one_int(f, 2)
        if counter <= state.counters[cls]:
            raise FindingError("rollback", f"entry {index}: {cls} counter {counter} does not rise")
        state.counters[cls] = counter
        if one_int(f, 6) == 2:
            state.resumes[one_bytes(f, 1).decode()] = _approvers(state, f)
    elif kind in ("Approval", "ManualHalt", "Evaluation"):
        state.signer(env, state.authorities, index)
    elif kind == "NodeEnrolment":
        state.signer(env, [state.collector], index)
        node, key, old = one_bytes(f, 1).decode(), one_bytes(f, 2), one_bytes(f, 4)
        if len(key) != 32 or not node:
            raise FindingError("key_event", f"entry {index}: malformed enrolment")
        if old:
            _retire(state, old)
        for other, holder in list(state.nodes.items()):
            if holder == node and other != key:
                _retire(state, other)
        _enrol(state, index, node, key)
    elif kind == "KeyHandover":
        node, old, new = one_bytes(f, 1).decode(), one_bytes(f, 2), one_bytes(f, 3)
        if old not in state.nodes or state.nodes[old] not in ("", node):
            raise FindingError("key_event", f"entry {index}: old key not {node}'s")
        if not (env.signed_by(old) and env.signed_by(new)):
            raise FindingError("key_event", f"entry {index}: handover not signed by both keys")
        _retire(state, old)
        _enrol(state, index, node, new)
    elif kind == "KeyRevocation":
        state.signer(env, [state.collector], index)
        if one_int(f, 1) not in (ROLE_NODE, ROLE_AUTHORITY):
            raise FindingError("key_event", f"entry {index}: unknown role")
        _retire(state, one_bytes(f, 2))
    elif kind == "CollectorKeyRotation":
        old, new = one_bytes(f, 1), one_bytes(f, 2)
        if old != state.collector:
            state.signer(env, [state.collector], index)
            raise FindingError("key_event", f"entry {index}: rotation from a stale key")
        if not (env.signed_by(old) and env.signed_by(new)):
            raise FindingError("key_event", f"entry {index}: rotation not signed by both keys")
        state.retired.add(old)
        state.collector = new
        state.collector_at.append((index, new))
    else:
        raise FindingError("payload_type", f"entry {index}: unknown type {env.payload_type}")


def _retire(state: State, raw: bytes) -> None:
    state.nodes.pop(raw, None)
    state.authorities.discard(raw)
    state.retired.add(raw)


def _enrol(state: State, index: int, node: str, key: bytes) -> None:
    if key in state.retired:
        raise FindingError("key_event", f"entry {index}: a retired key enrolled again")
    if state.nodes.get(key, "") not in ("", node):
        raise FindingError("key_event", f"entry {index}: key already belongs to another node")
    state.nodes[key] = node


def _chain(state: State, index: int, raw: bytes, link: tuple[str, int, bytes], data: bytes) -> None:
    node, seq, prev = link
    digest = hashlib.sha256(data).digest()
    head = state.heads.get(raw)
    state_seq = 0 if head is None else head[0]
    if head is None:
        state.heads[raw] = (seq, digest, node)
        if seq != 1:
            raise FindingError("dropped_entry", f"entry {index}: first report is sequence {seq}")
        if prev != bytes(32):
            raise FindingError("broken_chain", f"entry {index}: first previous_digest is not zero")
        return
    if seq <= state_seq:
        if seq == state_seq:
            reason = "replay" if digest == head[1] else "equivocation"
            raise FindingError(reason, f"entry {index}: sequence {seq} again")
        raise FindingError("rollback", f"entry {index}: sequence {seq} after {state_seq}")
    state.heads[raw] = (seq, digest, node)
    if seq > state_seq + 1:
        raise FindingError("dropped_entry", f"entry {index}: sequence {seq} after {state_seq}")
    if prev != head[1]:
        raise FindingError("broken_chain", f"entry {index}: previous_digest does not match")


def _approvers(state: State, directive: dict[int, list[int | bytes]]) -> int:
    target = one_bytes(directive, 11).decode()
    keys = set()
    for blob in directive.get(12, []):
        if not isinstance(blob, bytes):
            continue
        env = envelope(blob)
        if env.message != "Approval" or one_bytes(fields(env.payload), 1).decode() != target:
            continue
        for raw in state.authorities | state.retired:
            if env.signed_by(raw):
                keys.add(raw)
    return len(keys)


@dataclass
class Result:
    entries: int
    findings: list[str]
    state: State
    checkpoint: Checkpoint | None


def verify_log(
    entries: list[bytes],
    notes: list[str],
    *,
    origin: str,
    collector_pem: str,
    authority_pems: Sequence[str] = (),
) -> Result:
    """Check ``entries`` (index 0 on) and the checkpoint ``notes`` covering them."""
    first = raw_from_pem(collector_pem)
    state = State(first, {raw_from_pem(p) for p in authority_pems})
    findings: list[str] = []
    leaves: list[bytes] = []
    for index, data in enumerate(entries):
        leaves.append(leaf_hash(data))
        try:
            check_entry(state, index, data)
        except FindingError as exc:
            findings.append(str(exc))
        except ValueError as exc:
            findings.append(f"rewritten_entry: entry {index}: not a valid envelope ({exc})")
    newest: Checkpoint | None = None
    for note in notes:
        size = int(note.split("\n")[1])
        key = first
        for at, new in state.collector_at:
            if at < size:
                key = new
        try:
            cp = open_checkpoint(note, origin, key)
        except FindingError as exc:
            findings.append(str(exc))
            continue
        if cp.size > len(leaves):
            findings.append(f"dropped_entry: checkpoint {cp.size} covers entries not given")
        elif tree_root(leaves[: cp.size]) != cp.root:
            findings.append(f"rewritten_entry: entries do not hash to checkpoint {cp.size}")
        if newest is None or cp.size > newest.size:
            newest = cp
    return Result(len(entries), findings, state, newest)
