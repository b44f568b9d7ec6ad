"""Two real collectors, each with its agents, keys, ledger and log; a
regulator subscribes to both with only public keys and totals per actor
across them with ``computewatch audit actors``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.fakenvml.scenario import load_scenario
from computewatch.cli import cli
from computewatch.demo.actors import logs_file
from computewatch.demo.cluster import Cluster, start_cluster

ACTORS = """
publish: public_id
salt: {salt}
actors:
  - {{organisation: Acme AI Ltd, lei: 5493001KJTIIGC8Y1R12, match: ["uid:1000"]}}
  - {{organisation: Beta Labs, match: ["uid:2000"]}}
"""
SCENARIO = """
name: {name}
duration_seconds: 60
interval_seconds: 0.5
nodes:
  - {{id: "{name}-n0", gpus: [{{model: "NVIDIA H100 80GB HBM3", count: 2}}]}}
jobs:
  - {{id: "11", uid: 1000, nodes: ["{name}-n0"], gpu_indices: [0], utilization: [[0, 90]],
     tensor_fraction: 0.8, memory_gib: 10}}
  - {{id: "12", uid: 2000, nodes: ["{name}-n0"], gpu_indices: [1], utilization: [[0, 90]],
     tensor_fraction: 0.8, memory_gib: 10}}
"""


def test_a_regulator_totals_actors_over_two_collectors_logs(tmp_path: Path) -> None:
    files: dict[str, tuple[Path, Path]] = {}
    for name, salt in (("op-a", "aa" * 16), ("op-b", "bb" * 16)):
        scenario, actors = tmp_path / f"{name}.yaml", tmp_path / f"{name}-actors.yaml"
        scenario.write_text(SCENARIO.format(name=name))
        actors.write_text(ACTORS.format(salt=salt))
        files[name] = (scenario, actors)

    async def run() -> dict[str, tuple[Cluster, Path, Path]]:
        clusters: dict[str, tuple[Cluster, Path, Path]] = {}
        try:
            for name, (scenario, actors) in files.items():
                cluster = await start_cluster(
                    load_scenario(scenario),
                    scenario,
                    tmp_path / name,
                    rule_packs=(),
                    actors_file=actors,
                )
                clusters[name] = (cluster, tmp_path / f"copy-{name}", actors)
            await asyncio.sleep(4.0)  # a few reports and a checkpoint each
            for cluster, copy, _ in clusters.values():
                keys = cluster.keys
                args = [
                    "audit", "subscribe", "--collector", cluster.collector.address,
                    "--key", str(keys.regulator), "--out", str(copy),
                    "--collector-key", str(keys.collector_pub), "--node-keys", str(keys.nodes),
                    "--authority-keys", str(keys.authorities), "--once",
                    "--tls-ca", str(keys.tls_ca),
                ]  # fmt: skip
                res = await asyncio.to_thread(CliRunner().invoke, cli, args)
                assert res.exit_code == 0, res.output
        finally:
            for cluster, _, _ in clusters.values():
                await cluster.stop()
        return clusters

    clusters = asyncio.run(run())
    path = logs_file(tmp_path / "logs.yaml", clusters)
    res = CliRunner().invoke(cli, ["audit", "actors", str(path), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [(log["name"], log["verified"]) for log in doc["logs"]] == [
        ("op-a", True),
        ("op-b", True),
    ]
    by = {a["actor"]: a for a in doc["actors"]}
    assert set(by) == {"lei:5493001KJTIIGC8Y1R12", "org:Beta Labs"}
    for actor in by.values():
        assert set(actor["logs"]) == {"op-a", "op-b"}
        total = actor["cumulative_flop"]
        parts = [v["cumulative_flop"] for v in actor["logs"].values()]
        assert total["estimate"] > 0
        assert total["estimate"] == pytest.approx(sum(p["estimate"] for p in parts))
        assert total["upper_bound"] >= total["estimate"]
    beta = by["org:Beta Labs"]["logs"]
    # Each operator published Beta under its own salt: two commitments, one actor.
    assert beta["op-a"]["published_as"] != beta["op-b"]["published_as"]
    assert all(v["published_as"].startswith("c:") for v in beta.values())
