"""The agent's configuration: one frozen dataclass, passed in explicitly.

``load_agent_config`` reads the ``[agent]`` table of a TOML file and applies
overrides (flags and ``COMPUTEWATCH_AGENT_*`` variables, already resolved by
click), so the precedence is flag > environment > file > default. Every
mistake names where the value came from, the key and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.k8s.kubelet import DEFAULT_RESOURCES, DEFAULT_SOCKET
from agent.k8s.workload import DEFAULT_LABEL_RULES, parse_rules
from agent.slurm import DEFAULT_COMMAND as DEFAULT_SLURM_COMMAND
from agent.slurm import command_template
from protos.config import SettingError, check_range, load_section
from protos.errors import ConfigError
from protos.reports import MAX_INTERVAL_SECONDS

SECTION = "agent"
BACKENDS = ("nvml", "fake")
FAIL_MODES = ("open", "closed")
SCHEDULERS = ("signal", "slurm", "command")
_NODE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


_ValueError = SettingError


def _host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) <= 65535)


@dataclass(frozen=True)
class AgentConfig:
    # Name this node is enrolled under at the collector.
    node_id: str
    # Node private key (PEM, mode 0600): signs every report.
    key: Path
    # Collector address, HOST:PORT; several, comma-separated, for collectors in
    # high availability (the agent finds the leader; a name may resolve to several).
    collector: str = "127.0.0.1:7443"
    # Collector public key: verifies directives and leases.
    collector_key: Path | None = None
    # TLS to the collector: the CA to trust (None: the system's roots) and,
    # for mutual TLS, this node's client certificate and key (PEM). Also
    # serves /metrics when tls_cert and tls_key are set.
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Speak plain text to the collector: an explicit, loudly logged opt-out.
    insecure_plaintext: bool = False
    # The cluster this node belongs to: directives for another are refused.
    cluster: str = "default"
    # Seconds between samples.
    interval_seconds: float = 1.0
    # Spool (chain state, unacknowledged reports) and other persistent state.
    state_dir: Path = Path("/var/lib/computewatch/agent")
    # Unacknowledged reports kept; when full, samples fold into the next report.
    max_unacked: int = 10000
    # Reports sent but not yet acknowledged on one stream.
    max_in_flight: int = 256
    metrics_address: str = "127.0.0.1"
    # 0 disables the /metrics endpoint.
    metrics_port: int = 0
    # "nvml" (the driver) or "fake" (a scenario file, for tests and the demo).
    backend: str = "nvml"
    scenario: Path | None = None
    # Root of the proc filesystem used for job attribution.
    procfs_root: Path = Path("/proc")
    # Directory of per-job metadata files (lineage, model id); none when unset.
    job_metadata_dir: Path | None = None
    # Slurm array tasks and het components count under their array/het job,
    # found with this command ({job}: the task's own job id); "" turns it off.
    slurm_show_job_command: str = DEFAULT_SLURM_COMMAND
    slurm_command_timeout_seconds: float = 5.0
    # Kubernetes: pods count under the workload that owns them (agent.k8s).
    k8s_attribution: bool = False
    # The kubelet's PodResources socket.
    k8s_pod_resources_socket: Path = DEFAULT_SOCKET
    # Resources whose device ids are GPUs ("*" at the end: a prefix).
    k8s_gpu_resources: tuple[str, ...] = DEFAULT_RESOURCES
    # Pod metadata: from *.json pod files in this directory when set, else
    # from the API server (in-cluster credentials, or k8s_kubeconfig).
    k8s_pod_metadata_dir: Path | None = None
    k8s_kubeconfig: Path | None = None
    # "<label key>=<Kind>" rules, first match wins (agent.k8s.workload).
    k8s_workload_labels: tuple[str, ...] = DEFAULT_LABEL_RULES
    # Seconds between reads of the kubelet's GPU assignments.
    k8s_refresh_seconds: float = 10.0
    # Pod label naming the actor (agent.actors); "" (default): the namespace.
    k8s_actor_label: str = ""
    # Pod annotation naming the actor; takes precedence over the label.
    k8s_actor_annotation: str = ""
    # Actors file (agent.actors): local keys -> organisations, and what reports
    # publish about them; none: reports carry no actor (read as unknown).
    actors_file: Path | None = None
    # "open": keep GPUs running without a lease; "closed": halt locally.
    fail_mode: str = "open"
    # Seconds after start before a missing lease counts (fail_mode "closed").
    lease_grace_seconds: float = 30.0
    # Authority public keys (PEM) whose approvals a RESUME must carry, from at
    # least `quorum` distinct keys. None: the collector's signature suffices
    # (the collector issues a RESUME only on a quorum).
    authority_keys: tuple[Path, ...] = ()
    quorum: int = 2
    # How a halt stops GPU processes: "signal" (SIGSTOP/SIGCONT), "slurm"
    # (scontrol suspend/resume <job>) or "command" (the templates below).
    scheduler: str = "signal"
    # scheduler "command": argv templates with {job} and/or {pid} placeholders.
    suspend_command: str = ""
    resume_command: str = ""
    # TERMINATE: seconds from SIGTERM to SIGKILL when the directive gives none.
    terminate_grace_seconds: float = 10.0
    boot_id_path: Path = Path("/proc/sys/kernel/random/boot_id")
    # Reconnect delay: full jitter between min and an exponentially growing cap.
    backoff_min_seconds: float = 0.5
    backoff_max_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not self.node_id or len(self.node_id) > 128 or not set(self.node_id) <= _NODE_ID_CHARS:
            raise _ValueError(
                "node_id",
                self.node_id,
                "1-128 characters of letters, digits, '-', '_', '.', ':'",
            )
        if not all(_host_port(t.strip()) for t in self.collector.split(",")):
            raise _ValueError(
                "collector", self.collector, "HOST:PORT[,HOST:PORT...] with ports 1..65535"
            )
        if not 0.0 < self.interval_seconds <= MAX_INTERVAL_SECONDS:
            raise _ValueError(
                "interval_seconds",
                self.interval_seconds,
                f"a number of seconds above 0 and at most {MAX_INTERVAL_SECONDS:g}",
            )
        check_range("max_unacked", self.max_unacked, 1, 10_000_000)
        check_range("max_in_flight", self.max_in_flight, 1, 65_536)
        if not 0 <= self.metrics_port <= 65535:
            raise _ValueError("metrics_port", self.metrics_port, "a port 0..65535 (0: off)")
        if not self.metrics_address:
            raise _ValueError("metrics_address", self.metrics_address, "a host or address")
        if self.backend not in BACKENDS:
            raise _ValueError("backend", self.backend, " or ".join(repr(b) for b in BACKENDS))
        if self.backend == "fake" and self.scenario is None:
            raise _ValueError("scenario", None, "a scenario file when backend is 'fake'")
        if self.fail_mode not in FAIL_MODES:
            raise _ValueError("fail_mode", self.fail_mode, "'open' or 'closed'")
        if self.fail_mode == "closed" and self.collector_key is None:
            raise _ValueError(
                "collector_key",
                None,
                "the collector's public key when fail_mode is 'closed' (it verifies leases)",
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise _ValueError("tls_key", self.tls_key, "tls_cert and tls_key together")
        if self.insecure_plaintext and (self.tls_ca or self.tls_cert):
            raise _ValueError(
                "insecure_plaintext", True, "false when tls_ca or tls_cert is set (choose one)"
            )
        if not self.cluster or len(self.cluster) > 128:
            raise _ValueError("cluster", self.cluster, "1-128 characters")
        self._check_enforcement()
        self._check_attribution()
        check_range("backoff_min_seconds", self.backoff_min_seconds, 0.0, 3600.0, above_low=True)
        check_range("backoff_max_seconds", self.backoff_max_seconds, 0.0, 3600.0, above_low=True)
        if not self.backoff_max_seconds >= self.backoff_min_seconds:
            raise _ValueError(
                "backoff_max_seconds",
                self.backoff_max_seconds,
                f"a number of seconds >= backoff_min_seconds ({self.backoff_min_seconds:g})",
            )

    def _check_enforcement(self) -> None:
        check_range("lease_grace_seconds", self.lease_grace_seconds, 0.0, 86_400.0)
        check_range("quorum", self.quorum, 1, 1000)
        if self.authority_keys and self.quorum > len(self.authority_keys):
            raise _ValueError(
                "quorum",
                self.quorum,
                f"at most the number of authority_keys ({len(self.authority_keys)})",
            )
        if self.scheduler not in SCHEDULERS:
            raise _ValueError("scheduler", self.scheduler, " or ".join(map(repr, SCHEDULERS)))
        if self.scheduler == "command":
            for key in ("suspend_command", "resume_command"):
                if not getattr(self, key).strip():
                    raise _ValueError(
                        key, getattr(self, key), "a command when scheduler is 'command'"
                    )
        if not 0 <= self.terminate_grace_seconds <= 86400:
            raise _ValueError(
                "terminate_grace_seconds", self.terminate_grace_seconds, "0..86400 seconds"
            )

    def _check_attribution(self) -> None:
        if self.slurm_show_job_command:
            try:
                command_template(self.slurm_show_job_command)
            except ConfigError as exc:
                raise _ValueError(
                    "slurm_show_job_command", self.slurm_show_job_command, "a command with {job}"
                ) from exc
        check_range(
            "slurm_command_timeout_seconds",
            self.slurm_command_timeout_seconds,
            0.0,
            300.0,
            above_low=True,
        )
        try:
            parse_rules(self.k8s_workload_labels)
        except ConfigError as exc:
            raise _ValueError(
                "k8s_workload_labels", self.k8s_workload_labels, "'<label key>=<Kind>' entries"
            ) from exc
        if not self.k8s_gpu_resources or not all(self.k8s_gpu_resources):
            raise _ValueError("k8s_gpu_resources", self.k8s_gpu_resources, "resource names")
        check_range("k8s_refresh_seconds", self.k8s_refresh_seconds, 0.0, 3600.0, above_low=True)

    @property
    def spool_path(self) -> Path:
        return self.state_dir / "spool.sqlite3"


def load_agent_config(
    path: Path | None, overrides: Mapping[str, object] | None = None
) -> AgentConfig:
    """``[agent]`` of ``path`` (optional) with ``overrides`` on top.

    Overrides whose value is None are ignored (a flag that was not given).
    Raises ConfigError naming the file (or the flag/environment setting),
    the key and the expected value.
    """
    return load_section(AgentConfig, path, SECTION, overrides)
