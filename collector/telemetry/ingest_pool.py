"""Report checks in worker processes: verify, parse and validate, many
envelopes per hop, off the event loop and outside its GIL.

The workers run the very same code as the inline path (``dsse.verify``, the
NodeReport parse, ``validate_report``); they only answer. Everything that
decides is on the event loop, in ``collector.telemetry.ingest``: which keys are trusted
(the registry), the chain, the binding, the ledger order. A worker holds a
copy of the enrolled public keys (all of them when it starts, later ones
handed along with the next batches) and says, for every envelope, which key
ids it looked up and whether it held each; the ingestor accepts the answer
only when the registry agrees key for key, and checks the envelope again
itself otherwise (a key enrolled or revoked since). A key id is the SHA-256 of
the key, so the same id in both places is the same key.

A worker that dies (killed, out of memory) breaks the pool: the envelopes in
its batches are checked inline instead, nothing is lost or checked twice into
the ledger (the sequencer admits each envelope once, whatever checked it), and
the next batch starts a fresh pool.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from collector.accounting.aggregate import Aggregator
from collector.accounting.gpu import GpuFigures, gpu_figures
from collector.telemetry.batchverify import on_loop, take_batch
from protos import devices, dsse
from protos.computewatch.v1 import telemetry_pb2
from protos.errors import VerificationError
from protos.keys import PublicKey
from protos.reports import validate_report

log = logging.getLogger(__name__)

# Forked from a fork server: a clean single-threaded process that imported
# this module once (no copy of the loop, gRPC's threads or the ledger), so a
# worker, or a replacement for one that died, starts in milliseconds.
_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload([__name__])
# Batches that carry a newly learnt (or forgotten) key, so every worker hears of it.
_TEACH_BATCHES = 64

# -- in the worker --------------------------------------------------------------

_KEYS: dict[str, PublicKey] = {}


# How often a worker looks whether the collector that started it still runs.
ORPHAN_POLL_SECONDS = 0.5


def _owner_gone(owner: int) -> bool:
    """Whether process ``owner`` has ended (a zombie not yet reaped counts)."""
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        stat = Path(f"/proc/{owner}/stat").read_bytes()
    except OSError:
        return False
    return stat.rsplit(b")", 1)[-1].split()[0] == b"Z"


def _watch_owner(owner: int) -> None:
    while not _owner_gone(owner):
        time.sleep(ORPHAN_POLL_SECONDS)
    os._exit(0)


def _start_worker(owner: int, keys: tuple[bytes, ...]) -> None:
    """A worker ends when the collector that started it does, even by kill -9:
    a pool's worker otherwise waits forever on its call queue (it holds the
    queue's write end too), and keeps the fork server and the resource
    tracker alive with it."""
    threading.Thread(target=_watch_owner, args=(owner,), name="owner", daemon=True).start()
    _learn(keys, ())


def _learn(keys: tuple[bytes, ...], forget: tuple[str, ...]) -> None:
    for raw in keys:
        key = PublicKey.from_raw(raw)
        _KEYS[key.keyid] = key
    for keyid in forget:
        _KEYS.pop(keyid, None)


@dataclass(frozen=True)
class Outcome:
    """A worker's answer for one envelope (pickled back to the loop)."""

    # Key id -> whether the worker held that key, for every id it looked up.
    asked: dict[str, bool]
    # The signer, once the signature verified.
    keyid: str = ""
    payload_type: str = ""
    payload: bytes = b""
    # Why the envelope is refused (signature, type, size, parse).
    error: VerificationError | None = None
    # validate_report's refusal: raised by the ingestor where it validates.
    invalid: VerificationError | None = None
    # A valid report's GPU figures (``gpu_figures``, the shipped device
    # table): the aggregator's heaviest part, worked out here.
    figures: list[GpuFigures] | None = None
    # And the job ids it names (``Aggregator.report_job_ids``).
    job_ids: set[str] | None = None
    # ``dsse.digest`` of the envelope: its link in the node's chain.
    digest: bytes = b""


def check_batch(
    datas: list[bytes],
    keys: tuple[bytes, ...],
    forget: tuple[str, ...],
    max_bytes: int,
    now_ns: int,
) -> list[Outcome]:
    """Run in a worker: verify, parse and validate each envelope."""
    _learn(keys, forget)
    return [_check_one(data, max_bytes, now_ns) for data in datas]


def _check_one(data: bytes, max_bytes: int, now_ns: int) -> Outcome:
    asked: dict[str, bool] = {}

    def resolve(keyid: str) -> PublicKey | None:
        key = _KEYS.get(keyid)
        asked[keyid] = key is not None
        return key

    try:
        verified = dsse.verify(data, resolve, expected_type=dsse.REPORT_TYPE, max_bytes=max_bytes)
    except VerificationError as exc:
        return Outcome(asked, error=exc)
    try:
        report = verified.parse(telemetry_pb2.NodeReport)
    except VerificationError as exc:  # signed, so the refusal names the key
        return Outcome(asked, verified.signer.keyid, error=exc)
    invalid: VerificationError | None = None
    figures: list[GpuFigures] | None = None
    job_ids: set[str] | None = None
    try:
        validate_report(report, now_ns=now_ns)
    except VerificationError as exc:
        invalid = exc
    else:
        figures = [gpu_figures(g, devices.lookup, report.node_id) for g in report.gpus]
        job_ids = Aggregator.report_job_ids(report)
    return Outcome(
        asked,
        verified.signer.keyid,
        verified.payload_type,
        verified.payload,
        invalid=invalid,
        figures=figures,
        job_ids=job_ids,
        digest=dsse.digest(data),
    )


# -- on the event loop --------------------------------------------------------------

