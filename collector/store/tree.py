"""The Merkle tree's rows for a batch, the same for every backend.

``collector.store.merkle_log`` stores each complete subtree's hash at its post-order
position (``merkle_node(pos, hash)``); ``tree_rows`` produces exactly those
rows for a batch of leaves, so a tree written by any backend is the one
``MerkleLog`` and ``computewatch audit verify`` read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from collector.store.ledger_store import Entry
from collector.store.merkle_log import node_count, size_for_node_count
from protos import merkle
from protos.errors import LogError


def tree_rows(
    frontier: merkle.Frontier, first: int, datas: Sequence[bytes]
) -> tuple[list[tuple[int, bytes]], merkle.Frontier]:
    """(rows to insert, the frontier after them) for leaves ``first...``."""
    if first != frontier.size:
        raise LogError(f"append at index {first}, but the tree has {frontier.size} leaves")
    pos = node_count(frontier.size)
    rows: list[tuple[int, bytes]] = []
    hashes = list(frontier.hashes)
    n = frontier.size
    sha = hashlib.sha256
    for data in datas:
        h = sha(b"\x00" + data).digest()
        rows.append((pos, h))
        pos += 1
        bits = n
        while bits & 1:
            h = sha(b"\x01" + hashes.pop() + h).digest()
            rows.append((pos, h))
            pos += 1
            bits >>= 1
        hashes.append(h)
        n += 1
    return rows, merkle.Frontier(n, hashes)


def batch_rows(
    frontier: merkle.Frontier, first: int, entries: Sequence[Entry], now_ns: int
) -> tuple[
    list[tuple[Any, ...]],
    list[tuple[str, str, int, bytes, int]],
    list[tuple[int, bytes]],
    merkle.Frontier,
]:
    """(log rows, chain-head rows, merkle_node rows, the frontier after them) for
    ``entries`` appended at ``first``; a key's head is its last entry in the batch."""
    rows: list[tuple[Any, ...]] = []
    heads: dict[str, tuple[str, int, bytes, int]] = {}
    for i, e in enumerate(entries):
        idx = first + i
        rows.append((idx, e.data, e.payload_type, e.node_id, e.keyid, e.sequence, now_ns))
        if e.keyid is not None and e.sequence is not None and e.digest is not None:
            heads[e.keyid] = (e.node_id or "", e.sequence, e.digest, idx)
    nodes, after = tree_rows(frontier, first, [e.data for e in entries])
    return rows, [(k, *v) for k, v in heads.items()], nodes, after


def load_frontier(node_rows: int, node: Callable[[int], bytes | None]) -> merkle.Frontier:
    """The committed frontier from the row count and a point reader."""
    size = size_for_node_count(node_rows)

    def subtree(level: int, index: int) -> bytes:
        from collector.store.merkle_log import node_pos

        h = node(node_pos(level, index))
        if h is None:
            raise LogError(f"merkle node (level {level}, index {index}) is missing")
        return h

    return merkle.Frontier.load(size, subtree)
