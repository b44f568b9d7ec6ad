"""Everything the collector persists, behind one storage interface.

The ledger (``ledger``: every accepted envelope in order, group commit,
fail-stop then re-sync; ``ledger_store``: its SQLite schema, connections and
row types; ``sqlite_faults``: what a failed write means), the Merkle log over
it (``merkle_log``, with ``tree`` and ``tree_view`` for any backend) and its
signed checkpoints (``checkpoints``). ``LedgerStore`` (``interface``) is what
a sequencer (``sequencer``) needs of a database: the log, the per-key chain
heads, the Merkle tree's rows, evidence and its counters, all written in one
transaction per batch. ``SqliteStore`` keeps the embedded single-host file;
``PgStore`` puts the same rows in PostgreSQL so several collectors can share
them, with a leader row whose term fences every write. ``migrations``
versions both schemas and is checked at start; ``copy`` moves a SQLite ledger
into PostgreSQL. ``open_store(url)`` picks the backend from the ledger URL.

Imports no other part of the collector: every other package builds on it.
"""

from collector.store.interface import LedgerStore, open_store
from collector.store.migrations import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "LedgerStore", "open_store"]
