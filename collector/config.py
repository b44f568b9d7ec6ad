"""The collector's configuration: one frozen dataclass, passed in explicitly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from protos.config import load_section
from protos.errors import ConfigError


@dataclass(frozen=True)
class CollectorConfig:
    # Ledger file (SQLite): the log, chains, enrolments, evidence.
    ledger: Path
    # Collector private key: signs directives, leases and checkpoints.
    key: Path
    listen: str = "127.0.0.1:7443"
    # Expected agent report interval, seconds.
    interval_seconds: float = 1.0
    # A node is silent after this many intervals without a report.
    silent_after_intervals: float = 3.0
    max_envelope_bytes: int = 1 << 20
    # Threads that verify Ed25519 signatures off the event loop (0: inline).
    verify_threads: int = 2
    # Reports accepted but not yet committed, per stream, before reading pauses.
    max_in_flight_per_stream: int = 1024
    metrics_address: str = "127.0.0.1"
    # 0 disables the /metrics endpoint.
    metrics_port: int = 0
    # Aggregation and rule evaluation period, seconds.
    tick_seconds: float = 1.0
    # Merkle log origin (log id) written into every checkpoint.
    log_origin: str = "computewatch.local/log"
    checkpoint_interval_seconds: float = 10.0
    # Rule packs: shipped names (e.g. "operator-default") or YAML files.
    rule_packs: tuple[str, ...] = ()
    # Public keys of authorities (halt, approve resume) and auditors (read the log).
    authority_keys: tuple[Path, ...] = ()
    auditor_keys: tuple[Path, ...] = ()
    # Approvals from distinct authority keys needed to resume a halt.
    quorum: int = 2
    # Lease validity, seconds (renewed every interval to healthy nodes).
    lease_seconds: float = 10.0
    # Seconds after which a directive not yet effective raises an alert.
    effective_timeout_seconds: float = 10.0
    # Signed tokens on Audit/Status/Control calls. On by default; turning it
    # off is an explicit, loudly logged opt-out, refused while auditor keys
    # are configured (they would be silently ignored).
    require_auth: bool = True
    # TLS for the gRPC listener (telemetry, control, audit, status) and
    # /metrics: certificate chain and private key (PEM), re-read when they
    # change. ``tls_client_ca``: require client certificates signed by it.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Serve plain text instead: an explicit, loudly logged opt-out.
    insecure_plaintext: bool = False
    # Name of the cluster this collector governs; every directive names it
    # and agents refuse directives for another cluster.
    cluster: str = "default"
    grace_seconds: float = 2.0
    # After a failed ledger write: the recovery probe's first and longest wait.
    ledger_retry_min_seconds: float = 0.05
    ledger_retry_max_seconds: float = 5.0

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"listen = {self.listen!r}: expected HOST:PORT (port 0..65535)")
        positive = {
            "interval_seconds": self.interval_seconds,
            "silent_after_intervals": self.silent_after_intervals,
            "tick_seconds": self.tick_seconds,
            "checkpoint_interval_seconds": self.checkpoint_interval_seconds,
            "lease_seconds": self.lease_seconds,
            "max_envelope_bytes": self.max_envelope_bytes,
            "max_in_flight_per_stream": self.max_in_flight_per_stream,
            "ledger_retry_min_seconds": self.ledger_retry_min_seconds,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} = {value!r}: expected a positive number")
        if self.ledger_retry_max_seconds < self.ledger_retry_min_seconds:
            raise ConfigError(
                f"ledger_retry_max_seconds = {self.ledger_retry_max_seconds!r}: expected at"
                f" least ledger_retry_min_seconds ({self.ledger_retry_min_seconds!r})"
            )
        if self.verify_threads < 0:
            raise ConfigError(f"verify_threads = {self.verify_threads}: expected >= 0")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port = {self.metrics_port}: expected 0..65535")
        if not self.require_auth and self.auditor_keys:
            raise ConfigError(
                "require_auth = false with auditor_keys configured: auditors' tokens would be"
                " ignored and anyone could read; remove the keys or turn auth on"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key: give both or neither")
        if self.tls_cert is None and not self.insecure_plaintext:
            raise ConfigError(
                "no TLS certificate: set tls_cert and tls_key (`computewatch tls init` makes"
                " them), or insecure_plaintext = true to serve plain text"
            )
        if self.tls_cert is not None and self.insecure_plaintext:
            raise ConfigError("insecure_plaintext = true and tls_cert: choose one")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("tls_client_ca needs tls_cert and tls_key")
        if not self.cluster or len(self.cluster) > 128:
            raise ConfigError(f"cluster = {self.cluster!r}: expected 1-128 characters")
        if self.quorum < 1:
            raise ConfigError(f"quorum = {self.quorum}: expected at least 1")
        if self.authority_keys and self.quorum > len(self.authority_keys):
            raise ConfigError(
                f"quorum = {self.quorum} but only {len(self.authority_keys)} authority keys"
                " are configured: a halt could never be lifted"
            )


def load_collector_config(
    path: Path | None, overrides: Mapping[str, object] | None = None
) -> CollectorConfig:
    """``[collector]`` of ``path`` with ``overrides`` (flags/env) on top."""
    return load_section(CollectorConfig, path, "collector", overrides)
