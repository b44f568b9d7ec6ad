"""Signed checkpoints in the C2SP formats (the convention of Go's checksum database and Sigstore).

A checkpoint (https://c2sp.org/tlog-checkpoint) is the body of a signed note
(https://c2sp.org/signed-note)::

    computewatch.example/log          <- origin (log id)
    1234                              <- tree size, decimal
    9yQ1...base64 root hash...=       <- RFC 9162 root of the first 1234 entries
    timestamp 1732470000000000000     <- extension line: signing time, unix nanos
                                      <- blank line ends the body
    — computewatch.example/log AbCd...  <- one line per signature

Each signature line is an em dash, a space, the key name, a space and
base64(key hash || Ed25519 signature over the body bytes), where the 4-byte
key hash is SHA-256(name || 0x0A || 0x01 || raw public key)[:4]; the
verifier key string ``name+<hash hex>+base64(0x01 || public key)`` is what
Go's ``golang.org/x/mod/sumdb/note`` reads, so any C2SP tool checks ours.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from protos.errors import CheckpointError, SignatureError
from protos.keys import PrivateKey, PublicKey
from protos.merkle import HASH_SIZE

ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "  # em dash, space
TIMESTAMP_EXT = "timestamp"
MAX_NOTE_BYTES = 64 * 1024
MAX_SIGNATURES = 100
_NAME = re.compile(r"[^\s+]+")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")

# Trailing metadata key on an ``Audit.Subscribe`` stream closed for falling
# behind: the tree size the last checkpoint sent on it covers, the
# ``from_index`` to resume from once what was sent is stored.
RESUME_FROM_KEY = "computewatch-resume-from"


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log's size and root at one signing time."""

    origin: str
    size: int
    root: bytes
    timestamp_unix_nanos: int
    # Extension lines after the timestamp, kept verbatim, ignored.
    extensions: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.origin or self.origin != self.origin.strip() or "\n" in self.origin:
            raise CheckpointError(f"origin {self.origin!r}: expected one non-empty line")
        if not 0 <= self.size < 1 << 64:
            raise CheckpointError(f"size {self.size}: expected 0 <= size < 2**64")
        if len(self.root) != HASH_SIZE:
            raise CheckpointError(f"root is {len(self.root)} bytes, expected {HASH_SIZE}")
        if self.timestamp_unix_nanos < 0:
            raise CheckpointError(f"timestamp {self.timestamp_unix_nanos}: expected >= 0")
        for ext in self.extensions:
            if not ext or "\n" in ext or ext.startswith(TIMESTAMP_EXT + " "):
                raise CheckpointError(f"extension line {ext!r} is not allowed")

    def body(self) -> bytes:
        """The note text that signatures cover, ending in a newline."""
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(self.root).decode("ascii"),
            f"{TIMESTAMP_EXT} {self.timestamp_unix_nanos}",
            *self.extensions,
        ]
        return ("\n".join(lines) + "\n").encode("utf-8")


@dataclass(frozen=True)
class SignedCheckpoint:
    """A verified checkpoint and the exact note bytes (transferable evidence)."""

    checkpoint: Checkpoint
    note: bytes

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root(self) -> bytes:
        return self.checkpoint.root

    @property
    def timestamp_unix_nanos(self) -> int:
        return self.checkpoint.timestamp_unix_nanos


@dataclass(frozen=True)
class NoteVerifier:
    """A trusted signer: key name (usually the log origin) and public key."""

    name: str
    key: PublicKey

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise CheckpointError(f"key name {self.name!r}: no spaces or '+' allowed")

    @property
    def key_hash(self) -> bytes:
        return key_hash(self.name, self.key)


def key_hash(name: str, key: PublicKey) -> bytes:
    """C2SP signed-note key hash: SHA-256(name || 0x0A || 0x01 || key)[:4]."""
    data = name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + key.raw()
    return hashlib.sha256(data).digest()[:4]


def verifier_key(name: str, key: PublicKey) -> str:
    """The note verifier key string: ``name+hash+base64(0x01 || key)``."""
    NoteVerifier(name, key)
    blob = base64.b64encode(bytes([ALG_ED25519]) + key.raw()).decode("ascii")
    return f"{name}+{key_hash(name, key).hex()}+{blob}"


def parse_verifier_key(vkey: str) -> NoteVerifier:
    """Read a ``name+hash+base64`` verifier key (as printed by ``verifier_key``)."""
    parts = vkey.strip().split("+", 2)  # the base64 key itself may contain '+'
    if len(parts) != 3:
        raise CheckpointError("verifier key: expected name+hash+key")
    name, hash_hex, blob = parts
    try:
        raw = base64.b64decode(blob, validate=True)
    except binascii.Error as exc:
        raise CheckpointError(f"verifier key {name!r}: key is not base64") from exc
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise CheckpointError(f"verifier key {name!r}: not an Ed25519 key")
    verifier = NoteVerifier(name, PublicKey.from_raw(raw[1:]))
    if verifier.key_hash.hex() != hash_hex.lower():
        raise CheckpointError(f"verifier key {name!r}: hash {hash_hex} does not match the key")
    return verifier


def sign_note(text: bytes, key: PrivateKey, name: str) -> bytes:
    """A signed note: ``text`` (ending in a newline), a blank line, one signature line."""
    if not text.endswith(b"\n") or b"\n\n" in text:
        raise CheckpointError("note text must end in a newline and hold no blank line")
    verifier = NoteVerifier(name, key.public)
    sig = base64.b64encode(verifier.key_hash + key.sign(text)).decode("ascii")
    return text + f"\n{SIG_PREFIX}{name} {sig}\n".encode()


