"""Replay a recorded ledger against rule packs (a dry run: nothing is written).

Reports and capability evaluations are fed to a fresh ``Aggregator`` in log
order, with the time the collector received them; the engine is evaluated on
the recorded clock every ``tick_seconds``, as the collector would have. The
ledger only holds envelopes the collector verified when it accepted them, so
the replay parses without verifying again (``computewatch audit verify``
checks the log itself).

Long quiet stretches are not ticked through one second at a time: across a
gap the engine is evaluated at the first tick after it and at the last tick
before the next entry (enough for ``for`` durations and silence to show),
so the number of evaluations is bounded by twice the number of entries.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from collector.accounting.aggregate import Aggregator
from collector.rules.engine import RuleEngine
from collector.rules.model import Decision, RulePack
from collector.store.ledger import LedgerEntry, iter_entries
from collector.store.sql import DB_ERRORS, describe
from protos import dsse
from protos.computewatch.v1 import control_pb2, telemetry_pb2
from protos.errors import DatabaseError, Error, LogError

log = logging.getLogger(__name__)

# A ledger that cannot be read: the driver's error, raw (SQLite's cursor) or typed.
_READ_ERRORS: tuple[type[Exception], ...] = (*DB_ERRORS, DatabaseError)


@dataclass
class ReplayResult:
    decisions: list[Decision] = field(default_factory=list)
    entries: int = 0
    reports: int = 0
    evaluations: int = 0
    # Entries that could not be parsed or ingested, by error reason.
    skipped: Counter[str] = field(default_factory=Counter)
    # Entries of other kinds (directives, approvals, ...), by payload type.
    other: Counter[str] = field(default_factory=Counter)
    ticks: int = 0
    first_time: float | None = None
    last_time: float | None = None


class _Replayer:
    def __init__(self, engine: RuleEngine, tick_seconds: float) -> None:
        self.engine = engine
        self.tick = tick_seconds
        self.aggregator = Aggregator()
        self.result = ReplayResult()
        self.next_tick: float | None = None

    def evaluate(self, now: float) -> None:
        self.result.ticks += 1
        snap = self.aggregator.snapshot(now, self.engine.scopes)
        self.result.decisions.extend(self.engine.evaluate(snap))

    def advance(self, until: float) -> None:
        """Evaluate every tick boundary up to ``until``, skipping long gaps."""
        if self.next_tick is None:
            self.next_tick = until + self.tick
            return
        steps = math.floor((until - self.next_tick) / self.tick) + 1
        if steps <= 0:
            return
        if steps > 2:
            # A gap: the first tick after the last entry, then the last one before this.
            self.evaluate(self.next_tick)
            self.next_tick += (steps - 1) * self.tick
            steps = 1
        for _ in range(steps):
            self.evaluate(self.next_tick)
            self.next_tick += self.tick

    def ingest(self, entry: LedgerEntry) -> None:
        now = entry.received_unix_nanos / 1e9
        res = self.result
        res.entries += 1
        res.first_time = now if res.first_time is None else res.first_time
        res.last_time = now
        self.advance(now)
        if entry.payload_type not in (dsse.REPORT_TYPE, dsse.EVALUATION_TYPE):
            res.other[entry.payload_type] += 1
            return
        try:
            env = dsse.open_envelope(entry.data)
            if entry.payload_type == dsse.REPORT_TYPE:
                report = dsse.parse_message(telemetry_pb2.NodeReport, env.payload)
                self.aggregator.ingest(report, entry.index, now)
                res.reports += 1
            else:
                ev = dsse.parse_message(control_pb2.Evaluation, env.payload)
                self.aggregator.ingest_evaluation(ev.job_id, ev.evaluation, ev.score, entry.index)
                res.evaluations += 1
        except Error as exc:
            log.warning("replay: entry %d skipped: %s", entry.index, exc)
            res.skipped[exc.reason] += 1


def replay_entries(
    entries: Iterable[LedgerEntry], packs: Iterable[RulePack], *, tick_seconds: float = 1.0
) -> ReplayResult:
    """Replay ``entries`` (in log order) against ``packs``."""
    if not (math.isfinite(tick_seconds) and tick_seconds > 0):
        raise ValueError(f"tick_seconds must be > 0, got {tick_seconds!r}")
    replayer = _Replayer(RuleEngine(packs), tick_seconds)
    for entry in entries:
        replayer.ingest(entry)
    if replayer.next_tick is not None:
        # One last tick after the final entry, as the collector would have run.
        replayer.evaluate(replayer.next_tick)
    return replayer.result


def replay_ledger(
    location: Path | str, packs: Iterable[RulePack], *, tick_seconds: float = 1.0
) -> ReplayResult:
    """Replay the ledger at ``location`` (a SQLite file, or a database URL:
    ``collector.store.sql``), opened read-only."""
    if isinstance(location, Path) and not location.is_file():
        raise LogError(f"ledger {location} does not exist")
    try:
        return replay_entries(iter_entries(location), packs, tick_seconds=tick_seconds)
    except _READ_ERRORS as exc:
        raise LogError(f"cannot read ledger {describe(location)}: {exc}") from exc
