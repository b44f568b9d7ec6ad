"""Collector address lists and the ring the agent rotates through."""

from __future__ import annotations

import asyncio

import pytest

from agent.targets import TargetRing, parse_targets, split_host_port


def test_parse_targets_splits_trims_and_names_a_bad_entry() -> None:
    assert parse_targets(" a:1 ,b.example:7443,[::1]:9") == ("a:1", "b.example:7443", "[::1]:9")
    assert split_host_port("[::1]:9") == ("::1", 9)
    for bad, name in (("a:1,b", "'b'"), ("a:0", "'a:0'"), ("a:70000", "'a:70000'")):
        with pytest.raises(ValueError, match=name):
            parse_targets(bad)
    with pytest.raises(ValueError, match="no collector address"):
        parse_targets(" , ")


def test_the_ring_rotates_and_says_when_a_round_is_over() -> None:
    ring = TargetRing(["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"])
    seen = [ring.current]
    wraps = []
    for _ in range(6):
        wraps.append(ring.advance())
        seen.append(ring.current)
    assert seen == ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"] * 2 + ["10.0.0.1:1"]
    assert wraps == [False, False, True, False, False, True]
    single = TargetRing(["10.0.0.1:1"])
    assert single.advance() is True
    assert single.current == "10.0.0.1:1"


def test_resolve_keeps_literals_and_expands_names_with_their_authority() -> None:
    ring = TargetRing(["127.0.0.1:5", "localhost:6"])

    async def go() -> None:
        await ring.resolve()

    asyncio.run(go())
    addresses = ring.addresses
    assert addresses[0] == "127.0.0.1:5"
    assert ring.authority("127.0.0.1:5") is None
    rest = addresses[1:]
    if rest == ("localhost:6",):  # one address: the name stays, gRPC resolves it
        assert ring.authority("localhost:6") is None
    else:  # several: each is tried, with the name kept as the authority
        assert len(rest) >= 2
        assert all(a.endswith(":6") for a in rest)
        assert all(ring.authority(a) == "localhost:6" for a in rest)


def test_a_name_that_does_not_resolve_stays_as_written() -> None:
    ring = TargetRing(["no-such-host.invalid:7"])

    async def go() -> None:
        await ring.resolve()

    asyncio.run(go())
    assert ring.addresses == ("no-such-host.invalid:7",)
