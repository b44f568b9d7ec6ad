"""``computewatch agent``: run the node agent, or show its resolved configuration.

Every setting comes from, in order of precedence: a flag, an environment
variable ``COMPUTEWATCH_AGENT_<KEY>``, the ``[agent]`` table of ``--config``,
the default.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from prometheus_client import CollectorRegistry

from agent.config import BACKENDS, FAIL_MODES, SCHEDULERS, AgentConfig, load_agent_config
from agent.nvml.backend import GpuBackend
from computewatch.clitools import translate_errors
from computewatch.demo.processes import StandIns

log = logging.getLogger(__name__)

DEFAULT_PROCFS = Path("/proc")

F = TypeVar("F", bound=Callable[..., Any])
_ENV = "COMPUTEWATCH_AGENT_"
_PATH = click.Path(path_type=Path)

# (flag, config key, click type, help)
_SETTINGS: list[tuple[str, str, Any, str]] = [
    ("--node-id", "node_id", str, "Node id enrolled at the collector."),
    ("--collector", "collector", str, "Collector address, HOST:PORT."),
    ("--key", "key", _PATH, "Node private key (PEM, mode 0600)."),
    ("--collector-key", "collector_key", _PATH, "Collector public key (verifies directives)."),
    ("--tls-ca", "tls_ca", _PATH, "CA certificate that signed the collector's (PEM)."),
    ("--tls-cert", "tls_cert", _PATH, "Client certificate for mutual TLS (PEM)."),
    ("--tls-key", "tls_key", _PATH, "Key of --tls-cert (PEM)."),
    (
        "--insecure-plaintext",
        "insecure_plaintext",
        bool,
        "true: talk to the collector without TLS (loudly logged).",
    ),
    ("--cluster", "cluster", str, "Cluster name; directives for another are refused."),
    ("--interval", "interval_seconds", float, "Seconds between samples [default: 1]."),
    ("--state-dir", "state_dir", _PATH, "Spool and persistent state directory."),
    ("--max-unacked", "max_unacked", int, "Unacknowledged reports kept [default: 10000]."),
    ("--max-in-flight", "max_in_flight", int, "Reports on the wire unacknowledged."),
    ("--metrics-address", "metrics_address", str, "Address of /metrics."),
    ("--metrics-port", "metrics_port", int, "Port of /metrics; 0 disables it [default: 0]."),
    ("--backend", "backend", click.Choice(BACKENDS), "GPU backend [default: nvml]."),
    ("--scenario", "scenario", _PATH, "Scenario file for --backend fake."),
    ("--procfs-root", "procfs_root", _PATH, "proc filesystem for job attribution."),
    ("--job-metadata-dir", "job_metadata_dir", _PATH, "Per-job metadata (lineage, model)."),
    (
        "--slurm-show-job-command",
        "slurm_show_job_command",
        str,
        "Array/het lookup, {job} placeholder; '' turns it off.",
    ),
    ("--k8s-attribution", "k8s_attribution", bool, "Pods count under their workload."),
    (
        "--k8s-pod-resources-socket",
        "k8s_pod_resources_socket",
        _PATH,
        "The kubelet's PodResources socket.",
    ),
    ("--k8s-pod-metadata-dir", "k8s_pod_metadata_dir", _PATH, "Pod JSON files (else the API)."),
    ("--k8s-kubeconfig", "k8s_kubeconfig", _PATH, "Kubeconfig (else in-cluster credentials)."),
    ("--k8s-actor-label", "k8s_actor_label", str, "Pod label naming the actor (else namespace)."),
    ("--k8s-actor-annotation", "k8s_actor_annotation", str, "Pod annotation naming the actor."),
    ("--actors-file", "actors_file", _PATH, "Actors file: who jobs run for, what is published."),
    ("--fail-mode", "fail_mode", click.Choice(FAIL_MODES), "Without a valid lease: run or halt."),
    (
        "--lease-grace",
        "lease_grace_seconds",
        float,
        "Seconds after start before a missing lease counts.",
    ),
    ("--quorum", "quorum", int, "Distinct authority approvals a RESUME must carry."),
    ("--scheduler", "scheduler", click.Choice(SCHEDULERS), "How a halt stops GPU processes."),
    (
        "--suspend-command",
        "suspend_command",
        str,
        "scheduler 'command': argv template, {job}/{pid}.",
    ),
    ("--resume-command", "resume_command", str, "scheduler 'command': argv template, {job}/{pid}."),
    ("--terminate-grace", "terminate_grace_seconds", float, "TERMINATE: SIGTERM to SIGKILL, s."),
    ("--boot-id-path", "boot_id_path", _PATH, "File holding the kernel boot id."),
    ("--backoff-min", "backoff_min_seconds", float, "Shortest reconnect delay, seconds."),
    ("--backoff-max", "backoff_max_seconds", float, "Longest reconnect delay, seconds."),
]


def _settings(fn: F) -> F:
    """Attach ``--config`` and one option per config key (default None: not given)."""
    for flag, key, type_, help_ in reversed(_SETTINGS):
        fn = click.option(
            flag,
            key,
            type=type_,
            default=None,
            envvar=_ENV + key.upper(),
            show_envvar=True,
            help=help_,
        )(fn)
    fn = click.option(
        "--authority-key",
        "authority_keys",
        type=_PATH,
        multiple=True,
        envvar=_ENV + "AUTHORITY_KEYS",
        show_envvar=True,
        help="Authority public key whose approvals a RESUME may carry (repeat the flag;"
        " in the variable, separate paths with ':').",
    )(fn)
    return click.option(
        "--config",
        "config_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        envvar=_ENV + "CONFIG",
        show_envvar=True,
        help="TOML file with an [agent] table.",
    )(fn)


def _resolve(config_file: Path | None, flags: dict[str, object]) -> AgentConfig:
    # A repeatable flag that was not given arrives as (): not an override.
    given = {k: (None if v == () else v) for k, v in flags.items()}
    return load_agent_config(config_file, given)


def _toml_value(value: object) -> object:
    """A config value as tomli-w writes it (paths as strings, tuples as arrays)."""
    if isinstance(value, tuple):
        return [_toml_value(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@click.group()
def agent() -> None:
    """Run the node agent."""


@agent.command("show-config")
@_settings
@translate_errors
def show_config(config_file: Path | None, **flags: object) -> None:
    """Print the configuration the agent would run with, as TOML."""
    import tomli_w

    cfg = _resolve(config_file, flags)
    table = {
        field.name: _toml_value(getattr(cfg, field.name))
        for field in dataclasses.fields(cfg)
        if getattr(cfg, field.name) is not None  # TOML has no null: unset is absent
    }
    click.echo(tomli_w.dumps({"agent": table}), nl=False)


@agent.command("run")
@_settings
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this many seconds (tests, demos). Default: run until SIGTERM/SIGINT.",
)
@translate_errors
def run_cmd(config_file: Path | None, duration: float | None, **flags: object) -> None:
    """Sample the GPUs, sign each report and stream it to the collector."""
    cfg = _resolve(config_file, flags)
    asyncio.run(run_agent(cfg, duration=duration))


def build_backend(cfg: AgentConfig, stand_ins: StandIns) -> tuple[GpuBackend, AgentConfig]:
    """The GPU backend the config names, and the config to run it with.

    With ``backend = "fake"`` the scenario's jobs get real stand-in processes
    (so enforcement signals our own processes, never an unrelated pid),
    described in a procfs tree and job metadata under the state directory, or
    in the ``procfs_root``/``job_metadata_dir`` the config names (never the
    real ``/proc``).
    """
    from agent.nvml.real import NvmlBackend

    if cfg.backend != "fake":
        return NvmlBackend(), cfg
    from agent.fakenvml.scenario import load_scenario
    from computewatch.demo.fakenode import build_fake_node

    assert cfg.scenario is not None  # AgentConfig checks it
    home = cfg.state_dir / "fake-node"
    procfs = home / "proc" if cfg.procfs_root == DEFAULT_PROCFS else cfg.procfs_root
    node = build_fake_node(
        load_scenario(cfg.scenario),
        cfg.node_id,
        procfs,
        cfg.job_metadata_dir or home / "jobs",
        stand_ins,
    )
    # A simulated node has no Slurm controller to ask about arrays.
    return node.backend, dataclasses.replace(
        cfg,
        procfs_root=node.procfs_root,
        job_metadata_dir=node.metadata_dir,
        slurm_show_job_command="",
    )


async def run_agent(cfg: AgentConfig, *, duration: float | None = None) -> None:
    """Run one agent until a signal or ``duration`` seconds."""
    from agent.attribution_setup import Attribution, register_attribution_metrics
    from agent.jobmeta import JobMetadataDir
    from agent.metrics import serve_metrics
    from agent.runner import Agent
    from protos.keys import load_private_key

    key = load_private_key(cfg.key)
    registry = CollectorRegistry()
    stand_ins = StandIns()
    backend, cfg = build_backend(cfg, stand_ins)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    timer = loop.call_later(duration, stop.set) if duration is not None else None
    server = None
    attribution = Attribution(cfg)
    register_attribution_metrics(registry, attribution)
    try:
        if cfg.metrics_port:
            server, _ = serve_metrics(
                registry,
                cfg.metrics_address,
                cfg.metrics_port,
                certfile=cfg.tls_cert,
                keyfile=cfg.tls_key,
            )
        jobmeta = JobMetadataDir(cfg.job_metadata_dir) if cfg.job_metadata_dir else None
        runner = Agent(
            cfg,
            backend,
            attribution.attributor,
            jobmeta,
            key,
            registry=registry,
            sample_in_thread=cfg.backend == "nvml",
        )
        log.info(
            "agent %s: reporting to %s every %g s (backend %s)",
            cfg.node_id,
            cfg.collector,
            cfg.interval_seconds,
            cfg.backend,
        )
        await runner.run(stop)
        log.info(
            "agent %s: stopped after %d reports (%d unacknowledged)",
            cfg.node_id,
            runner.stats.reports_sealed,
            runner.stats.unacked,
        )
    finally:
        if timer is not None:
            timer.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        if server is not None:
            server.shutdown()
            server.server_close()
        backend.close()
        attribution.close()
        stand_ins.close()
