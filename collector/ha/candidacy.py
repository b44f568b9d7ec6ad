"""A collector's candidacy for the lead on a shared PostgreSQL: its ledger and elector.

``open_candidacy`` opens the leader lease (``[ha] candidate``,
``leader_lease_seconds``), makes one election attempt (so a lone collector
starts as the leader), opens the ``PgStore`` and the ``StoreLedger`` fenced
by the elector's term, and registers the ledger as the elector's listener:
losing the lead stops appends at once, gaining it re-reads the store before
the first append. ``collector.server`` builds everything else on top of
this ledger exactly as on SQLite; ``elector.start()`` is left to it, once
every listener is registered.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from collector.config import CollectorConfig
from collector.ha.elector import Elector
from collector.ha.leader import LeaderLease
from collector.store.pg_store import PgStore
from collector.store.sequencer import StoreLedger
from protos.errors import LedgerUnavailableError


@dataclass
class HaParts:
    """The election side of a collector on PostgreSQL."""

    lease: LeaderLease
    elector: Elector
    store: PgStore
    url: str


async def open_candidacy(config: CollectorConfig) -> tuple[HaParts, StoreLedger]:
    """Campaign once and open the fenced ledger; raises ConfigError on a bad
    URL file and LedgerUnavailableError when the database cannot be reached."""
    config.check_failover()
    url = config.database_url()
    ha = config.ha
    try:
        lease = LeaderLease(url, ha.candidate, lease_seconds=ha.leader_lease_seconds)
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())  # psycopg's message spans lines: one line
        where = config.ledger_name()
        raise LedgerUnavailableError(f"cannot reach the ledger at {where}: {reason}") from exc
    elector = Elector(lease, renew_seconds=ha.renew_seconds)
    try:
        await elector.step()
        store = PgStore(url)
    except BaseException:
        await elector.stop(resign=True)
        lease.close()
        raise
    ledger = StoreLedger(
        store,
        term=elector.current_term,
        retry_min_seconds=config.ledger_retry_min_seconds,
        retry_max_seconds=max(
            config.ledger_retry_min_seconds, min(config.ledger_retry_max_seconds, ha.renew_seconds)
        ),
    )
    elector.add_listener(ledger.leadership_changed)
    return HaParts(lease, elector, store, url), ledger