def sign(checkpoint: Checkpoint, key: PrivateKey, name: str | None = None) -> SignedCheckpoint:
    """Sign ``checkpoint`` as a note; the key name defaults to the origin."""
    name = checkpoint.origin if name is None else name
    return SignedCheckpoint(checkpoint, sign_note(checkpoint.body(), key, name))


def parse_body(body: str) -> Checkpoint:
    """Parse checkpoint text (the note body, ending in a newline); no signatures."""
    if not body.endswith("\n"):
        raise CheckpointError("checkpoint body does not end in a newline")
    lines = body[:-1].split("\n")
    if len(lines) < 4:
        raise CheckpointError(
            f"checkpoint has {len(lines)} lines; expected origin, size, root, timestamp"
        )
    origin, size_s, root_s, ts_line, *extensions = lines
    if not _DECIMAL.fullmatch(size_s):
        raise CheckpointError(f"tree size {size_s!r} is not a decimal number")
    try:
        root = base64.b64decode(root_s, validate=True)
    except binascii.Error as exc:
        raise CheckpointError(f"root hash {root_s!r} is not base64") from exc
    ts_name, _, ts_value = ts_line.partition(" ")
    if ts_name != TIMESTAMP_EXT or not _DECIMAL.fullmatch(ts_value):
        raise CheckpointError(f"line 4 {ts_line!r}: expected 'timestamp <unix nanos>'")
    cp = Checkpoint(origin, int(size_s), root, int(ts_value), tuple(extensions))
    if cp.body().decode("utf-8") != body:
        raise CheckpointError("checkpoint text is not in canonical form")
    return cp


def _split_note(note: bytes) -> tuple[str, list[tuple[str, bytes]]]:
    if len(note) > MAX_NOTE_BYTES:
        raise CheckpointError(f"note is {len(note)} bytes; the limit is {MAX_NOTE_BYTES}")
    try:
        text = note.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError("note is not UTF-8") from exc
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise CheckpointError("note contains control characters")
    body, sep, sigblock = text.rpartition("\n\n")
    if not sep or not sigblock.endswith("\n"):
        raise CheckpointError("note has no signature block (blank line, then signatures)")
    body += "\n"
    sigs: list[tuple[str, bytes]] = []
    for line in sigblock[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise CheckpointError(f"signature line {line[:40]!r} does not start with an em dash")
        name, _, b64 = line[len(SIG_PREFIX) :].partition(" ")
        if not _NAME.fullmatch(name):
            raise CheckpointError(f"signature key name {name!r} is malformed")
        try:
            raw = base64.b64decode(b64, validate=True)
        except binascii.Error as exc:
            raise CheckpointError(f"signature by {name!r} is not base64") from exc
        if len(raw) < 5:
            raise CheckpointError(f"signature by {name!r} is too short")
        sigs.append((name, raw))
    if len(sigs) > MAX_SIGNATURES:
        raise CheckpointError(f"note has {len(sigs)} signatures; the limit is {MAX_SIGNATURES}")
    return body, sigs


def open_text(note: bytes, verifiers: Sequence[NoteVerifier | PublicKey]) -> str:
    """Verify a signed note and return its text (ending in a newline).

    Succeeds when a signature by one of ``verifiers`` (matched by name and
    key hash; a bare ``PublicKey`` matches under whatever name the signature
    line gives) verifies over the text. Signatures by other keys are ignored,
    as the signed-note spec says, but one that claims a trusted key and fails
    is an error.
    """
    if not verifiers:
        raise CheckpointError("no trusted checkpoint key given: nothing can verify")
    body, sigs = _split_note(note)
    named = {(v.name, v.key_hash): v for v in verifiers if isinstance(v, NoteVerifier)}
    bare = [v for v in verifiers if isinstance(v, PublicKey)]
    verified = False
    for name, raw in sigs:
        verifier = named.get((name, raw[:4]))
        if verifier is None:
            verifier = next(
                (NoteVerifier(name, k) for k in bare if key_hash(name, k) == raw[:4]), None
            )
        if verifier is None:
            continue
        try:
            verifier.key.verify(raw[4:], body.encode("utf-8"))
        except SignatureError as exc:
            raise CheckpointError(f"checkpoint signature by {name!r} does not verify") from exc
        verified = True
    if not verified:
        names = ", ".join(sorted({n for n, _ in sigs}))
        raise CheckpointError(
            f"checkpoint carries no signature by a trusted key (signers: {names})"
        )
    return body


def open_note(
    note: bytes,
    verifiers: Sequence[NoteVerifier | PublicKey],
    *,
    origin: str | None = None,
) -> SignedCheckpoint:
    """Verify ``note`` (see ``open_text``) and parse its checkpoint.

    ``origin``, when given, must be the checkpoint's first line.
    """
    cp = parse_body(open_text(note, verifiers))
    if origin is not None and cp.origin != origin:
        raise CheckpointError(f"checkpoint is for log {cp.origin!r}, expected {origin!r}")
    return SignedCheckpoint(cp, note)


def parse_unverified(note: bytes) -> Checkpoint:
    """The checkpoint in ``note`` without checking any signature (for display only)."""
    body, _ = _split_note(note)
    return parse_body(body)