_Batch = list[tuple[bytes, "asyncio.Future[Outcome | None]"]]
_K = TypeVar("_K")
# After a pool failure, envelopes are checked inline this long before a new pool starts.
_RESTART_SECONDS = 1.0


def _count_down(table: dict[_K, int]) -> None:
    for name in list(table):
        table[name] -= 1
        if table[name] <= 0:
            del table[name]


class ProcessChecks:
    """``await submit(data)``: the worker's ``Outcome``, or None when the
    caller must check ``data`` itself (the pool failed, or too few envelopes
    are waiting to be worth a hop: ``inline_below``)."""

    def __init__(
        self,
        processes: int,
        keys: Callable[[], list[PublicKey]],
        *,
        max_bytes: int,
        clock_ns: Callable[[], int] = time.time_ns,
        max_batch: int = 256,
        inline_below: int = 4,
    ) -> None:
        """``keys``: every enrolled key now (a fresh pool starts with them)."""
        self._processes = max(processes, 1)
        self._keys = keys
        self._max_bytes = max_bytes
        self._clock_ns = clock_ns
        self._max_batch = max(max_batch, 1)
        self._pool: ProcessPoolExecutor | None = None
        self._running = 0
        self._pending: _Batch = []
        self._scheduled = False
        # (raw key, batches left to carry it) and (key id, batches left).
        self._teach: dict[bytes, int] = {}
        self._forget: dict[str, int] = {}
        self._closed = False
        self._restart_at = 0.0
        # Plain counters for tests, metrics and benchmarks.
        self.batches = 0
        self.batched = 0
        self.restarts = 0
        self.fallbacks = 0
        # Answers not taken (a key the worker lacked or still held): checked inline.
        self.rechecked = 0
        # Fewer envelopes than this waiting, and no batch out: checked inline
        # (counted in ``inline``); 0 sends every envelope to the workers.
        self.inline_below = inline_below
        self.inline = 0

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            raws = tuple(k.raw() for k in self._keys())
            self._pool = ProcessPoolExecutor(
                self._processes,
                mp_context=_CTX,
                initializer=_start_worker,
                initargs=(os.getpid(), raws),
            )
        return self._pool

    def worker_pids(self) -> list[int]:
        """The live workers' process ids (tests kill one)."""
        procs = getattr(self._pool, "_processes", None) or {}
        return [int(pid) for pid in procs]

    def learn(self, key: PublicKey) -> None:
        """A key the workers lacked: hand it along with the next batches."""
        self.rechecked += 1
        self._forget.pop(key.keyid, None)
        self._teach[key.raw()] = _TEACH_BATCHES

    def forget(self, keyid: str) -> None:
        """A key the workers hold but the registry no longer trusts."""
        self.rechecked += 1
        self._forget[keyid] = _TEACH_BATCHES

    def submit(self, data: bytes) -> asyncio.Future[Outcome | None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Outcome | None] = loop.create_future()
        if self._closed or (self._pool is None and time.monotonic() < self._restart_at):
            fut.set_result(None)  # the caller checks it inline
            return fut
        self._pending.append((data, fut))
        if not self._scheduled and self._running < self._processes:
            # After this loop iteration, so envelopes read in it share a hop.
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return fut

    def _lessons(self) -> tuple[tuple[bytes, ...], tuple[str, ...]]:
        keys, forget = tuple(self._teach), tuple(self._forget)
        _count_down(self._teach)
        _count_down(self._forget)
        return keys, forget

    def _dispatch(self) -> None:
        self._scheduled = False
        loop = asyncio.get_running_loop()
        if self._running == 0 and len(self._pending) < self.inline_below:
            # A trickle (agents at 1 Hz, an idle pool): a hop to a worker and
            # back costs more CPU than the check, and the loop has the time.
            batch, self._pending = self._pending, []
            self.inline += len(batch)
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)
            return
        while self._pending and self._running < self._processes:
            if self._pool is None and (self._closed or time.monotonic() < self._restart_at):
                batch, self._pending = self._pending, []
                self.fallbacks += len(batch)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
                return
            batch = take_batch(self._pending, self._processes - self._running, self._max_batch)
            keys, forget = self._lessons()
            try:
                job = self._start().submit(
                    check_batch,
                    [d for d, _ in batch],
                    keys,
                    forget,
                    self._max_bytes,
                    self._clock_ns(),
                )
            except RuntimeError as exc:  # broken (a worker died) or shut down
                self._broken(batch, exc)
                continue
            self._running += 1
            self.batches += 1
            self.batched += len(batch)
            job.add_done_callback(on_loop(loop, functools.partial(self._done, batch)))

    def _done(self, batch: _Batch, job: Future[list[Outcome]]) -> None:
        self._running -= 1
        try:
            results: list[Outcome | None] = list(job.result())
        except Exception as exc:  # noqa: BLE001 - the pool failed, not an envelope
            self._broken(batch, exc)
        else:
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():  # else the caller went away
                    fut.set_result(result)
        if self._pending and not self._scheduled:
            self._dispatch()

    def _broken(self, batch: _Batch, exc: BaseException) -> None:
        """The pool failed: these envelopes are checked by their callers, and
        the next batch goes to a fresh pool (every key handed over again)."""
        self.fallbacks += len(batch)
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)
        if self._closed or self._pool is None:
            return
        log.warning(
            "ingest worker pool failed (%s: %s); starting a new one", type(exc).__name__, exc
        )
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        self._teach.clear()
        self._forget.clear()
        self._restart_at = time.monotonic() + _RESTART_SECONDS
        self.restarts += 1

    def close(self) -> None:
        self._closed = True
        for _, fut in self._pending:
            if not fut.done():
                fut.set_result(None)
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
