"""Batched signature checks on a real thread pool, with real keys."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from collector.telemetry.batchverify import BatchVerifier
from protos import dsse
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import SignatureError, UnknownKeyError
from protos.keys import PrivateKey


def _envelopes(key: PrivateKey, n: int) -> list[bytes]:
    return [dsse.seal(telemetry_pb2.NodeReport(node_id="n", sequence=i + 1), key) for i in range(n)]


def _tamper(data: bytes) -> bytes:
    env = dsse.open_envelope(data)
    env.payload = env.payload + b"\x00"
    return env.SerializeToString()


def test_envelopes_read_together_share_a_few_hops() -> None:
    key = PrivateKey.generate()
    trusted = {key.keyid: key.public}
    datas = _envelopes(key, 50)

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as pool:
            batcher = BatchVerifier(pool, lambda d: dsse.verify(d, trusted), jobs=2)
            results = await asyncio.gather(*(batcher.submit(d) for d in datas))
            assert [r.parse(telemetry_pb2.NodeReport).sequence for r in results] == list(
                range(1, 51)
            )
            assert all(r.envelope_bytes == d for r, d in zip(results, datas, strict=True))
            assert batcher.batched == 50
            assert batcher.batches <= 2  # one per pool thread, not one per envelope

    asyncio.run(scenario())


def test_a_bad_envelope_fails_alone() -> None:
    key, stranger = PrivateKey.generate(), PrivateKey.generate()
    trusted = {key.keyid: key.public}
    good = _envelopes(key, 3)
    forged = _tamper(good[1])
    unknown = _envelopes(stranger, 1)[0]

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = BatchVerifier(pool, lambda d: dsse.verify(d, trusted), jobs=1)
            futs = [batcher.submit(d) for d in (good[0], forged, unknown, good[2])]
            results = await asyncio.gather(*futs, return_exceptions=True)
        assert isinstance(results[0], dsse.Verified)
        assert isinstance(results[1], SignatureError)
        assert isinstance(results[2], UnknownKeyError)
        assert isinstance(results[3], dsse.Verified)

    asyncio.run(scenario())


def test_batches_never_exceed_the_limit() -> None:
    key = PrivateKey.generate()
    trusted = {key.keyid: key.public}
    datas = _envelopes(key, 25)

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = BatchVerifier(pool, lambda d: dsse.verify(d, trusted), jobs=1, max_batch=10)
            await asyncio.gather(*(batcher.submit(d) for d in datas))
            assert batcher.batched == 25
            assert batcher.batches >= 3

    asyncio.run(scenario())


def test_a_shut_down_pool_fails_the_check_instead_of_hanging() -> None:
    key = PrivateKey.generate()
    trusted = {key.keyid: key.public}
    pool = ThreadPoolExecutor(1)
    pool.shutdown()

    async def scenario() -> None:
        batcher = BatchVerifier(pool, lambda d: dsse.verify(d, trusted), jobs=1)
        with pytest.raises(RuntimeError, match="shutdown"):
            await asyncio.wait_for(batcher.submit(_envelopes(key, 1)[0]), 5)

    asyncio.run(scenario())
