"""The collector's configuration: one frozen dataclass, passed in explicitly."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

from protos.config import SettingError, check_ranges, load_section, read_toml
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


_PG_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(value: str | Path) -> bool:
    """True for a PostgreSQL URL (``postgresql://`` or ``postgres://``)."""
    return isinstance(value, str) and value.startswith(_PG_SCHEMES)


def read_url_file(path: Path) -> str:
    """The database URL in ``path``: its one non-empty line, stripped (the
    collector's ``ledger_url_file`` and the CLI's ``--ledger-url-file``); a
    second line is refused, not ignored (it would be a URL we did not use)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from exc
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"{path}: no ledger URL in the file")
    if len(lines) > 1:
        raise ConfigError(f"{path}: expected one ledger URL, found {len(lines)} lines")
    return lines[0]


@dataclass(frozen=True)
class HaConfig:
    """``[ha]``: this collector's candidacy for the lead on a shared PostgreSQL."""

    # Name written into the leader row while this collector leads (unique per
    # candidate; a Kubernetes pod's hostname is its name).
    candidate: str = field(default_factory=socket.gethostname)
    # The leader lease in the database: a standby takes over this long after
    # the leader's last renewal.
    leader_lease_seconds: float = 5.0
    # How often the leader renews (and a standby looks for a lapsed lease).
    renew_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not self.candidate or len(self.candidate) > 253:
            raise SettingError("candidate", self.candidate, "1-253 characters")
        check_ranges(
            self,
            {"leader_lease_seconds": (0.0, 3600.0, True), "renew_seconds": (0.0, 3600.0, True)},
        )
        if self.renew_seconds >= self.leader_lease_seconds:
            raise SettingError(
                "renew_seconds",
                self.renew_seconds,
                f"less than leader_lease_seconds ({self.leader_lease_seconds!r})",
            )


@dataclass(frozen=True)
class CollectorConfig:
    _: KW_ONLY
    # The ledger: a SQLite file (the log, chains, enrolments, evidence), or a
    # PostgreSQL URL (``postgresql://...``) shared by collectors in high
    # availability. A path is kept as a Path, a URL as a str.
    ledger: str | Path = ""
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
    # loop (collector.telemetry.ingest_pool); 0: verify_threads do the signatures only.
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
    # A file holding the PostgreSQL URL (a Kubernetes secret mount), so the
    # password never sits in this config; wins over ``ledger``.
    ledger_url_file: Path | None = None
    # ``[ha]``: only with a PostgreSQL ledger.
    ha: HaConfig = field(default_factory=HaConfig)

    def __post_init__(self) -> None:
        self._check_ledger()
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

    def check_failover(self) -> None:
        """On PostgreSQL: ConfigError unless a failover (the database lease plus one
        renewal) ends before the agents' signed leases do. Checked once ``[ha]``
        is merged in (``load_collector_config``) and again at start."""
        failover = self.ha.leader_lease_seconds + self.ha.renew_seconds
        if self.on_database and failover >= self.lease_seconds:
            raise ConfigError(
                f"[ha] leader_lease_seconds + renew_seconds ({failover:g} s) must stay below"
                f" lease_seconds ({self.lease_seconds:g} s): a failover would outlast the"
                " agents' leases and fail-closed agents would halt"
            )

    def _check_ledger(self) -> None:
        ledger = self.ledger
        if isinstance(ledger, str) and ledger.startswith("sqlite:///"):
            ledger = ledger.removeprefix("sqlite://")  # sqlite:///abs/path: the file
        if isinstance(ledger, str) and not is_database_url(ledger):
            if "://" in ledger:
                raise SettingError("ledger", ledger, "a file path or a postgresql:// URL")
            if ledger:
                object.__setattr__(self, "ledger", Path(ledger))
        if self.ledger_url_file is None and not str(self.ledger):
            raise ConfigError(
                "[collector] is missing required key(s) ledger: a file path or a postgresql://"
                " URL (or ledger_url_file)"
            )

    @property
    def on_database(self) -> bool:
        """True when the ledger is PostgreSQL (a URL, or ``ledger_url_file``)."""
        return self.ledger_url_file is not None or is_database_url(self.ledger)

    @property
    def ledger_path(self) -> Path:
        """The SQLite ledger file; ConfigError on a PostgreSQL ledger."""
        if self.on_database or not isinstance(self.ledger, Path):
            raise ConfigError("this needs a SQLite ledger file; the ledger is PostgreSQL")
        return self.ledger

    def ledger_location(self) -> str | Path:
        """What the collector's tables open (``collector.store.sql``): the SQLite
        file, or the PostgreSQL URL (read from ``ledger_url_file`` now)."""
        return self.database_url() if self.on_database else self.ledger_path

    def database_url(self) -> str:
        """The PostgreSQL URL: ``ledger_url_file``'s content (read now, so a
        rotated secret is picked up at the next start), else ``ledger``."""
        if self.ledger_url_file is None:
            if not isinstance(self.ledger, str):
                raise ConfigError(f"the ledger {self.ledger} is a SQLite file, not a database URL")
            return self.ledger
        try:
            url = read_url_file(self.ledger_url_file)
        except ConfigError as exc:
            raise ConfigError(f"ledger_url_file {exc}") from exc
        if not is_database_url(url):
            raise ConfigError(
                f"ledger_url_file {self.ledger_url_file}: expected one postgresql:// URL"
            )
        return url

    def ledger_name(self) -> str:
        """The ledger for messages: a path, or the URL without its password."""
        if not self.on_database:
            return str(self.ledger)
        if self.ledger_url_file is not None:
            return f"the database URL in {self.ledger_url_file}"
        head, sep, tail = str(self.ledger).partition("@")
        if not sep:
            return head
        scheme, _, cred = head.partition("://")
        return f"{scheme}://{cred.split(':', 1)[0]}@{tail}"


def load_collector_config(
    path: Path | None, overrides: Mapping[str, object] | None = None
) -> CollectorConfig:
    """``[collector]`` of ``path`` with ``overrides`` (flags/env) on top, and
    ``[ha]`` (a table of its own, only with a PostgreSQL ledger)."""
    config = load_section(CollectorConfig, path, "collector", overrides)
    if path is None or "ha" not in read_toml(path):
        config.check_failover()
        return config
    if not config.on_database:
        raise ConfigError(
            f'{path}: [ha] needs a PostgreSQL ledger (ledger = "postgresql://..." or'
            f" ledger_url_file); the ledger {config.ledger} is a SQLite file"
        )
    ha = load_section(HaConfig, path, "ha")
    try:
        config = dataclasses.replace(config, ha=ha)
        config.check_failover()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return config
