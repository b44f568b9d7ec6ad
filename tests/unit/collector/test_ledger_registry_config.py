"""Ledger group commit, enrolment rules, and config errors that name the place."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from collector.config import CollectorConfig, load_collector_config
from collector.nodes.registry import Registry, enroll, list_nodes
from collector.store.ledger import Entry, Ledger, iter_entries
from collector.store.sql import Location
from protos.errors import ConfigError, LedgerUnavailableError
from protos.keys import PrivateKey
from tests.pg_support import BACKENDS, backend_location


@pytest.fixture(params=BACKENDS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    """The collector's database: a SQLite file, or a PostgreSQL database."""
    return backend_location(request, tmp_path)


async def until_writable(ledger: Ledger) -> None:
    for _ in range(500):
        if ledger.writable:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the ledger never became writable again")


def test_group_commit_preserves_order_and_chain_heads(tmp_path: Path) -> None:
    path = tmp_path / "l.db"

    async def scenario() -> list[int]:
        ledger = Ledger(path, max_batch=7)
        futs = [
            ledger.append(
                Entry(
                    bytes([i]), "t", node_id="n", keyid="k", sequence=i + 1, digest=bytes([i]) * 32
                )
            )
            for i in range(50)
        ]
        indices = list(await asyncio.gather(*futs))
        assert ledger.batches >= 50 // 7
        heads = ledger.chain_heads()
        assert heads["k"].last_sequence == 50
        assert heads["k"].last_index == 49
        assert ledger.report_index("k", 10) == 9
        assert ledger.report_bytes("k", 10) == bytes([9])
        await ledger.close()
        return indices

    assert asyncio.run(scenario()) == list(range(50))
    assert [e.data for e in iter_entries(path)] == [bytes([i]) for i in range(50)]
    assert [e.index for e in iter_entries(path, start=45)] == [45, 46, 47, 48, 49]


def test_duplicate_chain_link_fails_the_whole_batch_and_reports_it(tmp_path: Path) -> None:
    path = tmp_path / "l.db"

    async def scenario() -> None:
        ledger = Ledger(path)
        await ledger.append(Entry(b"a", "t", "n", "k", 1, b"\x01" * 32))
        # A second row for (k, 1) violates the unique chain index: nothing is written.
        with pytest.raises(Exception, match="ledger write failed"):
            await ledger.append(Entry(b"b", "t", "n", "k", 1, b"\x02" * 32))
        assert ledger.size == 1
        assert ledger.write_errors["constraint"] == 1
        assert sum(ledger.write_errors.values()) == 1
        await ledger.close()

    asyncio.run(scenario())
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM log").fetchone()[0] == 1


def test_enrolment_refuses_shared_keys_and_silent_rekeying(location: Location) -> None:
    path = location
    k1, k2 = PrivateKey.generate(), PrivateKey.generate()
    enroll(path, "node-1", k1.public)
    enroll(path, "node-1", k1.public)  # idempotent
    with pytest.raises(ConfigError, match="already enrolled for node node-1"):
        enroll(path, "node-2", k1.public)
    with pytest.raises(ConfigError, match="--replace"):
        enroll(path, "node-1", k2.public)
    enroll(path, "node-1", k2.public, replace=True)
    assert [(n.node_id, n.key.keyid) for n in list_nodes(path)] == [("node-1", k2.keyid)]
    with pytest.raises(ConfigError, match="not valid"):
        enroll(path, "bad id with spaces", k1.public)


def test_registry_rereads_on_a_miss(location: Location) -> None:
    path = location
    enroll(path, "a", PrivateKey.generate().public)
    clock = [0.0]
    reg = Registry(path, reload_interval=1.0, monotonic=lambda: clock[0])
    late = PrivateKey.generate()
    enroll(path, "b", late.public)
    assert reg.by_keyid(late.keyid) is None  # within the rate limit
    clock[0] = 2.0
    node = reg.by_keyid(late.keyid)
    assert node is not None
    assert node.node_id == "b"


