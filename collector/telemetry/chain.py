"""Per-key chain state: sequence +1 each, previous_digest = SHA-256 of the
previous envelope. Holds only accepted links (committed or in flight).

Chains are kept per signing key, not per node id: re-enrolling a node with a
new key starts a new chain, and a key can never continue another key's chain.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from protos.errors import (
    BrokenChainError,
    EquivocationError,
    GapError,
    ReplayError,
    RollbackError,
)

ZERO_DIGEST = bytes(32)
_RECENT = 64


@dataclass
class _Head:
    sequence: int
    digest: bytes
    # sequence -> digest of the last few accepted links (equivocation vs replay
    # for links still in flight, before they can be read back from the ledger)
    recent: OrderedDict[int, bytes]


class ChainBook:
    """Checks and advances chains. ``stored(keyid, seq)`` reads an accepted
    envelope's digest back from the ledger for older sequences."""

    def __init__(
        self,
        heads: dict[str, tuple[int, bytes]],
        stored: Callable[[str, int], bytes | None],
    ) -> None:
        self._heads = {k: _Head(s, d, OrderedDict({s: d})) for k, (s, d) in heads.items()}
        self._stored = stored

    def head(self, keyid: str) -> tuple[int, bytes]:
        h = self._heads.get(keyid)
        return (0, ZERO_DIGEST) if h is None else (h.sequence, h.digest)

    def check(self, keyid: str, sequence: int, previous: bytes, digest: bytes) -> None:
        """Raise the ChainError that applies, or return if this is the next link.

        ReplayError means these exact bytes were accepted before (harmless);
        EquivocationError means different bytes were accepted for this sequence.
        """
        last, last_digest = self.head(keyid)
        if sequence == last + 1:
            if previous != last_digest:
                raise BrokenChainError(
                    f"sequence {sequence}: previous_digest {previous.hex()[:16]} does not match"
                    f" the accepted report {last} ({last_digest.hex()[:16]})"
                )
            return
        if sequence > last + 1:
            raise GapError(
                f"sequence {sequence} skips reports: the last accepted is {last},"
                f" so {last + 1} is next"
            )
        if sequence == 0:
            raise RollbackError("sequence 0 is never valid: sequences start at 1")
        h = self._heads.get(keyid)
        accepted = h.recent.get(sequence) if h else None
        if accepted is None:
            accepted = self._stored(keyid, sequence)
        if accepted == digest:
            raise ReplayError(f"sequence {sequence} was already accepted (identical bytes)")
        if sequence == last:
            raise EquivocationError(
                f"sequence {sequence} was already accepted with different bytes"
                f" ({last_digest.hex()[:16]} vs {digest.hex()[:16]})"
            )
        raise RollbackError(
            f"sequence {sequence} goes back before the last accepted {last}"
            " with bytes that were never accepted"
        )

    def advance(self, keyid: str, sequence: int, digest: bytes) -> None:
        h = self._heads.get(keyid)
        if h is None:
            h = self._heads[keyid] = _Head(sequence, digest, OrderedDict())
        h.sequence, h.digest = sequence, digest
        h.recent[sequence] = digest
        while len(h.recent) > _RECENT:
            h.recent.popitem(last=False)

    def reset(self, heads: dict[str, tuple[int, bytes]]) -> None:
        """Forget in-flight links after a failed write (back to what is committed)."""
        self._heads = {k: _Head(s, d, OrderedDict({s: d})) for k, (s, d) in heads.items()}
