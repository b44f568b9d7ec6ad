"""Collectors in high availability as users run them: ``computewatch collector
serve`` processes sharing one PostgreSQL, each with the same collector key.

``HaCluster(root, url)`` writes the keys (collector, auditor, authorities), a
private CA with a server certificate for 127.0.0.1, and one TOML config per
candidate (``ledger`` = the URL, or ``ledger_url_file`` with it; ``[ha]``
with a short database lease), then starts, finds, kills (SIGKILL) and
restarts candidates. Which one leads is read the way a Kubernetes readiness
probe reads it: the gRPC health service ``computewatch.v1.Telemetry`` is
SERVING on the leader only. The HA test (tests/integration/test_ha_serve.py)
and ``bench.bench_failover`` / ``bench.bench_agent_failover`` use it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from computewatch.tlsca import init_site
from protos.keys import PrivateKey, write_private_key, write_public_key

CLI = [sys.executable, "-m", "computewatch.cli", "--log-level", "warning"]
TELEMETRY = "computewatch.v1.Telemetry"
STATUS = "computewatch.v1.Status"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Candidate:
    """One ``collector serve`` process."""

    name: str
    port: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class HaCluster:
    """Keys, TLS and configs for ``names`` candidates on the database ``url``."""

    root: Path
    url: str
    names: tuple[str, ...] = ("collector-a", "collector-b")
    leader_lease_seconds: float = 1.0
    renew_seconds: float = 0.2
    # The agents' signed lease: above the database lease + renewal + reconnect.
    agent_lease_seconds: float = 6.0
    authorities: int = 3
    quorum: int = 2
    interval_seconds: float = 0.5
    tick_seconds: float = 0.2
    checkpoint_interval_seconds: float = 0.5
    # Give the URL through ``ledger_url_file`` (a secret mount), not ``ledger``.
    url_in_file: bool = True
    candidates: dict[str, Candidate] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.collector_key = PrivateKey.generate()
        write_private_key(self.collector_key, self.root / "collector.key")
        write_public_key(self.collector_key.public, self.root / "collector.key.pub")
        self.auditor_key = PrivateKey.generate()
        write_private_key(self.auditor_key, self.root / "auditor.key")
        write_public_key(self.auditor_key.public, self.root / "auditor.pub")
        self.authority_keys: list[Path] = []
        for i in range(self.authorities):
            key = PrivateKey.generate()
            write_private_key(key, self.root / f"authority-{i}.key")
            write_public_key(key.public, self.root / f"authority-{i}.pub")
            self.authority_keys.append(self.root / f"authority-{i}.key")
        site = init_site(self.root / "tls")
        self.tls_ca = site["ca"].cert
        url_file = self.root / "ledger-url"
        url_file.write_text(self.url + "\n", encoding="utf-8")
        url_file.chmod(0o600)
        for name in self.names:
            port = free_port()
            ledger = (
                f'ledger_url_file = "{url_file}"\n'
                if self.url_in_file
                else f'ledger = "{self.url}"\n'
            )
            pubs = ", ".join(f'"{p.with_suffix(".pub")}"' for p in self.authority_keys)
            config = self.root / f"{name}.toml"
            config.write_text(
                "[collector]\n"
                f"{ledger}"
                f'key = "{self.root / "collector.key"}"\n'
                f'listen = "127.0.0.1:{port}"\n'
                f"interval_seconds = {self.interval_seconds}\n"
                f"tick_seconds = {self.tick_seconds}\n"
                f"checkpoint_interval_seconds = {self.checkpoint_interval_seconds}\n"
                f"lease_seconds = {self.agent_lease_seconds}\n"
                f"authority_keys = [{pubs}]\n"
                f"quorum = {self.quorum}\n"
                f'auditor_keys = ["{self.root / "auditor.pub"}"]\n'
                f'tls_cert = "{site["collector"].cert}"\n'
                f'tls_key = "{site["collector"].key}"\n'
                "ledger_retry_min_seconds = 0.02\n"
                "ledger_retry_max_seconds = 0.2\n"
                "[ha]\n"
                f'candidate = "{name}"\n'
                f"leader_lease_seconds = {self.leader_lease_seconds}\n"
                f"renew_seconds = {self.renew_seconds}\n",
                encoding="utf-8",
            )
            self.candidates[name] = Candidate(name, port, config, self.root / f"{name}.log")

    # --- processes -----------------------------------------------------------------
    @property
    def targets(self) -> str:
        """Every candidate's address, for the agents (they find the leader)."""
        return ",".join(c.address for c in self.candidates.values())

    def start(self, name: str) -> Candidate:
        c = self.candidates[name]
        if c.running:
            return c
        with c.log.open("ab") as log:
            c.proc = subprocess.Popen(
                [*CLI, "collector", "serve", "--config", str(c.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return c

    def start_all(self) -> None:
        for name in self.names:
            self.start(name)

    def kill(self, c: Candidate, sig: int = signal.SIGKILL) -> None:
        if c.proc is not None and c.proc.poll() is None:
            c.proc.send_signal(sig)
            try:
                c.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait(timeout=10)

    def close(self) -> None:
        for c in self.candidates.values():
            self.kill(c, signal.SIGTERM)

    # --- who leads -----------------------------------------------------------------
    def _credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.tls_ca.read_bytes())

    def health(self, c: Candidate, service: str = TELEMETRY) -> str | None:
        """The candidate's health for ``service`` ("SERVING", "NOT_SERVING"), None if down."""
        if not c.running:
            return None
        try:
            with grpc.secure_channel(c.address, self._credentials()) as channel:
                got = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1.0
                )
        except grpc.RpcError:
            return None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(got.status))

    def leader(self) -> Candidate | None:
        for c in self.candidates.values():
            if self.health(c) == "SERVING":
                return c
        return None

    def wait_leader(self, timeout: float, *, other_than: Candidate | None = None) -> Candidate:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            c = self.leader()
            if c is not None and c is not other_than:
                return c
            for c in self.candidates.values():
                if c.proc is not None and c.proc.poll() not in (None, -signal.SIGKILL):
                    raise RuntimeError(f"{c.name} exited: {tail(c.log)}")
            time.sleep(0.05)
        raise RuntimeError(f"no leader within {timeout} s: {self.logs()}")

    def wait_up(self, c: Candidate, timeout: float) -> None:
        """Until ``c`` answers health (liveness) at all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.health(c, "") == "SERVING":
                return
            if c.proc is not None and c.proc.poll() is not None:
                raise RuntimeError(f"{c.name} exited: {tail(c.log)}")
            time.sleep(0.05)
        raise RuntimeError(f"{c.name} not up within {timeout} s: {tail(c.log)}")

    def logs(self) -> str:
        return " | ".join(f"{c.name}: {tail(c.log)}" for c in self.candidates.values())

    # --- the CLI, as an operator runs it -----------------------------------------------
    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ},
        )

    def tls_args(self) -> list[str]:
        return ["--tls-ca", str(self.tls_ca)]


def tail(path: Path, size: int = 1500) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(encoding="utf-8", errors="replace")[-size:]
    return ""