def test_config_file_env_and_flag_precedence_and_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[collector]\nledger = "/var/l.db"\nkey = "/k"\nquorum = 1\ninterval_seconds = 2\n'
        "insecure_plaintext = true\n"
    )
    c = load_collector_config(cfg, {"interval_seconds": "5", "listen": None})
    assert isinstance(c, CollectorConfig)
    assert c.interval_seconds == 5.0  # the flag wins over the file
    assert c.ledger == Path("/var/l.db")
    assert c.listen == "127.0.0.1:7443"  # default when neither says

    cfg.write_text('[collector]\nledger = "/l"\nkey = "/k"\nquorum = "two"\n')
    with pytest.raises(
        ConfigError, match=r"c\.toml:4 \[collector\]: key 'quorum': expected an integer"
    ):
        load_collector_config(cfg)
    cfg.write_text('[collector]\nledger = "/l"\nkey = "/k"\nqourum = 2\n')
    with pytest.raises(ConfigError, match="unknown key.*qourum"):
        load_collector_config(cfg)
    cfg.write_text('[collector]\nkey = "/k"\n')
    with pytest.raises(ConfigError, match="missing required key.*ledger"):
        load_collector_config(cfg)
    cfg.write_text("[collector\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_collector_config(cfg)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_collector_config(None, {"ledger": "/l", "key": "/k", "listen": "nope"})
    with pytest.raises(ConfigError, match="could never be lifted"):
        load_collector_config(
            None,
            {
                "ledger": "/l",
                "key": "/k",
                "quorum": 3,
                "authority_keys": ["/a", "/b"],
                "insecure_plaintext": True,
            },
        )


def test_a_fraction_for_an_integer_key_is_an_error_not_a_truncation(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[collector]\nledger = "/l"\nkey = "/k"\nquorum = 1.5\n')
    with pytest.raises(ConfigError, match="'quorum': expected an integer, got 1.5"):
        load_collector_config(cfg)
    cfg.write_text(
        '[collector]\nledger = "/l"\nkey = "/k"\nquorum = 2.0\ninsecure_plaintext = true\n'
    )
    assert load_collector_config(cfg).quorum == 2


def test_a_replaced_key_stops_being_trusted_without_a_miss(location: Location) -> None:
    # Re-keying a node (its old key lost or stolen) must revoke the old key in a
    # running collector even if no unknown key ever arrives to trigger a reread.
    path = location
    old, new = PrivateKey.generate(), PrivateKey.generate()
    enroll(path, "a", old.public)
    clock = [0.0]
    reg = Registry(path, reload_interval=1.0, max_age=10.0, monotonic=lambda: clock[0])
    assert reg.by_keyid(old.keyid) is not None
    enroll(path, "a", new.public, replace=True)
    clock[0] = 5.0
    assert reg.by_keyid(old.keyid) is not None  # still within max_age
    clock[0] = 11.0
    assert reg.by_keyid(old.keyid) is None
    node = reg.by_keyid(new.keyid)
    assert node is not None
    assert node.node_id == "a"


def test_entries_queued_behind_a_failed_write_are_refused_too(tmp_path: Path) -> None:
    """A report queued after a failed one may chain onto it: it must not commit."""
    path = tmp_path / "l.db"

    async def scenario() -> None:
        ledger = Ledger(path, max_batch=1)
        await ledger.append(Entry(b"a", "t", "n", "k", 1, b"\x01" * 32))
        bad = ledger.append(Entry(b"b", "t", "n", "k", 1, b"\x02" * 32))  # duplicate link
        behind = ledger.append(Entry(b"c", "t", "n", "k", 2, b"\x03" * 32))
        results = await asyncio.gather(bad, behind, return_exceptions=True)
        assert all(isinstance(r, Exception) for r in results), results
        assert ledger.size == 1
        # Refused at once until the recovery probe re-read the disk ...
        assert not ledger.writable
        with pytest.raises(LedgerUnavailableError):
            await ledger.append(Entry(b"d", "t", "n", "k", 2, b"\x04" * 32))
        await until_writable(ledger)
        # ... then the ledger keeps working.
        assert await ledger.append(Entry(b"d", "t", "n", "k", 2, b"\x04" * 32)) == 1
        await ledger.close()

    asyncio.run(scenario())
