"""``computewatch demo --serve``: keep a simulated cluster running with its
/metrics endpoints on loopback, for a real Prometheus and Grafana to watch.

No timeline runs here (no approvals, no summary): the rule packs halt what
crosses their lines and the halts stay in force, as they would in production
until authorities approve a resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from agent.fakenvml.scenario import load_scenario
from computewatch.demo.cluster import Cluster, start_cluster
from computewatch.demo.prometheus import instructions, write_prometheus_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    scenario: Path
    rule_packs: tuple[str, ...]
    workdir: Path | None = None
    # None: until SIGINT/SIGTERM.
    duration: float | None = None
    address: str = "127.0.0.1"
    scrape_interval: str = "5s"


async def serve_demo(
    opts: ServeOptions,
    out: TextIO,
    *,
    ready: Callable[[Cluster, Path], None] | None = None,
) -> None:
    """Run until a signal (or ``duration``); ``ready`` is called once the
    endpoints are up and the Prometheus files are written."""
    scenario = load_scenario(opts.scenario)
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="computewatch-demo-"))
    cluster = await start_cluster(
        scenario,
        opts.scenario,
        workdir,
        rule_packs=opts.rule_packs,
        metrics_address=opts.address,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        assert cluster.collector_metrics is not None  # metrics_address was given
        config = write_prometheus_files(
            workdir / "prometheus",
            cluster.collector_metrics,
            cluster.agent_metrics,
            collector_ca=cluster.ca_cert,
            scrape_interval=opts.scrape_interval,
        )
        print(
            f"simulated cluster {scenario.name!r}: {len(cluster.nodes)} nodes, "
            f"collector at {cluster.collector.address}",
            file=out,
        )
        print(
            instructions(
                config,
                cluster.collector_metrics,
                cluster.agent_metrics,
                collector_ca=cluster.ca_cert,
            ),
            file=out,
        )
        out.flush()
        if ready is not None:
            ready(cluster, config)
        deadline = None if opts.duration is None else time.monotonic() + opts.duration
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            _silence_due(cluster)
            cluster.stand_ins.reap()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await cluster.stop()
        if opts.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _silence_due(cluster: Cluster) -> None:
    """Stop the agents of nodes the scenario makes silent (a fault, as in the demo)."""
    t = time.time() - cluster.start
    for run in cluster.nodes:
        if run.silent_at is not None and t >= run.silent_at and not run.stop.is_set():
            run.stop.set()
            log.warning("node %s stops reporting (scenario fault: silent)", run.node_id)
