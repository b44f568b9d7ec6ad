"""Signature checks off the event loop, many envelopes per hop.

One executor job per envelope costs a future, a thread wake-up and a
self-pipe write; under load that costs more than the Ed25519 check itself.
Envelopes queue here and go to the pool in batches, at most ``jobs`` batches
at a time, so while the pool is busy the next batch grows.

Threads or processes: ``cryptography`` releases the GIL while it verifies,
but a pool thread must take the GIL back after every signature, and while the
event loop is busy it waits for the interpreter's switch interval (5 ms) each
time. Under load a thread pool therefore verifies a few hundred envelopes a
second. A ``ProcessPoolExecutor`` (``process_pool()``) has no such limit: the
loop parses the outer envelope, looks up the keys its ids name, and the worker
runs ``dsse.verify`` on the exact received bytes with those keys only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor

from protos import dsse
from protos.errors import UnknownKeyError
from protos.keys import PublicKey

# keyid -> raw public key bytes: what a worker process may trust for one envelope.
_Trusted = dict[str, bytes]

_WORKER_KEYS: dict[bytes, PublicKey] = {}
_WORKER_KEYS_MAX = 100_000


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes for ``BatchVerifier`` (spawned; they ignore Ctrl-C,
    which the collector handles and then shuts the pool down)."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_ignore_sigint,
    )


def _worker_key(raw: bytes) -> PublicKey:
    key = _WORKER_KEYS.get(raw)
    if key is None:
        if len(_WORKER_KEYS) >= _WORKER_KEYS_MAX:
            _WORKER_KEYS.clear()
        key = _WORKER_KEYS[raw] = PublicKey.from_raw(raw)
    return key


def verify_in_worker(
    items: Sequence[tuple[bytes, _Trusted]], expected_type: str, max_bytes: int
) -> list[object]:
    """Run in a worker process: ``dsse.verify`` each envelope with its keys;
    (payload type, payload, signer key id) or the error, per envelope."""
    out: list[object] = []
    for data, raw_keys in items:
        try:
            keys = {keyid: _worker_key(raw) for keyid, raw in raw_keys.items()}
            v = dsse.verify(data, keys, expected_type=expected_type, max_bytes=max_bytes)
            out.append((v.payload_type, v.payload, v.signer.keyid))
        except Exception as exc:  # noqa: BLE001 - returned to the caller that awaits it
            out.append(exc)
    return out


def _verify_all(verify: Callable[[bytes], dsse.Verified], datas: list[bytes]) -> list[object]:
    out: list[object] = []
    for data in datas:
        try:
            out.append(verify(data))
        except Exception as exc:  # noqa: BLE001 - returned to the caller that awaits it
            out.append(exc)
    return out


class BatchVerifier:
    """``await submit(data)`` gives the ``dsse.Verified`` envelope or raises
    what ``dsse.verify`` raised for it (in either kind of pool)."""

    def __init__(
        self,
        pool: Executor,
        *,
        verify: Callable[[bytes], dsse.Verified],
        resolve: Callable[[str], PublicKey | None],
        expected_type: str,
        max_bytes: int,
        jobs: int,
        max_batch: int = 256,
    ) -> None:
        self._pool = pool
        self._remote = isinstance(pool, ProcessPoolExecutor)
        self._verify = verify
        self._resolve = resolve
        self._expected_type = expected_type
        self._max_bytes = max_bytes
        self._jobs = max(jobs, 1)
        self._max_batch = max_batch
        self._running = 0
        self._pending: list[tuple[bytes, asyncio.Future[dsse.Verified]]] = []
        self._scheduled = False
        self.batches = 0
        self.batched = 0

    def submit(self, data: bytes) -> asyncio.Future[dsse.Verified]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dsse.Verified] = loop.create_future()
        self._pending.append((data, fut))
        if not self._scheduled and self._running < self._jobs:
            # After this loop iteration, so envelopes read in it share a hop.
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return fut

    def _dispatch(self) -> None:
        self._scheduled = False
        loop = asyncio.get_running_loop()
        while self._pending and self._running < self._jobs:
            free = self._jobs - self._running
            size = min(-(-len(self._pending) // free), self._max_batch)
            batch = self._pending[:size]
            del self._pending[:size]
            if self._remote:
                items, batch = self._prepare(batch)
                if not batch:
                    continue
                job: Future[list[object]] = self._pool.submit(
                    verify_in_worker, items, self._expected_type, self._max_bytes
                )
            else:
                job = self._pool.submit(_verify_all, self._verify, [d for d, _ in batch])
            self._running += 1
            self.batches += 1
            self.batched += len(batch)
            job.add_done_callback(functools.partial(self._done_threadsafe, loop, batch))

    def _prepare(
        self, batch: list[tuple[bytes, asyncio.Future[dsse.Verified]]]
    ) -> tuple[list[tuple[bytes, _Trusted]], list[tuple[bytes, asyncio.Future[dsse.Verified]]]]:
        """The keys each envelope names that we trust; an envelope whose outer
        layer does not parse fails here with the error ``dsse.verify`` raises."""
        items: list[tuple[bytes, _Trusted]] = []
        ready = []
        for data, fut in batch:
            try:
                trusted: _Trusted = {}
                for keyid in dsse.signer_keyids(data, max_bytes=self._max_bytes):
                    key = self._resolve(keyid)
                    if key is not None:
                        trusted[keyid] = key.raw()
            except Exception as exc:  # noqa: BLE001 - handed to the awaiting caller
                if not fut.done():
                    fut.set_exception(exc)
                continue
            items.append((data, trusted))
            ready.append((data, fut))
        return items, ready

    def _done_threadsafe(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[bytes, asyncio.Future[dsse.Verified]]],
        job: Future[list[object]],
    ) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while the job ran
            loop.call_soon_threadsafe(self._done, batch, job)

    def _done(
        self,
        batch: list[tuple[bytes, asyncio.Future[dsse.Verified]]],
        job: Future[list[object]],
    ) -> None:
        self._running -= 1
        try:
            results = job.result()
        except Exception as exc:  # noqa: BLE001 - the pool failed (shut down, broken)
            results = [exc] * len(batch)
        for (data, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                self._settle(fut, data, result)
        if self._pending:
            self._dispatch()

    def _settle(self, fut: asyncio.Future[dsse.Verified], data: bytes, result: object) -> None:
        if isinstance(result, dsse.Verified):
            fut.set_result(result)
        elif isinstance(result, tuple):  # from a worker process
            payload_type, payload, keyid = result
            signer = self._resolve(keyid)
            if signer is None:  # un-enrolled while the worker verified
                fut.set_exception(UnknownKeyError(f"key {keyid[:16]} is no longer trusted"))
            else:
                fut.set_result(dsse.Verified(payload_type, payload, signer, data))
        elif isinstance(result, Exception):
            fut.set_exception(result)
        else:
            fut.set_exception(TypeError(f"unexpected verification result {result!r}"))
