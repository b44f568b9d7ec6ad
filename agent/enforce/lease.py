"""Lease validity on the monotonic clock, and the fail-closed decision.

A lease's validity is measured from the moment it was received on the
agent's monotonic clock: ``received_at + (not_after - issued)``. The wall
clock is used only to refuse an already expired lease (in ``verify``); a
wall-clock jump afterwards neither shortens nor extends it.

Before the first lease (a fresh start) the agent allows ``grace_seconds``:
a restart is not a lost collector. A local halt that was in force before a
restart stays in force (it is persisted) until a valid lease arrives.

``fail_mode = "closed"``: no valid lease means halt locally; a later valid
lease lifts that local halt (never a collector's halt). ``"open"``: the agent
only reports ``lease_valid = false``.
"""

from __future__ import annotations

import logging

from protos.computewatch.v1 import control_pb2
from protos.errors import ConfigError

log = logging.getLogger(__name__)

FAIL_MODES = ("open", "closed")


class LeaseTracker:
    """When the current lease ends, on the monotonic clock (seconds)."""

    def __init__(self, fail_mode: str, *, started_at: float, grace_seconds: float) -> None:
        if fail_mode not in FAIL_MODES:
            raise ConfigError(f"fail_mode {fail_mode!r}: expected 'open' or 'closed'")
        if not grace_seconds >= 0:
            raise ConfigError(f"lease grace {grace_seconds!r}: expected seconds >= 0")
        self.fail_mode = fail_mode
        self.valid_until = started_at + grace_seconds
        # False until a lease arrives (validity then comes from the grace period).
        self.leased = False
        self.lease_id = ""

    @property
    def fail_closed(self) -> bool:
        return self.fail_mode == "closed"

    def renew(self, lease: control_pb2.Directive, received_at: float) -> float:
        """Take a verified, newer lease; return its end on the monotonic clock.

        The newest lease decides, even if it is shorter than the last one:
        the collector may shorten leases on purpose.
        """
        duration = (lease.not_after_unix_nanos - lease.issued_unix_nanos) / 1e9
        self.valid_until = received_at + max(0.0, duration)
        self.leased = True
        self.lease_id = lease.id
        return self.valid_until

    def valid(self, now: float) -> bool:
        return now < self.valid_until

    def remaining(self, now: float) -> float:
        return max(0.0, self.valid_until - now)

    def should_halt(self, now: float, *, locally_halted: bool) -> bool:
        """Fail-closed and no valid lease and not yet halted locally."""
        return self.fail_closed and not locally_halted and not self.valid(now)

    def may_lift(self, now: float, *, locally_halted: bool) -> bool:
        """A local halt may be lifted: a lease arrived and is valid now."""
        return locally_halted and self.leased and self.valid(now)
