"""Feed committed ledger entries, in log order, to what rebuilds state from them.

A collector's in-memory state is a function of the log: the aggregates (from
reports), the directive book and the Control submissions (counters, directives
in force, approvals, manual-halt nonces). ``LogFollower`` keeps one cursor and
hands every entry past it to the consumers registered for its payload type:

- at start, from index 0 (a restart, on either backend);
- whenever this collector (re)gains the lead on PostgreSQL, before it issues
  anything: what the previous leader committed comes first;
- on every tick while a standby, so its Status stays current and a takeover
  has only the last tick's entries left to read.

Consumers must be idempotent per entry (``Counters.observe`` keeps the
maximum, records are keyed by id, the aggregates skip reports they have).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass

from collector.store.ledger import Ledger, LedgerEntry

log = logging.getLogger(__name__)

PAGE = 1024


@dataclass(frozen=True)
class _Consumer:
    name: str
    types: frozenset[str]
    feed: Callable[[LedgerEntry], None]


class LogFollower:
    """One cursor over ``ledger``'s committed entries.

    While the ledger is writable (this collector sequences it) the follower
    reads up to the ledger's size, and ``committed`` (a commit listener) moves
    the cursor past what this collector wrote itself: that was fed live. While
    it is not (a standby, or a SQLite ledger after a failed write) it reads
    pages until one comes back short: every row it sees was committed whole
    by the leader."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._consumers: list[_Consumer] = []
        self.cursor = 0
        self.fed: Counter[str] = Counter()
        ledger.add_commit_listener(self.committed)

    def committed(self, size: int) -> None:
        """A commit listener: this collector's own appends were fed as they came."""
        if self._ledger.writable:
            self.cursor = max(self.cursor, size)

    def ledger_state(self, writable: bool) -> None:
        """A state listener: on (re)gaining the lead, read what others committed
        before anything is issued (register it before the stop protocol's)."""
        if writable:
            self.catch_up()

    def add(self, name: str, types: Collection[str], feed: Callable[[LedgerEntry], None]) -> None:
        """``feed(entry)`` for every entry whose payload type is in ``types``."""
        self._consumers.append(_Consumer(name, frozenset(types), feed))

    def catch_up(self) -> int:
        """Feed every entry committed past the cursor; the number fed."""
        limit = self._ledger.size if self._ledger.writable else None
        fed = 0
        while limit is None or self.cursor < limit:
            end = self.cursor + PAGE if limit is None else min(limit, self.cursor + PAGE)
            page = self._ledger.entries(self.cursor, end)
            for entry in page:
                fed += self._feed(entry)
            if not page:
                break
            self.cursor = page[-1].index + 1
            if self.cursor < end:  # a short page: the end of what is committed
                break
        return fed

    def _feed(self, entry: LedgerEntry) -> int:
        fed = 0
        for consumer in self._consumers:
            if entry.payload_type in consumer.types:
                try:
                    consumer.feed(entry)
                except Exception:
                    log.exception("%s: entry %d not replayed", consumer.name, entry.index)
                    continue
                self.fed[consumer.name] += 1
                fed += 1
        return fed
