"""The collector's configuration: one frozen dataclass, passed in explicitly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from protos.config import SettingError, check_ranges, load_section
from protos.errors import ConfigError
from protos.reports import MAX_INTERVAL_SECONDS

_DAY = 86_400.0
# name: (low, high, low excluded). Every numeric setting is finite and in range.
RANGES: dict[str, tuple[float, float, bool]] = {
    "interval_seconds": (0.0, MAX_INTERVAL_SECONDS, True),
    "silent_after_intervals": (0.0, 1000.0, True),
    "max_envelope_bytes": (1024, 64 << 20, False),
    "verify_threads": (0, 256, False),
    "ingest_processes": (0, 64, False),
    "max_in_flight_per_stream": (1, 1_000_000, False),
    "metrics_port": (0, 65535, False),
    "tick_seconds": (0.001, 3600.0, False),
    "checkpoint_interval_seconds": (0.01, _DAY, False),
    "quorum": (1, 1000, False),
    "lease_seconds": (0.0, _DAY, True),
    "effective_timeout_seconds": (0.0, _DAY, True),
    "grace_seconds": (0.0, 3600.0, False),
    "max_jobs_per_node": (1, 10_000_000, False),
    "max_job_states": (1, 100_000_000, False),
    "ended_job_ttl_seconds": (1.0, 365 * _DAY, False),
    "max_evidence_per_key": (1, 1000, False),
    "ledger_retry_min_seconds": (0.0, 60.0, True),
    "ledger_retry_max_seconds": (0.0, 3600.0, True),
    "key_poll_seconds": (0.0, 3600.0, True),
}


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
    # Worker processes that verify, parse and validate reports off the event
    # loop (collector.ingest_pool); 0: verify_threads do the signatures only.
    ingest_processes: int = 2
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
    # Job states one node may make the collector hold (ended jobs are
    # forgotten first to make room), job states held in all, and how long an
    # ended job's figures stay in memory (its reports stay in the ledger).
    max_jobs_per_node: int = 1024
    max_job_states: int = 20_000
    ended_job_ttl_seconds: float = 86_400.0
    # Conflicting envelopes kept as evidence per (signing key, kind); later
    # ones are only counted.
    max_evidence_per_key: int = 1
    # The collector's previous private keys, oldest first, to rotate from: at
    # start the new key (``key``) is announced in the log under the last one
    # (docs/regulators.md); the stored checkpoint may be signed by any of them.
    previous_keys: tuple[Path, ...] = ()
    # How often the collector looks for enrolments, handovers and revocations.
    key_poll_seconds: float = 0.2

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise SettingError("listen", self.listen, "HOST:PORT (port 0..65535)")
        check_ranges(self, RANGES)
        if self.ledger_retry_max_seconds < self.ledger_retry_min_seconds:
            raise SettingError(
                "ledger_retry_max_seconds",
                self.ledger_retry_max_seconds,
                f"at least ledger_retry_min_seconds ({self.ledger_retry_min_seconds!r})",
            )
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
        if self.authority_keys and self.quorum > len(self.authority_keys):
            raise SettingError(
                "quorum",
                self.quorum,
                f"at most the {len(self.authority_keys)} authority keys configured"
                " (else a halt could never be lifted)",
            )


def load_collector_config(
    path: Path | None, overrides: Mapping[str, object] | None = None
) -> CollectorConfig:
    """``[collector]`` of ``path`` with ``overrides`` (flags/env) on top."""
    return load_section(CollectorConfig, path, "collector", overrides)
