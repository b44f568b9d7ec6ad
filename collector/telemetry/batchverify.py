"""Signature checks on a thread pool, many envelopes per hop.

One executor job per envelope costs a future, a thread wake-up and a
self-pipe write each; under load that costs more than the Ed25519 check.
Envelopes queue here and go to the pool in batches, at most ``jobs`` batches
at a time, so while the pool is busy the next batch grows (the telemetry
service keeps several checks per stream in flight to feed it).

Why batches must be large: the Ed25519 check (libsodium through PyNaCl's
cffi, ``protos.keys``) releases the GIL while it verifies, but a pool
thread has to take the GIL back after every signature, and while the event
loop is busy that waits for the interpreter's switch interval (5 ms). A
thread verifying one envelope per job therefore manages a few hundred a
second under load; with a deep queue it keeps up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import TypeVar

from protos import dsse

_Batch = list[tuple[bytes, "asyncio.Future[dsse.Verified]"]]
_T = TypeVar("_T")
_R = TypeVar("_R")


def take_batch(pending: list[_T], free: int, max_batch: int) -> list[_T]:
    """Remove and return the next batch from ``pending``: the queue spread
    evenly over the ``free`` jobs, at most ``max_batch`` envelopes."""
    size = min(-(-len(pending) // free), max_batch)
    batch = pending[:size]
    del pending[:size]
    return batch


def on_loop(
    loop: asyncio.AbstractEventLoop, callback: Callable[[Future[_R]], None]
) -> Callable[[Future[_R]], None]:
    """A pool job's done-callback that runs ``callback(job)`` on ``loop``."""

    def done(job: Future[_R]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while the job ran
            loop.call_soon_threadsafe(callback, job)

    return done


def _verify_all(verify: Callable[[bytes], dsse.Verified], datas: list[bytes]) -> list[object]:
    """Run on a pool thread: ``verify`` each envelope; its result or error."""
    out: list[object] = []
    for data in datas:
        try:
            out.append(verify(data))
        except Exception as exc:  # noqa: BLE001 - raised again to the caller that awaits it
            out.append(exc)
    return out


class BatchVerifier:
    """``await submit(data)`` gives ``verify(data)`` (run on ``pool``) or
    raises what it raised."""

    def __init__(
        self,
        pool: Executor,
        verify: Callable[[bytes], dsse.Verified],
        *,
        jobs: int,
        max_batch: int = 256,
    ) -> None:
        self._pool = pool
        self._verify = verify
        self._jobs = max(jobs, 1)
        self._max_batch = max(max_batch, 1)
        self._running = 0
        self._pending: _Batch = []
        self._scheduled = False
        # Plain counters (batches sent, envelopes in them) for tests and benchmarks.
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
            batch = take_batch(self._pending, self._jobs - self._running, self._max_batch)
            try:
                job = self._pool.submit(_verify_all, self._verify, [d for d, _ in batch])
            except RuntimeError as exc:  # the pool was shut down
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self._running += 1
            self.batches += 1
            self.batched += len(batch)
            job.add_done_callback(on_loop(loop, functools.partial(self._done, batch)))

    def _done(self, batch: _Batch, job: Future[list[object]]) -> None:
        self._running -= 1
        try:
            results = job.result()
        except Exception as exc:  # noqa: BLE001 - the pool failed: every caller hears it
            results = [exc] * len(batch)
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():  # the caller went away
                continue
            if isinstance(result, dsse.Verified):
                fut.set_result(result)
            elif isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_exception(TypeError(f"unexpected verification result {result!r}"))
        if self._pending:
            self._dispatch()
