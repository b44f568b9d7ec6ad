"""Chain checks, including a property test against a simple model."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.telemetry.chain import ZERO_DIGEST, ChainBook
from protos.errors import (
    BrokenChainError,
    ChainError,
    EquivocationError,
    GapError,
    ReplayError,
    RollbackError,
)


def d(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def book_with(n: int) -> tuple[ChainBook, list[bytes]]:
    digests: list[bytes] = []
    stored: dict[int, bytes] = {}
    book = ChainBook({}, lambda k, s: stored.get(s))
    prev = ZERO_DIGEST
    for seq in range(1, n + 1):
        dig = d(f"r{seq}")
        book.check("k", seq, prev, dig)
        book.advance("k", seq, dig)
        stored[seq] = dig
        digests.append(dig)
        prev = dig
    return book, digests


def test_next_link_is_accepted_and_each_break_has_its_error() -> None:
    book, digests = book_with(100)
    book.check("k", 101, digests[-1], d("r101"))
    with pytest.raises(BrokenChainError):
        book.check("k", 101, d("elsewhere"), d("r101"))
    with pytest.raises(GapError):
        book.check("k", 103, digests[-1], d("r103"))
    with pytest.raises(ReplayError):
        book.check("k", 100, digests[-2], digests[-1])
    with pytest.raises(EquivocationError):
        book.check("k", 100, digests[-2], d("other"))
    with pytest.raises(ReplayError):  # older than the in-memory window: read back
        book.check("k", 3, digests[1], digests[2])
    with pytest.raises(RollbackError):
        book.check("k", 3, digests[1], d("other"))


def test_a_new_key_must_start_at_one_from_zero() -> None:
    book = ChainBook({}, lambda k, s: None)
    with pytest.raises(GapError):
        book.check("fresh", 2, ZERO_DIGEST, d("x"))
    with pytest.raises(BrokenChainError):
        book.check("fresh", 1, d("not-zero"), d("x"))
    book.check("fresh", 1, ZERO_DIGEST, d("x"))


def test_chains_are_per_key() -> None:
    book, digests = book_with(3)
    book.check("other", 1, ZERO_DIGEST, d("o1"))
    with pytest.raises(GapError):
        book.check("other", 4, digests[-1], d("o4"))


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=12), st.booleans(), st.booleans()),
        max_size=60,
    )
)
def test_only_the_true_next_link_ever_advances(ops: list[tuple[int, bool, bool]]) -> None:
    """Whatever is thrown at it, the accepted chain is 1, 2, 3, ... with
    each link naming its predecessor, and every refusal is a ChainError."""
    stored: dict[int, bytes] = {}
    book = ChainBook({}, lambda k, s: stored.get(s))
    accepted: list[bytes] = []
    for seq, good_prev, fresh in ops:
        prev = (
            (accepted[seq - 2] if 2 <= seq <= len(accepted) + 1 else ZERO_DIGEST)
            if good_prev
            else d("bad")
        )
        dig = d(f"{seq}-{fresh}-{len(accepted)}") if fresh else d(f"{seq}")
        try:
            book.check("k", seq, prev, dig)
        except ChainError:
            continue
        book.advance("k", seq, dig)
        stored[seq] = dig
        accepted.append(dig)
        assert seq == len(accepted)
    assert book.head("k") == (len(accepted), accepted[-1] if accepted else ZERO_DIGEST)


def test_sequence_zero_is_a_rollback_even_on_a_started_chain() -> None:
    book, _ = book_with(3)
    with pytest.raises(RollbackError, match="sequence 0 is never valid"):
        book.check("k", 0, ZERO_DIGEST, d("zero"))
