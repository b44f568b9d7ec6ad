"""C2SP signed-note checkpoints: Go's reference vector, round trips, malformed notes."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from protos import checkpoint as cpmod
from protos.errors import CheckpointError
from protos.keys import PrivateKey

# golang.org/x/mod/sumdb/note's documented example (used as data): Ed25519 is
# deterministic, so our signer must reproduce Go's note byte for byte.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + (
        "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgY"
        "N1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
    ).encode()
)
ORIGIN = "computewatch.test/log"


def _go_key() -> PrivateKey:
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert seed[0] == cpmod.ALG_ED25519
    return PrivateKey(Ed25519PrivateKey.from_private_bytes(seed[1:]))


def test_signs_exactly_like_go() -> None:
    key = _go_key()
    assert cpmod.sign_note(GO_TEXT, key, "PeterNeumann") == GO_NOTE
    assert cpmod.verifier_key("PeterNeumann", key.public) == GO_VKEY


def test_opens_go_note_with_go_verifier_key() -> None:
    verifier = cpmod.parse_verifier_key(GO_VKEY)
    assert verifier.name == "PeterNeumann"
    assert cpmod.open_text(GO_NOTE, [verifier]) == GO_TEXT.decode()
    with pytest.raises(CheckpointError, match="does not verify"):
        cpmod.open_text(GO_NOTE.replace(b"cryptography", b"cryptographY"), [verifier])


def test_verifier_keys_round_trip_even_with_plus_in_base64() -> None:
    for _ in range(64):  # about half of all keys have a '+' in their base64
        key = PrivateKey.generate().public
        verifier = cpmod.parse_verifier_key(cpmod.verifier_key(ORIGIN, key))
        assert (verifier.name, verifier.key.keyid) == (ORIGIN, key.keyid)


def test_verifier_key_hash_must_match() -> None:
    with pytest.raises(CheckpointError, match="does not match"):
        cpmod.parse_verifier_key(GO_VKEY.replace("c74f20a3", "c74f20a4"))


def _signed(
    key: PrivateKey, size: int = 5, ts: int = 10**18, **kw: object
) -> cpmod.SignedCheckpoint:
    cp = cpmod.Checkpoint(ORIGIN, size, bytes(range(32)), ts, **kw)  # type: ignore[arg-type]
    return cpmod.sign(cp, key)


def test_round_trip_and_format() -> None:
    key = PrivateKey.generate()
    signed = _signed(key, ts=1732470000000000000, extensions=("witness note",))
    text = signed.note.decode()
    lines = text.split("\n")
    assert lines[:5] == [
        ORIGIN,
        "5",
        base64.b64encode(bytes(range(32))).decode(),
        "timestamp 1732470000000000000",
        "witness note",
    ]
    assert lines[5] == ""
    assert lines[6].startswith(f"\u2014 {ORIGIN} ")
    opened = cpmod.open_note(signed.note, [cpmod.NoteVerifier(ORIGIN, key.public)], origin=ORIGIN)
    assert opened.checkpoint == signed.checkpoint
    # A bare public key matches whatever name the signature line carries.
    assert cpmod.open_note(signed.note, [key.public]).checkpoint == signed.checkpoint


def test_unknown_signers_are_ignored_but_one_trusted_signature_is_needed() -> None:
    key, other = PrivateKey.generate(), PrivateKey.generate()
    signed = _signed(key)
    extra = cpmod.sign_note(signed.checkpoint.body(), other, "witness").split(b"\n\n")[1]
    both = signed.note + extra
    assert cpmod.open_note(both, [key.public]).size == 5
    with pytest.raises(CheckpointError, match="no signature by a trusted key"):
        cpmod.open_note(signed.note, [other.public])
    with pytest.raises(CheckpointError, match="nothing can verify"):
        cpmod.open_note(signed.note, [])


def test_wrong_origin_is_refused() -> None:
    key = PrivateKey.generate()
    with pytest.raises(CheckpointError, match="is for log"):
        cpmod.open_note(_signed(key).note, [key.public], origin="other.example/log")


def _resign(body: str, key: PrivateKey) -> bytes:
    """Sign arbitrary text as a note (so the body, not the signature, is what is wrong)."""
    return cpmod.sign_note(body.encode(), key, ORIGIN)


ROOT_B64 = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (f"{ORIGIN}\n5\n{ROOT_B64}\n", "expected origin, size, root, timestamp"),
        (f"{ORIGIN}\n05\n{ROOT_B64}\ntimestamp 1\n", "not a decimal"),
        (f"{ORIGIN}\n-5\n{ROOT_B64}\ntimestamp 1\n", "not a decimal"),
        (f"{ORIGIN}\n5\nnot base64!\ntimestamp 1\n", "not base64"),
        (f"{ORIGIN}\n5\n{base64.b64encode(bytes(31)).decode()}\ntimestamp 1\n", "31 bytes"),
        (f"{ORIGIN}\n5\n{ROOT_B64}\ntime 1\n", "expected 'timestamp"),
        (f"{ORIGIN}\n5\n{ROOT_B64}\ntimestamp 01\n", "expected 'timestamp"),
        (f" {ORIGIN}\n5\n{ROOT_B64}\ntimestamp 1\n", "origin"),
        (f"{ORIGIN}\n99999999999999999999\n{ROOT_B64}\ntimestamp 1\n", "2\\*\\*64"),
    ],
    ids=[
        "no-timestamp",
        "leading-zero",
        "negative",
        "bad-root",
        "short-root",
        "bad-ext",
        "ts-leading-zero",
        "origin-space",
        "size-overflow",
    ],
)
def test_malformed_bodies_are_refused(body: str, match: str) -> None:
    key = PrivateKey.generate()
    with pytest.raises(CheckpointError, match=match):
        cpmod.open_note(_resign(body, key), [key.public])


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda n: n.replace(b"\n\n", b"\n"), "no signature block"),
        (lambda n: n.replace("\u2014".encode(), b"-"), "em dash"),
        (lambda n: n[:-1], "no signature block"),
        (lambda n: n + b"\xff\n", "not UTF-8"),
        (lambda n: n.replace(b"\n5\n", b"\n5\r\n"), "control characters"),
        (lambda n: n + b"x" * cpmod.MAX_NOTE_BYTES, "limit"),
        (lambda n: n.rsplit(b" ", 1)[0] + b" !!!!\n", "not base64"),
        (lambda n: n.rsplit(b" ", 1)[0] + b" AAAA\n", "too short"),
        (lambda n: n.replace(b"\n5\n", b"\n6\n"), "does not verify"),
    ],
    ids=[
        "no-blank",
        "no-dash",
        "no-final-newline",
        "not-utf8",
        "control",
        "oversize",
        "sig-not-b64",
        "sig-short",
        "body-changed",
    ],
)
def test_malformed_notes_are_refused(mutate: object, match: str) -> None:
    key = PrivateKey.generate()
    note = _signed(key).note
    with pytest.raises(CheckpointError, match=match):
        cpmod.open_note(mutate(note), [key.public])  # type: ignore[operator]


def test_checkpoint_constructor_validates() -> None:
    with pytest.raises(CheckpointError, match="origin"):
        cpmod.Checkpoint("", 1, bytes(32), 1)
    with pytest.raises(CheckpointError, match="extension"):
        cpmod.Checkpoint(ORIGIN, 1, bytes(32), 1, ("timestamp 2",))
    with pytest.raises(CheckpointError, match="size"):
        cpmod.Checkpoint(ORIGIN, -1, bytes(32), 1)


@given(st.binary(max_size=400))
def test_parsing_arbitrary_bytes_raises_only_checkpoint_error(data: bytes) -> None:
    key = PrivateKey.generate()
    try:
        cpmod.open_note(data, [key.public])
    except CheckpointError:
        return
    raise AssertionError("random bytes verified as a checkpoint")


@given(
    size=st.integers(min_value=0, max_value=2**64 - 1),
    ts=st.integers(min_value=0, max_value=2**63),
    root=st.binary(min_size=32, max_size=32),
)
def test_any_checkpoint_round_trips(size: int, ts: int, root: bytes) -> None:
    key = PrivateKey.generate()
    signed = cpmod.sign(cpmod.Checkpoint(ORIGIN, size, root, ts), key)
    assert cpmod.open_note(signed.note, [key.public]).checkpoint == signed.checkpoint
    assert cpmod.parse_unverified(signed.note) == signed.checkpoint
