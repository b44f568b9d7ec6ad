"""Scenario files: the shipped demo, the test scenarios, and every mistake named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.attribution import start_time
from agent.fakenvml import load_scenario, parse_scenario
from agent.fakenvml.procfs import materialize, write_job_metadata
from agent.fakenvml.scenario import Job
from protos import devices
from protos.errors import ConfigError

ROOT = Path(__file__).parents[3]
DEMO = ROOT / "deploy" / "scenarios" / "demo.yaml"
DATA = ROOT / "tests" / "data" / "scenarios"


def test_demo_scenario_has_what_the_demo_needs() -> None:
    demo = load_scenario(DEMO)
    assert demo.duration_seconds == 60
    assert len(demo.nodes) >= 16
    assert all(len(n.gpus) == 8 for n in demo.nodes)
    models = {g.model.name for n in demo.nodes for g in n.gpus}
    assert {
        "NVIDIA H100 80GB HBM3",
        "NVIDIA H200",
        "NVIDIA A100-SXM4-80GB",
        "NVIDIA L40S",
    } <= models
    unknown = [m for m in models if devices.lookup(m) is None]
    assert len(unknown) == 1
    assert [n.id for n in demo.nodes if n.silent_at == 30] == ["l40s-00"]
    lost = [(n.id, f.gpu, f.at) for n in demo.nodes for f in n.faults if f.kind == "gpu_lost"]
    assert lost == [("h100-03", 5, 20)]
    assert {j.scheduler for j in demo.jobs} >= {"slurm", "kubernetes", "systemd"}
    assert len(demo.jobs) >= 6
    # A fine-tune that descends from another fine-tune.
    jobs = {j.id: j for j in demo.jobs}
    assert jobs["4250"].parents == ("4243",)
    assert jobs["4243"].parents == ("4242",)
    # The density/cumulative rules of the demo pack rest on this job: 16 H100s at ~90 %.
    pretrain = jobs["4242"]
    assert len(pretrain.nodes) * len(pretrain.gpu_indices or ()) == 16
    assert pretrain.utilization_at(30) > 85


@pytest.mark.parametrize("name", ["mixed.yaml", "faults.yaml", "schedulers.yaml"])
def test_test_scenarios_load(name: str) -> None:
    scenario = load_scenario(DATA / name)
    assert scenario.source == str(DATA / name)


def test_groups_of_nodes_and_gpu_indices() -> None:
    s = parse_scenario(
        {
            "name": "g",
            "duration_seconds": 10,
            "nodes": [
                {
                    "id_prefix": "x-",
                    "count": 3,
                    "start_index": 9,
                    "gpus": [{"model": "NVIDIA L4", "count": 2}, {"model": "NVIDIA H100 PCIe"}],
                }
            ],
            "jobs": [{"id": "1", "node_prefix": "x-", "count": 2, "gpus_per_node": 2}],
        }
    )
    assert [n.id for n in s.nodes] == ["x-09", "x-10", "x-11"]
    assert [(g.index, g.model.name) for g in s.nodes[0].gpus] == [
        (0, "NVIDIA L4"),
        (1, "NVIDIA L4"),
        (2, "NVIDIA H100 PCIe"),
    ]
    assert s.jobs[0].nodes == ("x-09", "x-10")
    assert s.jobs[0].gpus_on(s.nodes[0]) == (0, 1)
    assert s.jobs_on("x-11") == ()


def test_unknown_models_get_generic_figures_or_overrides() -> None:
    s = parse_scenario(
        {
            "name": "u",
            "duration_seconds": 10,
            "nodes": [
                {
                    "id": "n",
                    "gpus": [
                        {"model": "Acme X1"},
                        {"model": "Acme X2", "tdp_watts": 900, "memory_gib": 192, "gpm": True},
                    ],
                }
            ],
        }
    )
    x1, x2 = (g.model for g in s.nodes[0].gpus)
    assert (x1.tdp_watts, x1.gpm) == (300, False)
    assert (x2.tdp_watts, x2.memory_bytes, x2.gpm) == (900, 192 * 1024**3, True)


def test_utilization_interpolates_and_holds() -> None:
    job = Job(
        id="1",
        scheduler="slurm",
        nodes=("n",),
        gpu_indices=None,
        start=0,
        end=None,
        utilization=((2, 10), (4, 50), (4, 70), (8, 30)),
        tensor_fraction=0.5,
        memory_gib=1,
    )
    assert [job.utilization_at(t) for t in (0, 2, 3, 4, 6, 8, 100)] == [10, 10, 30, 50, 50, 30, 30]


def test_attributed_ids_and_parents() -> None:
    s = load_scenario(DATA / "schedulers.yaml")
    jobs = {j.id: j for j in s.jobs}
    assert jobs["train"].attributed_id == "1f0e2d3c-4b5a-4697-8a8b-9c0d1e2f3a4b"
    assert jobs["eval"].attributed_id == load_scenario(DATA / "schedulers.yaml").jobs[3].pod_uid
    assert jobs["render"].attributed_id == "render.service"
    assert jobs["notebook"].attributed_id == "unattributed"
    assert s.attributed_parents(jobs["infer"]) == (jobs["train"].pod_uid,)


def test_materialize_writes_a_procfs_tree_and_metadata(tmp_path: Path) -> None:
    s = load_scenario(DATA / "schedulers.yaml")
    pids = materialize(s, "n0", tmp_path / "proc", {"4242": 31337}, metadata_dir=tmp_path / "meta")
    assert pids["4242"] == 31337
    assert pids["4243"] == 200_001
    proc = tmp_path / "proc" / "31337"
    assert (proc / "cgroup").read_text().startswith("0::/system.slice/slurmstepd.scope/job_4242/")
    assert (proc / "cgroup").stat().st_mode & 0o777 == 0o644
    assert (proc.stat().st_mode & 0o777) == 0o755
    fields = (proc / "stat").read_text().split()
    assert len(fields) == 52
    assert start_time((proc / "stat").read_text()) == int(fields[21])
    record = json.loads((tmp_path / "meta" / "4243.json").read_text())
    assert record == {"job_id": "4243", "parent_job_ids": ["4242"], "model_id": "acme-7b-chat"}
    with pytest.raises(ConfigError, match="no node 'zz'"):
        materialize(s, "zz", tmp_path / "proc")


def test_metadata_for_one_node_only(tmp_path: Path) -> None:
    demo = load_scenario(DEMO)
    write_job_metadata(demo, tmp_path, node_id="a100-00")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch-infer@0.service.json"]


# --- mistakes ------------------------------------------------------------------------------
GOOD_NODE = '{id: "n", gpus: [{model: "NVIDIA H100 80GB HBM3", count: 2}]}'


def scenario_text(nodes: str = GOOD_NODE, jobs: str = "[]", extra: str = "") -> str:
    return f"name: t\nduration_seconds: 60\nnodes: [{nodes}]\njobs: {jobs}\n{extra}"


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("nodes: [", "not valid YAML", ""),
        ("- 1\n- 2\n", "(top level)", "a mapping"),
        ("duration_seconds: 5\nnodes: []\n", "(top level)", "missing required key 'name'"),
        (scenario_text(extra="colour: red\n"), "(top level)", "only the keys"),
        (scenario_text().replace("60", "-1"), "duration_seconds", "a number > 0"),
        (scenario_text().replace("60", '"soon"'), "duration_seconds", "a number"),
        (scenario_text(extra="interval_seconds: 120\n"), "interval_seconds", "<= 60"),
        (scenario_text(nodes="{id: n}"), "nodes[0]", "missing required key 'gpus'"),
        (
            scenario_text(nodes='{id: n, gpus: [{model: "NVIDIA L4", count: -2}]}'),
            "nodes[0].gpus[0].count",
            "an integer from 1 to 64",
        ),
        (
            scenario_text(nodes='{id: n, gpus: [{model: "NVIDIA L4", mig: true}]}'),
            "nodes[0].gpus[0].mig",
            "has no MIG",
        ),
        (
            scenario_text(nodes='{id_prefix: "a-", gpus: [{model: "NVIDIA L4"}]}'),
            "nodes[0]",
            "missing required key 'count'",
        ),
        (
            scenario_text(nodes=f"{GOOD_NODE}, {GOOD_NODE}"),
            "nodes[1]",
            "node id 'n' appears twice",
        ),
        (
            scenario_text(nodes='{id: "bad id", gpus: [{model: "NVIDIA L4"}]}'),
            "nodes[0].id",
            "letters, digits",
        ),
        (
            scenario_text(
                nodes='{id: n, gpus: [{model: "NVIDIA L4", external_power_limit_watts: 10}]}'
            ),
            "nodes[0].gpus[0].external_power_limit_watts",
            "at least the minimum power limit (40 W)",
        ),
        (
            scenario_text(
                nodes=GOOD_NODE[:-1] + ", faults: [{kind: process_struct_mismatch, gpu: 0}]}"
            ),
            "nodes[0].faults[0]",
            "only the keys at, kind, until",
        ),
        (
            scenario_text(nodes=GOOD_NODE[:-1] + ", faults: [{kind: meteor}]}"),
            "nodes[0].faults[0].kind",
            "one of gpu_lost",
        ),
        (
            scenario_text(nodes=GOOD_NODE[:-1] + ", faults: [{kind: gpu_lost, gpu: 2}]}"),
            "nodes[0].faults[0].gpu",
            "an integer from 0 to 1",
        ),
        (
            scenario_text(
                nodes=GOOD_NODE[:-1] + ", faults: [{kind: not_supported, functions: [nvmlFoo]}]}"
            ),
            "nodes[0].faults[0].functions[0]",
            "an NVML function the fake implements",
        ),
        (
            scenario_text(
                nodes=GOOD_NODE[:-1] + ", faults: [{kind: nvml_not_loaded, at: 5, until: 5}]}"
            ),
            "nodes[0].faults[0].until",
            "a number > 5",
        ),
        (
            scenario_text(extra="faults: [{node: zz, kind: silent}]\n"),
            "faults[0].node",
            "the id of a node",
        ),
        (scenario_text(jobs='[{id: "1", nodes: [zz]}]'), "jobs[0].nodes[0]", "the id of a node"),
        (scenario_text(jobs='[{id: "1"}]'), "jobs[0]", "exactly one of 'nodes' or 'node_prefix'"),
        (scenario_text(jobs='[{id: "x", nodes: [n]}]'), "jobs[0].id", "a numeric Slurm job id"),
        (
            scenario_text(jobs='[{id: "1", nodes: [n], utilization: [[0, 10], [5, 150]]}]'),
            "jobs[0].utilization[1][1]",
            "a number <= 100",
        ),
        (
            scenario_text(jobs='[{id: "1", nodes: [n], utilization: [[5, 10], [1, 20]]}]'),
            "jobs[0].utilization[1][0]",
            "points in order",
        ),
        (
            scenario_text(jobs='[{id: "1", nodes: [n], utilization: [5]}]'),
            "jobs[0].utilization[0]",
            "a pair",
        ),
        (
            scenario_text(jobs='[{id: "1", nodes: [n], start: 10, end: 10}]'),
            "jobs[0].end",
            "a number > 10",
        ),
        (
            scenario_text(jobs='[{id: "1", nodes: [n], gpus_per_node: 3}]'),
            "jobs[0].gpus_per_node",
            "an integer from 1 to 2",
        ),
        (
            scenario_text(jobs='[{id: "1", nodes: [n], gpu_indices: [0, 0]}]'),
            "jobs[0].gpu_indices[1]",
            "listed twice",
        ),
        (
            scenario_text(jobs='[{id: "1", nodes: [n]}, {id: "1", nodes: [n]}]'),
            "jobs[1].id",
            "appears twice",
        ),
        (
            scenario_text(
                jobs='[{id: "1", nodes: [n], parents: ["2"]}, {id: "2", nodes: [n], parents: [1]}]'
            ),
            "jobs[0].parents",
            "is a cycle",
        ),
        (
            scenario_text(jobs='[{id: "1", nodes: [n], tensor_fraction: 1.5}]'),
            "jobs[0].tensor_fraction",
            "a number <= 1",
        ),
        (
            scenario_text(jobs='[{id: "1", nodes: [n], unit: "x.service"}]'),
            "jobs[0].unit",
            "only systemd jobs",
        ),
        (
            scenario_text(jobs='[{id: "k", scheduler: kubernetes, nodes: [n], pod_uid: "nope"}]'),
            "jobs[0].pod_uid",
            "a pod UID",
        ),
        (
            scenario_text(jobs='[{id: "s", scheduler: systemd, nodes: [n], unit: "s.timer"}]'),
            "jobs[0].unit",
            "ending in .service or .scope",
        ),
        (
            scenario_text(jobs='[{id: "1", nodes: [n], scheduler: pbs}]'),
            "jobs[0].scheduler",
            "one of slurm, kubernetes, systemd, none",
        ),
        (
            scenario_text(jobs='[{id: "1", nodes: [n], cgroup: v3}]'),
            "jobs[0].cgroup",
            "one of v1, v2",
        ),
    ],
)
def test_mistakes_name_file_key_and_expectation(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert key in message
    assert expected in message


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read scenario"):
        load_scenario(tmp_path / "missing.yaml")
