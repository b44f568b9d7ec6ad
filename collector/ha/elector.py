"""Run the leader lease: renew while leading, take over when it lapses.

``Elector`` calls ``LeaderLease.try_acquire`` every ``renew_seconds`` in a
worker thread (psycopg is blocking) and tells its listeners when this
collector becomes leader (with the new fencing term) or stops being one. A
renewal that fails (the database unreachable) counts as losing leadership at
once: a leader that cannot prove its lease must not sequence or sign.

Failover time, worst case: the old leader's lease runs out ``lease_seconds``
after its last renewal, and a standby notices within one ``renew_seconds``:
``lease_seconds + renew_seconds``. With the defaults (5 s, 1 s) that is 6 s,
well inside the agents' signed lease (``lease_seconds`` in the collector
config, 10 s by default, renewed every tick): keep
``db lease + renew < agent lease - reconnect backoff`` so a fail-closed agent
never halts across a failover (docs/architecture.md, "Collectors in high
availability").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from collector.ha.leader import LeaderLease

log = logging.getLogger(__name__)

ROLES = ("leader", "standby")


class Elector:
    """One collector's candidacy; ``role`` is what readiness reports."""

    def __init__(
        self,
        lease: LeaderLease,
        *,
        renew_seconds: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < renew_seconds * 1e9 < lease.lease_ns:
            raise ValueError("renew_seconds must be positive and shorter than the lease")
        self._lease = lease
        self._renew = renew_seconds
        self._monotonic = monotonic
        # Local deadline of the lease last proven: measured from *before* the
        # renewal was sent, so it never outlasts the lease in the database.
        self._valid_until = 0.0
        self._listeners: list[Callable[[int | None], None]] = []
        self.term: int | None = None
        self.last_term = 0  # the last term held, kept after losing it (metrics)
        self.elections = 0  # times this collector became leader
        self.errors = 0  # renewals that could not reach the database
        self._task: asyncio.Task[None] | None = None

    @property
    def role(self) -> str:
        return "leader" if self.current_term() is not None else "standby"

    def current_term(self) -> int | None:
        """The fencing term while the lease is proven, else None: a leader whose
        renewals stall (a stuck event loop, a slow database) stops sequencing
        and signing on its own clock before its lease can lapse in the database."""
        if self.term is None or self._monotonic() >= self._valid_until:
            return None
        return self.term

    def add_listener(self, callback: Callable[[int | None], None]) -> None:
        """``callback(term)`` on becoming leader, ``callback(None)`` on losing it."""
        self._listeners.append(callback)

    async def step(self) -> int | None:
        """One renewal or takeover attempt; the term held after it."""
        loop = asyncio.get_running_loop()
        sent = self._monotonic()
        try:
            term = await loop.run_in_executor(None, self._lease.try_acquire)
        except Exception as exc:  # noqa: BLE001 - unreachable database: not leading
            self.errors += 1
            log.warning("leader lease unreachable (%s): acting as standby", exc)
            term = None
        if term is not None:
            self._valid_until = sent + self._lease.lease_ns / 1e9
        if term != self.term:
            self.term = term
            if term is not None:
                self.elections += 1
                self.last_term = term
            for cb in self._listeners:
                try:
                    cb(term)
                except Exception:
                    log.exception("leader listener failed")
        return term

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(self._renew)

    async def stop(self, *, resign: bool = True) -> None:
        """Stop campaigning; ``resign`` hands the lease over at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if resign and self.term is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._lease.resign)
            self.term = None
