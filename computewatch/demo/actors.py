"""Actors in the demo: who holds the compute, and the regulator's total
across two operators.

The demo's operator publishes its actors as its actors file says
(``deploy/scenarios/demo-actors.yaml``): Acme by its LEI, Beta Labs by a
salted commitment. A second, smaller operator (``demo-provider-b.yaml``, its
own collector, keys, log and salt) runs more of Beta's work and some of
Acme's. At the end a regulator, with each operator's public keys and copy of
its log, runs ``computewatch audit actors`` over both logs; the operators
open Beta's commitments (salt and name), so Beta is seen once across both.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from agent.actors import load_policy
from computewatch.demo.auditor import Auditor
from computewatch.demo.cluster import Cluster, start_cluster
from computewatch.render import interval, si
from protos.computewatch.v1 import status_pb2

SCENARIOS = Path(__file__).resolve().parents[2] / "deploy" / "scenarios"
PROVIDER_B = SCENARIOS / "demo-provider-b.yaml"


def actors_file_for(scenario: Path) -> Path | None:
    """``<scenario>-actors.yaml`` beside the scenario, when there is one."""
    candidate = scenario.with_name(f"{scenario.stem}-actors.yaml")
    return candidate if candidate.exists() else None


def actor_names(actors_file: Path | None) -> dict[str, str]:
    """Published actor id -> organisation (the operator's own view; the log and
    the metrics carry only the published ids)."""
    if actors_file is None:
        return {}
    policy = load_policy(actors_file)
    return {policy.published(key): org.name for key, org in policy.mapping.items()}


def label(actor: str, names: Mapping[str, str]) -> str:
    name = names.get(actor)
    return f"{name} ({actor[:14]})" if name else actor[:30]


def actor_lines(st: status_pb2.ClusterStatus, names: Mapping[str, str]) -> list[str]:
    """One line per actor for the live view."""
    lines = []
    for a in sorted(st.actors, key=lambda a: -a.cumulative_flop_upper_bound):
        estimate = a.cumulative_flop_estimate if a.HasField("cumulative_flop_estimate") else None
        firing = f"  CROSSED {','.join(a.firing_rules)}" if a.firing_rules else ""
        lines.append(
            f"actor {label(a.actor_id, names):<34} "
            f"{interval(estimate, a.cumulative_flop_upper_bound, 'FLOP')}"
            f"  {len(a.job_ids)} jobs, {a.gpus} GPUs{firing}"
        )
    return lines


def actor_summary(st: status_pb2.ClusterStatus, names: Mapping[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "actor": a.actor_id,
            "organisation": names.get(a.actor_id),
            "job_ids": list(a.job_ids),
            "jobs": sorted(j.job_id for j in st.jobs if j.actor == a.actor_id),
            "cumulative_flop": {
                "estimate": a.cumulative_flop_estimate
                if a.HasField("cumulative_flop_estimate")
                else None,
                "upper_bound": a.cumulative_flop_upper_bound,
                "unmeasured_gpu_seconds": a.unmeasured_gpu_seconds,
                "method": a.method,
            },
            "firing_rules": list(a.firing_rules),
        }
        for a in st.actors
    ]


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    lines = ["  actors (all their jobs together):"]
    for a in result.get("actors", []):
        c = a["cumulative_flop"]
        who = f"{a['organisation']} ({a['actor'][:14]})" if a["organisation"] else a["actor"]
        lines.append(
            f"    {who:<34} "
            + interval(c["estimate"], c["upper_bound"], "FLOP", c["unmeasured_gpu_seconds"])
            + f" over {len(a['jobs'])} jobs"
            + (f"; CROSSED {', '.join(a['firing_rules'])}" if a["firing_rules"] else "")
        )
    cross = result.get("regulator", {}).get("across_operators")
    if cross:
        lines.append(
            "  regulator, across both operators' logs (`computewatch audit actors`,"
            " commitments opened by the operators):"
        )
        for a in cross.get("actors", []):
            c = a["cumulative_flop"]
            where = ", ".join(
                f"{name} {si(v['cumulative_flop']['estimate'] or 0.0, 'FLOP')}"
                for name, v in a["logs"].items()
            )
            lines.append(
                f"    {a['actor'][:34]:<34} "
                + interval(c["estimate"], c["upper_bound"], "FLOP")
                + f"  ({where})"
            )
    return lines


class SecondOperator:
    """The second operator: its own cluster, collector and regulator copy."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.cluster: Cluster | None = None
        self.auditor: Auditor | None = None

    async def start(self) -> None:
        from agent.fakenvml.scenario import load_scenario

        self.cluster = await start_cluster(
            load_scenario(PROVIDER_B),
            PROVIDER_B,
            self.workdir,
            rule_packs=("operator-default",),
            actors_file=actors_file_for(PROVIDER_B),
        )
        self.auditor = Auditor(
            self.cluster.collector.address, self.cluster.keys, self.workdir / "regulator-copy"
        )
        await self.auditor.start()

    async def finish(self) -> dict[str, Any]:
        assert self.cluster is not None, "start() first"
        assert self.auditor is not None, "start() first"
        return await self.auditor.finish(self.cluster.collector.config.checkpoint_interval_seconds)

    async def stop(self) -> None:
        if self.auditor is not None:
            await self.auditor.stop()
        if self.cluster is not None:
            await self.cluster.stop()


def logs_file(path: Path, logs: Mapping[str, tuple[Cluster, Path, Path | None]]) -> Path:
    """The regulator's logs file (``computewatch.audit.actors.load_logs``); each
    operator opens its commitments with its salt and the names behind them."""
    entries = []
    for name, (cluster, copy, actors_file) in logs.items():
        entry: dict[str, Any] = {
            "name": name,
            "copy": str(copy),
            "collector_key": str(cluster.keys.collector_pub),
            "node_keys": str(cluster.keys.nodes),
            # Approvals and manual halts in the log are signed by authorities.
            "authority_keys": str(cluster.keys.authorities),
        }
        if actors_file is not None:
            doc = yaml.safe_load(actors_file.read_text())
            names = sorted(
                {f"lei:{o['lei']}" if o.get("lei") else f"org:{o['organisation']}"
                 for o in doc.get("actors", [])}
            )  # fmt: skip
            entry["open"] = {"salt": doc["salt"], "names": names}
        entries.append(entry)
    path.write_text(yaml.safe_dump({"logs": entries}, sort_keys=False))
    return path


async def cross_log_total(logs: Path) -> dict[str, Any]:
    """Run ``computewatch audit actors --json`` as the regulator would."""
    argv = [sys.executable, "-m", "computewatch.cli", "--log-level", "warning"]
    proc = await asyncio.create_subprocess_exec(
        *argv, "audit", "actors", str(logs), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    result: dict[str, Any] = {
        "command": f"computewatch audit actors {logs} --json",
        "exit": proc.returncode,
    }
    try:
        result.update(json.loads(out))
    except ValueError:
        result["error"] = (out + err).decode(errors="replace")[-2000:]
    return result
