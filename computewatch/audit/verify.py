"""``audit verify``: re-check a local copy from scratch, trusting only public keys.

Every checkpoint note is verified under the collector key; checkpoints of one
size must agree (else ``split_view``, with the notes saved as evidence); a
later checkpoint may not be smaller (``checkpoint_shrank``); every entry's
signature and every node key's chain is checked; the entries must hash to
the root of every stored checkpoint (``rewritten_entry``, naming the range);
no index may be missing (``dropped_entry``); and the newest checkpoint must be
younger than the freshness bound (``stale_checkpoint``). Findings are
collected, not raised: the report names each one.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from computewatch.audit.entries import EntryChecker
from computewatch.audit.rotations import collector_rotations, key_for_size
from computewatch.audit.store import LocalStore
from computewatch.audit.trust import Trust
from protos import checkpoint as cpmod
from protos import dsse, merkle
from protos.errors import (
    CheckpointError,
    CheckpointShrankError,
    DroppedEntryError,
    Error,
    RewrittenEntryError,
    SplitViewError,
    StaleCheckpointError,
)

log = logging.getLogger(__name__)

NANOS = 1_000_000_000
_CHUNK = 1024


@dataclass(frozen=True)
class Finding:
    reason: str
    message: str


@dataclass
class VerifyReport:
    entries: int = 0
    checkpoints: int = 0
    signers: int = 0
    latest: cpmod.Checkpoint | None = None
    findings: list[Finding] = field(default_factory=list)
    evidence: list[Path] = field(default_factory=list)
    suppressed: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings

    def add(self, exc: Error, limit: int) -> None:
        if len(self.findings) < limit:
            self.findings.append(Finding(exc.reason, str(exc)))
        else:
            self.suppressed += 1


def _span(first: int, last: int) -> str:
    return f"entry {first} is" if first == last else f"entries {first}..{last} are"


def _authenticate_chunk(
    checker: EntryChecker, chunk: Sequence[tuple[int, bytes]]
) -> list[dsse.Verified | Error]:
    out: list[dsse.Verified | Error] = []
    for idx, data in chunk:
        try:
            out.append(checker.authenticate(idx, data))
        except Error as exc:
            out.append(exc)
    return out


def _authenticated(
    checker: EntryChecker, entries: Iterator[tuple[int, bytes]], threads: int
) -> Iterator[tuple[int, bytes, dsse.Verified | Error]]:
    """Entries with their signature check, verified ``threads`` chunks at a time."""
    chunks = iter(lambda: list(itertools.islice(entries, _CHUNK)), [])
    if threads <= 1:
        for chunk in chunks:
            yield from (
                (i, d, r)
                for (i, d), r in zip(chunk, _authenticate_chunk(checker, chunk), strict=True)
            )
        return
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="verify") as pool:
        window: list[
            tuple[list[tuple[int, bytes]], concurrent.futures.Future[list[dsse.Verified | Error]]]
        ] = []
        for chunk in chunks:
            window.append((chunk, pool.submit(_authenticate_chunk, checker, chunk)))
            if len(window) > 2 * threads:
                done_chunk, fut = window.pop(0)
                yield from ((i, d, r) for (i, d), r in zip(done_chunk, fut.result(), strict=True))
        for done_chunk, fut in window:
            yield from ((i, d, r) for (i, d), r in zip(done_chunk, fut.result(), strict=True))


def _checkpoints(
    store: LocalStore, trust: Trust, extra: Sequence[bytes], report: VerifyReport, limit: int
) -> tuple[list[cpmod.SignedCheckpoint], list[cpmod.SignedCheckpoint]]:
    """Valid stored and valid extra checkpoints; each invalid one is a finding."""
    origin = trust.origin or store.origin
    out: tuple[list[cpmod.SignedCheckpoint], list[cpmod.SignedCheckpoint]] = ([], [])
    stored = [c.note for c in store.checkpoints()]
    rotations = collector_rotations(store, trust)
    for which, notes in enumerate((stored, extra)):
        for note in notes:
            try:
                size = cpmod.parse_unverified(note).size
                key = key_for_size(trust.collector, rotations, size)
                signed = cpmod.open_note(note, [key], origin=origin)
            except CheckpointError as exc:
                report.add(exc, limit)
                continue
            origin = origin or signed.checkpoint.origin
            out[which].append(signed)
    return out


def _compare_checkpoints(
    store: LocalStore, cps: Sequence[cpmod.SignedCheckpoint], report: VerifyReport, limit: int
) -> None:
    by_size: dict[int, dict[bytes, cpmod.SignedCheckpoint]] = defaultdict(dict)
    for cp in cps:
        by_size[cp.size].setdefault(cp.root, cp)
    for size, roots in sorted(by_size.items()):
        if len(roots) > 1:
            notes = [c.note for c in roots.values()]
            folder = store.write_evidence(
                SplitViewError.reason, notes, f"{len(notes)} signed roots for tree size {size}"
            )
            report.evidence.append(folder)
            report.add(
                SplitViewError(
                    f"{len(roots)} checkpoints of size {size} with different roots;"
                    f" signed notes saved in {folder}"
                ),
                limit,
            )
    biggest: cpmod.SignedCheckpoint | None = None
    for cp in cps:
        if biggest is not None and cp.size < biggest.size:
            folder = store.write_evidence(
                CheckpointShrankError.reason,
                [biggest.note, cp.note],
                f"size {biggest.size} was signed, then size {cp.size} later",
            )
            report.evidence.append(folder)
            report.add(
                CheckpointShrankError(
                    f"checkpoint of size {cp.size} (timestamp {cp.timestamp_unix_nanos}) came"
                    f" after one of size {biggest.size} ({biggest.timestamp_unix_nanos});"
                    f" notes saved in {folder}"
                ),
                limit,
            )
        if biggest is None or cp.size > biggest.size:
            biggest = cp


def verify_store(
    store: LocalStore,
    trust: Trust,
    *,
    now_ns: int,
    max_age_seconds: float | None = None,
    extra_checkpoints: Sequence[bytes] = (),
    threads: int = 2,
    max_findings: int = 100,
) -> VerifyReport:
    """Check everything in ``store``; ``extra_checkpoints`` are notes seen elsewhere."""
    report = VerifyReport()
    stored, extra = _checkpoints(store, trust, extra_checkpoints, report, max_findings)
    cps = sorted(stored + extra, key=lambda s: (s.timestamp_unix_nanos, s.size))
    report.checkpoints = len(cps)
    _compare_checkpoints(store, cps, report, max_findings)
    stored_sizes = {c.size for c in stored}
    roots_at: dict[int, set[bytes]] = defaultdict(set)
    for cp in cps:
        roots_at[cp.size].add(cp.root)
    checkpoint_sizes = sorted(roots_at)

    checker = EntryChecker(trust)
    frontier = merkle.Frontier()
    next_cp = 0
    good_size = 0  # largest checkpointed size the entries matched
    mismatches = 0
    broken_at: int | None = None
    signers: set[str] = set()
    for idx, data, result in _authenticated(checker, store.iter_entries(), threads):
        if broken_at is None and idx != frontier.size:
            broken_at = frontier.size
            report.add(
                DroppedEntryError(
                    f"{_span(frontier.size, idx - 1)} missing from the copy;"
                    " the tree cannot be checked beyond"
                ),
                max_findings,
            )
        report.entries += 1
        try:
            verified = checker.settle(idx, data, result)
            signers.add(verified.signer.keyid)
            checker.advance(idx, verified)
        except Error as exc:
            report.add(exc, max_findings)
        if broken_at is not None:
            continue
        frontier.append(merkle.leaf_hash(data))
        while next_cp < len(checkpoint_sizes) and checkpoint_sizes[next_cp] == frontier.size:
            size = checkpoint_sizes[next_cp]
            if frontier.root() in roots_at[size] and len(roots_at[size]) == 1:
                good_size = size
            elif frontier.root() not in roots_at[size]:
                mismatches += 1
                if mismatches == 1:
                    report.add(
                        RewrittenEntryError(
                            f"entries {good_size}..{size - 1} do not hash to the signed root"
                            f" of checkpoint {size}: an entry in that range was rewritten,"
                            " removed or reordered"
                        ),
                        max_findings,
                    )
            next_cp += 1
    report.signers = len(signers)
    if mismatches > 1:
        report.add(
            RewrittenEntryError(f"{mismatches - 1} later checkpoints do not match either"),
            max_findings,
        )
    have = frontier.size if broken_at is None else broken_at
    beyond = [s for s in stored_sizes if s > have]
    if beyond and broken_at is None:
        report.add(
            DroppedEntryError(
                f"checkpoint {max(beyond)} covers entries the copy lacks (it has {have})"
            ),
            max_findings,
        )
    if cps:
        latest = max(cps, key=lambda c: (c.timestamp_unix_nanos, c.size))
        report.latest = latest.checkpoint
        covered = max(stored_sizes, default=0)
        if report.entries > covered and stored_sizes:
            report.add(
                RewrittenEntryError(
                    f"{report.entries - covered} entries after index {covered - 1} are not"
                    " covered by any checkpoint: they were added to the copy afterwards"
                ),
                max_findings,
            )
        if max_age_seconds is not None:
            age = (now_ns - latest.timestamp_unix_nanos) / NANOS
            if age > max_age_seconds:
                report.add(
                    StaleCheckpointError(
                        f"the newest checkpoint (size {latest.size}) is {age:.3g} s old;"
                        f" the bound is {max_age_seconds:g} s: the log may be frozen"
                    ),
                    max_findings,
                )
    elif report.entries:
        report.add(CheckpointError("the copy has entries but no checkpoint"), max_findings)
    elif max_age_seconds is not None:
        report.add(StaleCheckpointError("the copy holds no checkpoint at all"), max_findings)
    return report
