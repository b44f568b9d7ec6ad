"""The key log on either backend: events queued by ``nodes enroll``/``revoke``
(in the SQLite file or the shared PostgreSQL) are polled, logged once through
the ledger store, and not logged again by a collector that starts later."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from collector.nodes.keyadmin import revoke_node
from collector.nodes.keylog import KeyLog
from collector.nodes.registry import Registry, enroll
from collector.store import open_store
from collector.store.sequencer import StoreLedger
from collector.store.sql import Location
from protos import keylog
from protos.keys import PrivateKey
from tests.pg_support import BACKENDS, backend_location


@pytest.fixture(params=BACKENDS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    return backend_location(request, tmp_path)


async def _settle(ledger: StoreLedger, size: int) -> None:
    for _ in range(500):
        if ledger.size >= size:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the ledger never reached {size} entries")


def test_events_are_logged_once_across_collectors(location: Location) -> None:
    collector_key = PrivateKey.generate()
    a, b = PrivateKey.generate(), PrivateKey.generate()
    enroll(location, "node-a", a.public)

    async def run_collector(then: list[str], expect: int) -> list[str]:
        """One collector's life: start, poll, log pending events; the payload
        types in the log at the end."""
        store = open_store(str(location))
        ledger = StoreLedger(store)
        registry = Registry(location)
        keys = KeyLog(location, ledger, registry, collector_key, poll_seconds=0.01)
        try:
            keys.poll()
            if "enroll-b" in then:
                enroll(location, "node-b", b.public)
                keys.poll()
            if "revoke-a" in then:
                revoke_node(location, "node-a", "stolen")
                keys.poll()
                assert registry.by_keyid(a.keyid) is None  # honoured at once
            await _settle(ledger, expect)
            return [e.payload_type for e in store.entries(0, store.size)]
        finally:
            keys.close()
            await ledger.close()  # closes the store too

    first = asyncio.run(run_collector(["enroll-b"], 2))
    assert first == [keylog.ENROLMENT_TYPE, keylog.ENROLMENT_TYPE]
    # A second collector (a restart, or a standby taking over) logs only what is new.
    second = asyncio.run(run_collector(["revoke-a"], 3))
    assert second == [keylog.ENROLMENT_TYPE, keylog.ENROLMENT_TYPE, keylog.REVOCATION_TYPE]
