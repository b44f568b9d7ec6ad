"""Ledger storage backends behind one interface (issue 12, collectors in HA).

``LedgerStore`` (``interface``) is what a sequencer needs of a database: the
log, the per-key chain heads, the Merkle tree's rows, evidence and its
counters, all written in one transaction per batch. ``SqliteStore`` keeps the
embedded single-host file (the schema of ``collector.ledger_store``);
``PgStore`` puts the same rows in PostgreSQL so several collectors can share
them, with a ``leader`` row whose term fences every write (``leader``).
``open_store(url)`` picks the backend from the collector's ledger URL.
"""

from collector.store.interface import LedgerStore, open_store
from collector.store.migrations import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "LedgerStore", "open_store"]
