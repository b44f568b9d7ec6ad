"""Collector key rotations, found before the checkpoints are checked.

A checkpoint of tree size ``n`` is signed by the collector key current after
entries ``0..n-1``: the key the regulator was given, or the new key of the
last ``CollectorKeyRotation`` entry below ``n`` (each rotation signed by the
key it replaces and by the new key). The entries are scanned for rotations
first, because the checkpoints are needed while the entries are hashed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from computewatch.audit.store import LocalStore
from computewatch.audit.trust import Trust
from protos import dsse, keylog
from protos.computewatch.v1 import keylog_pb2
from protos.errors import Error
from protos.keys import PublicKey

log = logging.getLogger(__name__)

_MARK = b"CollectorKeyRotation"


def collector_rotations(store: LocalStore, trust: Trust) -> list[tuple[int, PublicKey]]:
    """(index, new key) of each valid rotation, in log order. An invalid one is
    skipped here; the entry check reports it."""
    current = trust.collector
    out: list[tuple[int, PublicKey]] = []
    for idx, data in store.iter_entries():
        if _MARK not in data:
            continue
        try:
            env = dsse.open_envelope(data, max_bytes=len(data))
            if env.payload_type != keylog.ROTATION_TYPE:
                continue
            msg = dsse.parse_message(keylog_pb2.CollectorKeyRotation, env.payload)
            old = keylog.public_key(msg.old_public_key, "old_public_key")
            new = keylog.public_key(msg.new_public_key, "new_public_key")
            if old.keyid != current.keyid:
                continue
            keylog.verify_both(data, old, new)
        except Error as exc:
            log.debug("entry %d: not a valid rotation (%s)", idx, exc)
            continue
        out.append((idx, new))
        current = new
    return out


def key_for_size(
    initial: PublicKey, rotations: Sequence[tuple[int, PublicKey]], size: int
) -> PublicKey:
    key = initial
    for index, new in rotations:
        if index < size:
            key = new
    return key


def rotation_candidates(entries: Sequence[bytes]) -> list[PublicKey]:
    """New collector keys named by rotation entries among ``entries``,
    unverified: the entry check decides whether they count."""
    out: list[PublicKey] = []
    for data in entries:
        if _MARK not in data:
            continue
        try:
            env = dsse.open_envelope(data, max_bytes=len(data))
            if env.payload_type == keylog.ROTATION_TYPE:
                msg = dsse.parse_message(keylog_pb2.CollectorKeyRotation, env.payload)
                out.append(keylog.public_key(msg.new_public_key, "new_public_key"))
        except Error:
            continue
    return out
