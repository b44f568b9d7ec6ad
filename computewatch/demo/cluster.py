"""Set up and tear down the simulated cluster: keys, enrolment, collector,
stand-in processes, fake procfs trees and one real Agent per node."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry

from agent.attribution_setup import Attribution, register_attribution_metrics
from agent.config import AgentConfig
from agent.fakenvml.spec import Scenario
from agent.jobmeta import JobMetadataDir
from agent.metrics import serve_metrics
from agent.runner import Agent
from collector.config import CollectorConfig
from collector.nodes.registry import enroll
from collector.server import Collector, create_server
from computewatch.demo.fakenode import build_fake_node
from computewatch.demo.processes import StandIns
from computewatch.tlsca import init_site
from protos.keys import PrivateKey, write_private_key, write_public_key
from protos.tls import channel_credentials

log = logging.getLogger(__name__)

AUTHORITIES = ("ministry", "auditor-general", "operator-board")
QUORUM = 2


def _keypair(directory: Path, name: str) -> tuple[PrivateKey, Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    key = PrivateKey.generate()
    priv, pub = directory / f"{name}.key", directory / f"{name}.pub"
    write_private_key(key, priv, overwrite=True)
    write_public_key(key.public, pub)
    return key, priv, pub


@dataclass
class NodeRun:
    node_id: str
    agent: Agent
    stop: asyncio.Event
    task: asyncio.Task[None] | None = None
    silent_at: float | None = None


@dataclass(frozen=True)
class KeyPaths:
    """Where the demo keeps keys, laid out as a regulator would receive them."""

    root: Path

    @property
    def collector_pub(self) -> Path:
        return self.root / "collector.pub"

    @property
    def nodes(self) -> Path:
        return self.root / "nodes"

    @property
    def authorities(self) -> Path:
        return self.root / "authorities"

    @property
    def regulator(self) -> Path:
        return self.root / "regulator.key"

    @property
    def tls(self) -> Path:
        """The demo's private CA and certificates (``computewatch tls init``)."""
        return self.root / "tls"

    @property
    def tls_ca(self) -> Path:
        """The demo CA's certificate: clients (the regulator, authorities) trust it."""
        return self.tls / "ca.pem"


@dataclass
class Cluster:
    workdir: Path
    scenario: Scenario
    collector: Collector
    authority_keys: dict[str, PrivateKey]
    regulator_key: PrivateKey
    keys: KeyPaths
    nodes: list[NodeRun] = field(default_factory=list)
    stand_ins: StandIns = field(default_factory=StandIns)
    start: float = 0.0
    # With metrics on: "host:port" of the collector's /metrics, and of each agent's.
    collector_metrics: str | None = None
    agent_metrics: dict[str, str] = field(default_factory=dict)
    _metrics_servers: list[WSGIServer] = field(default_factory=list)

    @property
    def ca_cert(self) -> Path:
        """The demo's CA certificate: it signed the collector's TLS certificate
        (gRPC and /metrics)."""
        return self.keys.tls_ca

    def channel(self) -> grpc.aio.Channel:
        """A TLS channel to the collector, trusting the demo's CA."""
        creds = channel_credentials(self.ca_cert)
        return grpc.aio.secure_channel(self.collector.address, creds)

    async def stop(self) -> None:
        for run in self.nodes:
            run.stop.set()
        for run in self.nodes:
            if run.task is not None:
                with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                    await asyncio.wait_for(run.task, 5.0)
        for server in self._metrics_servers:
            server.shutdown()
            server.server_close()
        await self.collector.stop(0.5)
        self.stand_ins.close()


def _free_port(address: str) -> int:
    """A port free now on ``address`` (the collector's config cannot say 'any')."""
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


async def start_cluster(
    scenario: Scenario,
    scenario_path: Path,
    workdir: Path,
    *,
    rule_packs: tuple[str, ...],
    metrics_address: str | None = None,
    actors_file: Path | None = None,
) -> Cluster:
    """Start the cluster; with ``metrics_address`` the collector and every agent
    serve /metrics on their own port of that (loopback) address."""
    paths = KeyPaths(workdir / "keys")
    _, collector_key, collector_pub = _keypair(paths.root, "collector")
    regulator, _, regulator_pub = _keypair(paths.root, "regulator")
    authorities: dict[str, PrivateKey] = {}
    authority_pubs: list[Path] = []
    for name in AUTHORITIES:
        key, _, pub = _keypair(paths.authorities, name)
        authorities[name] = key
        authority_pubs.append(pub)
    site = init_site(paths.tls, force=True)
    ledger = workdir / "ledger.db"
    node_keys: dict[str, tuple[PrivateKey, Path]] = {}
    for node in scenario.nodes:
        key, priv, _ = _keypair(paths.nodes, node.id)
        enroll(ledger, node.id, key.public)
        node_keys[node.id] = (key, priv)
    config = CollectorConfig(
        ledger=ledger,
        key=collector_key,
        listen="127.0.0.1:0",
        interval_seconds=scenario.interval_seconds,
        tick_seconds=0.25,
        rule_packs=rule_packs,
        authority_keys=tuple(authority_pubs),
        quorum=QUORUM,
        lease_seconds=max(5.0, 5 * scenario.interval_seconds),
        effective_timeout_seconds=10.0,
        checkpoint_interval_seconds=2.0,
        require_auth=True,
        auditor_keys=(regulator_pub,),
        metrics_address=metrics_address or "127.0.0.1",
        metrics_port=_free_port(metrics_address) if metrics_address else 0,
        tls_cert=site["collector"].cert,
        tls_key=site["collector"].key,
    )
    service, _ = await create_server(config)
    cluster = Cluster(workdir, scenario, service, authorities, regulator, paths)
    if metrics_address:
        cluster.collector_metrics = f"{metrics_address}:{config.metrics_port}"
    cluster.start = time.time()
    for node in scenario.nodes:
        home = workdir / "nodes" / node.id
        fake = build_fake_node(
            scenario, node.id, home / "proc", home / "jobs", cluster.stand_ins, start=cluster.start
        )
        agent_config = AgentConfig(
            node_id=node.id,
            key=node_keys[node.id][1],
            collector=service.address,
            collector_key=collector_pub,
            tls_ca=site["ca"].cert,
            interval_seconds=scenario.interval_seconds,
            state_dir=home / "state",
            backend="fake",
            scenario=scenario_path,
            procfs_root=fake.procfs_root,
            job_metadata_dir=fake.metadata_dir,
            authority_keys=tuple(authority_pubs),
            quorum=QUORUM,
            backoff_min_seconds=0.2,
            backoff_max_seconds=2.0,
            actors_file=actors_file,
            slurm_show_job_command="",  # the fake nodes have no scontrol
        )
        registry = CollectorRegistry()
        # The agent's own wiring (computewatch/cli_agent.py), so the demo's
        # agents export computewatch_agent_attribution_errors_total too.
        attribution = Attribution(agent_config)
        register_attribution_metrics(registry, attribution)
        agent = Agent(
            agent_config,
            fake.backend,
            attribution.attributor,
            JobMetadataDir(fake.metadata_dir),
            node_keys[node.id][0],
            registry=registry,
        )
        if metrics_address:
            server, _ = serve_metrics(registry, metrics_address, 0)
            cluster._metrics_servers.append(server)
            cluster.agent_metrics[node.id] = f"{metrics_address}:{server.server_address[1]}"
        cluster.nodes.append(NodeRun(node.id, agent, asyncio.Event(), silent_at=node.silent_at))
    for run in cluster.nodes:
        run.task = asyncio.create_task(run.agent.run(run.stop))
    return cluster
