"""Several collector addresses: the agent finds the one that leads.

Collectors in high availability share one PostgreSQL ledger; only the leader
takes reports, standbys end a stream at once. The agent is given every
address (``collector = "a:7443,b:7443"``, or a DNS name that resolves to
several hosts) and rotates to the next one whenever a connection ends before
the collector acknowledged anything. The spool does the rest: the new leader
says which sequence it stored, the agent resends from there, and the chain
check refuses any duplicate.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Sequence

log = logging.getLogger(__name__)


def split_host_port(value: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` (``[v6]:PORT`` too), or None if malformed."""
    host, sep, port = value.strip().rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) <= 65535):
        return None
    return host.removeprefix("[").removesuffix("]"), int(port)


def parse_targets(value: str) -> tuple[str, ...]:
    """The comma-separated ``HOST:PORT`` list; ValueError naming a bad entry."""
    targets = tuple(t.strip() for t in value.split(",") if t.strip())
    if not targets:
        raise ValueError("no collector address given")
    for t in targets:
        if split_host_port(t) is None:
            raise ValueError(f"collector address {t!r} is not HOST:PORT with port 1..65535")
    return targets


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TargetRing:
    """The addresses to try, in order; names expand to every address they resolve to."""

    def __init__(self, targets: Sequence[str]) -> None:
        self._configured = parse_targets(",".join(targets))
        self._addresses: list[str] = list(self._configured)
        # address -> the configured name it came from (only for expanded names)
        self._names: dict[str, str] = {}
        self._at = 0

    @property
    def configured(self) -> tuple[str, ...]:
        return self._configured

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(self._addresses)

    @property
    def current(self) -> str:
        return self._addresses[self._at]

    def authority(self, address: str) -> str | None:
        """The configured name behind an expanded ``address`` (the channel's
        authority, so TLS still checks the name), or None if it was configured."""
        return self._names.get(address)

    def advance(self) -> bool:
        """Move to the next address; True when that wrapped to the first (a full round)."""
        self._at = (self._at + 1) % len(self._addresses)
        return self._at == 0

    async def resolve(self) -> None:
        """Expand each configured name to all its addresses (A and AAAA, in the
        resolver's order); a name that does not resolve now stays as written,
        so gRPC retries it."""
        loop = asyncio.get_running_loop()
        expanded: list[str] = []
        names: dict[str, str] = {}
        for target in self._configured:
            parsed = split_host_port(target)
            assert parsed is not None  # parse_targets checked it
            host, port = parsed
            if _is_literal(host):
                found = [target]
            else:
                try:
                    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                except OSError as exc:
                    log.warning("cannot resolve collector %s now: %s", target, exc)
                    infos = []
                found = list(dict.fromkeys(_format(str(i[4][0]), port) for i in infos))
                if len(found) > 1:  # one name, several collectors: try each
                    names.update(dict.fromkeys(found, target))
                else:  # one address: keep the name (gRPC resolves it, TLS checks it)
                    found = [target]
            for address in found:
                if address not in expanded:
                    expanded.append(address)
        current = self.current
        self._addresses = expanded
        self._names = names
        self._at = expanded.index(current) if current in expanded else 0
