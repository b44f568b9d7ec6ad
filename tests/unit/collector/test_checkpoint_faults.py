"""A checkpoint that cannot be stored (full disk) fails with the real error,
and the checkpointer keeps working once there is room again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from collector.store.checkpoints import Checkpointer
from collector.store.merkle_log import MerkleLog
from collector.store.sql import open_db
from protos.errors import DatabaseError
from protos.keys import PrivateKey

S = 1_000_000_000


def test_a_full_disk_keeps_the_real_error_and_the_last_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA journal_mode=WAL")
    tree = MerkleLog(writer)
    store = open_db(path)
    now = [1_700_000_000 * S]
    cps = Checkpointer(
        tree, PrivateKey.generate(), "computewatch.test/log", store, lambda: now[0],
        history_stride=1,
    )  # fmt: skip
    # The store's connection may not grow the file (SQLITE_FULL, as on a full
    # disk); SQLite then rolls the transaction back by itself.
    store.execute(f"PRAGMA max_page_count = {store.execute('PRAGMA page_count')[0][0]}")
    failure: DatabaseError | None = None
    for i in range(2000):  # each checkpoint row is kept (stride 1): pages run out
        writer.execute("BEGIN IMMEDIATE")
        tree.append_leaves(writer, tree.size, [b"entry %d" % i])
        writer.execute("COMMIT")
        tree.committed()
        now[0] += S
        try:
            cps.sign_now()
        except DatabaseError as exc:  # the driver's error, typed (collector.store.sql)
            failure = exc
            break
    assert failure is not None, "the store never ran out of pages"
    assert "full" in str(failure)  # not "cannot rollback - no transaction is active"
    assert isinstance(failure.__cause__, sqlite3.Error)
    assert not store.in_transaction
    latest = cps.latest()
    assert latest is not None
    assert latest.size == tree.size - 1
    store.execute("PRAGMA max_page_count = 1073741824")
    now[0] += S
    assert cps.sign_now().size == tree.size
