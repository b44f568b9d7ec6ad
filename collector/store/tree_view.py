"""The Merkle log as any collector reads it from the store (standbys included).

A standby does not write the tree, but it serves Audit: signed tree heads'
sizes and roots, inclusion and consistency proofs, straight from the
``merkle_node`` rows the leader committed (``collector.store.tree``).
``refresh()`` re-reads the committed size; every proof is computed from rows
at or below that size, so it never sees a half-written batch.
"""

from __future__ import annotations

from collector.store.interface import LedgerStore
from collector.store.merkle_log import node_pos
from protos import merkle
from protos.errors import LogError


class TreeView:
    """Read-only Merkle log over a ``LedgerStore``."""

    def __init__(self, store: LedgerStore) -> None:
        self._store = store
        self._head = (store.reload(), store.root())

    def refresh(self) -> int:
        """Re-read the committed tree (after the leader wrote more); the new size.
        Size and root change together (one assignment): a reader in another
        thread never sees one without the other."""
        size = self._store.reload()
        self._head = (size, self._store.root())
        return size

    @property
    def _size(self) -> int:
        return self._head[0]

    @property
    def size(self) -> int:
        return self._head[0]

    def snapshot(self) -> tuple[int, bytes]:
        return self._head

    def _subtree(self, level: int, index: int) -> bytes:
        h = self._store.merkle_node(node_pos(level, index))
        if h is None:
            raise LogError(f"merkle node (level {level}, index {index}) is missing")
        return h

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self._size:
            raise LogError(f"tree size {size} is beyond the committed size {self._size}")

    def root(self, size: int | None = None) -> bytes:
        head = self._head
        if size is None or size == head[0]:
            return head[1]
        self._check_size(size)
        return merkle.root(size, self._subtree)

    def leaf_hash(self, index: int) -> bytes:
        if not 0 <= index < self._size:
            raise LogError(f"index {index} is not below the tree size {self._size}")
        return self._subtree(0, index)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        self._check_size(size)
        if not 0 <= index < size:
            raise LogError(f"index {index} is not below the tree size {size}")
        return merkle.inclusion_proof(index, size, self._subtree)

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        self._check_size(new)
        if not 0 < old <= new:
            raise LogError(f"no consistency proof from size {old} to size {new}")
        return merkle.consistency_proof(old, new, self._subtree)
