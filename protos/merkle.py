"""Merkle tree hashing and proofs as RFC 9162 (Certificate Transparency 2.0) defines them.

Leaf hash ``SHA-256(0x00 || entry)``, node hash ``SHA-256(0x01 || left || right)``,
and the tree over ``n`` leaves splits at the largest power of two below ``n``
(section 2.1.1). Both sides use this module: the collector generates proofs
from its stored subtree hashes, a regulator verifies them (sections 2.1.3.2
and 2.1.4.2) and recomputes roots from entries with a ``Frontier``.

Proof generation takes an accessor ``subtree(level, index)`` returning the
hash of the complete subtree of ``2**level`` leaves starting at leaf
``index << level``; a proof needs O(log n) of them, so a log that stores its
complete subtrees needs no scan to prove anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from protos.errors import ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"

# (level, index) -> hash of the complete subtree of 2**level leaves at index << level.
SubtreeAccessor = Callable[[int, int], bytes]


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def complete_subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """Decompose ``[start, end)`` into maximal aligned complete subtrees, left to right.

    For every range a proof or root needs (``start`` aligned to a power of
    two at least ``end - start``), the sizes strictly decrease, and folding
    them right to left gives MTH(D[start:end]).
    """
    out: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        level = (pos & -pos).bit_length() - 1 if pos else (end - pos).bit_length() - 1
        while pos + (1 << level) > end:
            level -= 1
        out.append((level, pos >> level))
        pos += 1 << level
    return out


def range_hash(start: int, end: int, subtree: SubtreeAccessor) -> bytes:
    """MTH of leaves ``[start, end)`` from complete-subtree hashes."""
    if end <= start:
        raise ValueError(f"empty range [{start}, {end})")
    parts = [subtree(level, index) for level, index in complete_subtrees(start, end)]
    acc = parts[-1]
    for h in reversed(parts[:-1]):
        acc = node_hash(h, acc)
    return acc


def root(size: int, subtree: SubtreeAccessor) -> bytes:
    """The root of the first ``size`` leaves (EMPTY_ROOT for size 0)."""
    return EMPTY_ROOT if size == 0 else range_hash(0, size, subtree)


def inclusion_proof(index: int, size: int, subtree: SubtreeAccessor) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 section 2.1.3.1, leaf to root."""
    if not 0 <= index < size:
        raise ValueError(f"index {index} is not in a tree of size {size}")
    out: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            out.append(range_hash(lo + k, hi, subtree))
            hi = lo + k
        else:
            out.append(range_hash(lo, lo + k, subtree))
            lo = lo + k
    out.reverse()
    return out


def consistency_proof(old: int, new: int, subtree: SubtreeAccessor) -> list[bytes]:
    """PROOF(old, D[0:new]) of RFC 9162 section 2.1.4.1."""
    if not 0 < old <= new:
        raise ValueError(f"no consistency proof from size {old} to size {new}")
    out: list[bytes] = []
    lo, hi, m, whole = 0, new, old, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            out.append(range_hash(lo + k, hi, subtree))
            hi = lo + k
        else:
            out.append(range_hash(lo, lo + k, subtree))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        out.append(range_hash(lo, hi, subtree))
    out.reverse()
    return out


def _check_hash(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{name} is {len(value)} bytes, expected {HASH_SIZE}")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` implies for ``leaf`` at ``index`` (RFC 9162 2.1.3.2)."""
    if not 0 <= index < size:
        raise ProofError(f"index {index} is not in a tree of size {size}")
    _check_hash("leaf hash", leaf)
    fn, sn, r = index, size - 1, leaf
    for i, p in enumerate(proof):
        _check_hash(f"proof[{i}]", p)
        if sn == 0:
            raise ProofError(f"inclusion proof has {len(proof)} hashes, more than the path")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof has {len(proof)} hashes, fewer than the path")
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> None:
    """Raise ProofError unless ``leaf`` is at ``index`` in the tree with this root."""
    got = root_from_inclusion_proof(index, size, leaf, proof)
    if got != expected_root:
        raise ProofError(
            f"inclusion proof for index {index} in size {size} gives root {got.hex()[:16]},"
            f" expected {expected_root.hex()[:16]}"
        )


def verify_consistency(
    old: int, new: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Raise ProofError unless the tree of size ``new`` extends the one of size ``old``."""
    if old < 0 or new < old:
        raise ProofError(f"size went from {old} to {new}: a log never shrinks")
    if old == new:
        if proof:
            raise ProofError("equal sizes need an empty consistency proof")
        if old == 0 and old_root != EMPTY_ROOT:
            raise ProofError("the root of an empty tree is SHA-256 of nothing")
        if old_root != new_root:
            raise ProofError(f"two different roots for size {old}")
        return
    if old == 0:
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if not proof:
        raise ProofError(f"empty consistency proof from {old} to {new}")
    for i, p in enumerate(proof):
        _check_hash(f"proof[{i}]", p)
    path = list(proof)
    if old & (old - 1) == 0:  # old tree is a complete subtree of the new one
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the path")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the path")
    if fr != old_root:
        raise ProofError(f"consistency proof does not reproduce the root of size {old}")
    if sr != new_root:
        raise ProofError(f"consistency proof does not reproduce the root of size {new}")


class MemoryTree:
    """Every complete subtree over a list of leaf hashes, in memory (2n hashes).

    For verifiers and tests that hold the entries themselves; ``subtree`` is a
    ``SubtreeAccessor`` for the proof functions above.
    """

    def __init__(self, leaves: Iterable[bytes]) -> None:
        level = list(leaves)
        self.levels: list[list[bytes]] = [level]
        while len(level) > 1:
            level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            self.levels.append(level)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def subtree(self, level: int, index: int) -> bytes:
        try:
            return self.levels[level][index]
        except IndexError:
            raise ValueError(f"no complete subtree (level {level}, index {index})") from None

    def root(self, size: int | None = None) -> bytes:
        return root(self.size if size is None else size, self.subtree)


class Frontier:
    """The right edge of a growing tree: one complete-subtree hash per set bit of the size.

    Appending is amortised O(1) hashes; ``root()`` folds O(log n) of them.
    ``on_node(level, index, hash)`` sees every complete subtree as it forms
    (level 0 = the leaf itself), which is how a log stores its nodes.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(hashes) != size.bit_count():
            raise ValueError(f"a frontier of size {size} has {size.bit_count()} hashes")
        self._size = size
        # Largest subtree first, as complete_subtrees(0, size) orders them.
        self._hashes = list(hashes)

    @classmethod
    def load(cls, size: int, subtree: SubtreeAccessor) -> Frontier:
        return cls(size, [subtree(lv, ix) for lv, ix in complete_subtrees(0, size)])

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def copy(self) -> Frontier:
        return Frontier(self._size, self._hashes)

    def append(self, leaf: bytes, on_node: Callable[[int, int, bytes], None] | None = None) -> None:
        """Add one leaf hash."""
        index = self._size
        h = leaf
        if on_node is not None:
            on_node(0, index, h)
        bits, level = index, 0
        while bits & 1:
            h = node_hash(self._hashes.pop(), h)
            bits >>= 1
            level += 1
            if on_node is not None:
                on_node(level, index >> level, h)
        self._hashes.append(h)
        self._size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        if not self._hashes:
            return EMPTY_ROOT
        acc = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            acc = node_hash(h, acc)
        return acc
