"""A regulator totals one organisation across two operators' logs.

Two collectors (two real ledgers with their own Merkle logs, Audit services
and keys) each log signed reports of jobs that name their actor; the
regulator subscribes to both with only public keys, then ``audit actors``
verifies each copy and totals per actor across them: an LEI matches as it is,
a salted commitment only once its operator opens it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from computewatch.audit.actors import open_commitments
from computewatch.cli import cli
from protos import devices, dsse
from protos.actors import commitment
from protos.computewatch.v1 import control_pb2, telemetry_pb2
from protos.keys import PrivateKey, write_public_key
from tests.integration.audit_support import AuditServer, Keys, Node, audit_server
from tests.support import gpu

H100 = devices.lookup("NVIDIA H100 80GB HBM3")
assert H100 is not None
ACME = "lei:5493001KJTIIGC8Y1R12"
SALT_A = bytes.fromhex("aa" * 16)
SALT_B = bytes.fromhex("bb" * 16)
BETA_A = commitment(SALT_A, "org:Beta Labs")
BETA_B = commitment(SALT_B, "org:Beta Labs")
ROUNDS = 5
INTERVAL = 10.0
JOB_FLOP = ROUNDS * INTERVAL * H100.peak_flops  # one GPU at 100 % utilization


def work(node: Node, jobs: dict[str, str], t: float) -> bytes:
    """A chained, signed report: one busy H100 per job (job id -> actor)."""
    seq = node.sequence + 1
    msg = telemetry_pb2.NodeReport(
        node_id=node.node_id,
        boot_id="boot-1",
        sequence=seq,
        previous_digest=node.previous,
        sample_unix_nanos=int(t * 1e9),
        interval_seconds=INTERVAL,
        agent_version="test",
    )
    for i, (job_id, actor) in enumerate(sorted(jobs.items())):
        g = gpu(i, util=100.0, job=job_id, pid=100 + i)
        g.processes[0].actor = actor
        msg.gpus.append(g)
        msg.jobs.add(job_id=job_id, actor=actor)
    data = dsse.seal(msg, node.key)
    node.sequence, node.previous = seq, dsse.digest(data)
    return data


async def settle(srv: AuditServer) -> None:
    for _ in range(500):
        latest = srv.handle.checkpointer.latest()
        if latest is not None and latest.size == srv.writer.size:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no checkpoint covers the log")


async def invoke(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


def logs_file(
    tmp_path: Path, *, open_a: bool, open_b: bool, b_key: str = "b", authorities: bool = True
) -> Path:
    def entry(name: str, key_dir: str, salt: bytes, opened: bool) -> str:
        text = (
            f"  - name: provider-{name}\n"
            f"    copy: copy-{name}\n"
            f"    collector_key: {key_dir}/collector.pub\n"
            f"    node_keys: {name}/nodes\n"
        )
        if authorities:
            text += f"    authority_keys: [{name}/authority.pub]\n"
        if opened:
            text += f'    open: {{salt: "{salt.hex()}", names: ["org:Beta Labs"]}}\n'
        return text

    path = tmp_path / f"logs-{open_a}-{open_b}-{b_key}-{authorities}.yaml"
    path.write_text("logs:\n" + entry("a", "a", SALT_A, open_a) + entry("b", b_key, SALT_B, open_b))
    return path


def test_one_organisation_is_seen_once_across_two_operators(tmp_path: Path) -> None:
    keys_a, keys_b = Keys(tmp_path / "a"), Keys(tmp_path / "b")
    a1 = keys_a.add_node("a1")
    b1 = keys_b.add_node("b1")
    authority = PrivateKey.generate()
    for d in ("a", "b"):
        write_public_key(authority.public, tmp_path / d / "authority.pub")
    # An authority's approval in log A, as a collector logs it.
    approval = dsse.seal(
        control_pb2.Approval(directive_id="d1", approved_unix_nanos=1, authority="ministry"),
        authority,
    )

    async def run() -> None:
        async with (
            audit_server(tmp_path / "a", keys_a) as srv_a,
            audit_server(tmp_path / "b", keys_b) as srv_b,
        ):
            for r in range(ROUNDS):
                t = 1_000_000.0 + r * INTERVAL
                srv_a.writer.append([work(a1, {"a-1": ACME, "a-2": BETA_A}, t)])
                if r == 0:
                    srv_a.writer.append([approval])
                srv_b.writer.append([work(b1, {"b-1": ACME, "b-2": BETA_B, "b-3": BETA_B}, t)])
            await settle(srv_a)
            await settle(srv_b)
            for name, srv, keys in (("a", srv_a, keys_a), ("b", srv_b, keys_b)):
                res = await invoke(
                    "audit", "subscribe", "--collector", srv.address,
                    "--key", str(keys.auditor_key), "--out", str(tmp_path / f"copy-{name}"),
                    *keys.cli_trust_args(), "--once", "--insecure-plaintext",
                    "--authority-keys", str(tmp_path / name / "authority.pub"),
                )  # fmt: skip
                assert res.exit_code == 0, res.output

    asyncio.run(run())

    # Unopened: the LEI matches across logs, each operator's commitment is its own.
    res = CliRunner().invoke(
        cli, ["audit", "actors", str(logs_file(tmp_path, open_a=False, open_b=False)), "--json"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [(log["name"], log["verified"], log["entries"]) for log in doc["logs"]] == [
        ("provider-a", True, ROUNDS + 1),
        ("provider-b", True, ROUNDS),
    ]
    assert [log["checkpoint"]["size"] for log in doc["logs"]] == [ROUNDS + 1, ROUNDS]
    by = {a["actor"]: a for a in doc["actors"]}
    assert set(by) == {ACME, BETA_A, BETA_B}
    acme = by[ACME]
    assert acme["cumulative_flop"]["estimate"] == _approx(2 * JOB_FLOP)
    assert {k: v["published_as"] for k, v in acme["logs"].items()} == {
        "provider-a": ACME,
        "provider-b": ACME,
    }
    assert acme["logs"]["provider-a"]["cumulative_flop"]["estimate"] == _approx(JOB_FLOP)
    assert by[BETA_B]["cumulative_flop"]["estimate"] == _approx(2 * JOB_FLOP)
    upper = acme["cumulative_flop"]["upper_bound"]
    assert upper >= acme["cumulative_flop"]["estimate"]

    # Both operators open their commitments: Beta is one actor across both logs.
    res = CliRunner().invoke(
        cli, ["audit", "actors", str(logs_file(tmp_path, open_a=True, open_b=True))]
    )
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    beta_line = next(line for line in lines if line.startswith("org:Beta Labs:"))
    assert f"{3 * JOB_FLOP:.3g} FLOP" in beta_line
    assert any(line.startswith(f"    provider-a as {BETA_A}: {JOB_FLOP:.3g}") for line in lines)
    assert any(line.startswith(f"    provider-b as {BETA_B}: {2 * JOB_FLOP:.3g}") for line in lines)
    assert not any(line.startswith(BETA_A) for line in lines)
    # An opening is recomputed, never taken on trust: the wrong salt opens nothing.
    assert BETA_A not in open_commitments(SALT_B, ["org:Beta Labs"])

    # Without the authority keys, log A's approval is signed by no trusted key.
    res = CliRunner().invoke(
        cli,
        [
            "audit", "actors",
            str(logs_file(tmp_path, open_a=True, open_b=True, authorities=False)),
        ],
    )  # fmt: skip
    assert res.exit_code == 1
    assert "log provider-a: FAILED" in res.stdout
    assert "unknown_key" in res.output

    # A log checked against the wrong operator's key is not totalled.
    res = CliRunner().invoke(
        cli,
        ["audit", "actors", str(logs_file(tmp_path, open_a=True, open_b=True, b_key="a"))],
    )
    assert res.exit_code == 1
    assert "log provider-b: FAILED" in res.stdout
    assert "(not totalled): provider-b" in res.output
    beta_line = next(line for line in res.stdout.splitlines() if line.startswith("org:Beta"))
    assert f"{JOB_FLOP:.3g} FLOP" in beta_line


def _approx(value: float) -> object:
    return pytest.approx(value)


def test_the_demos_logs_file_trusts_every_signer_and_opens_commitments(tmp_path: Path) -> None:
    """The demo writes the regulator's logs file from each operator's key layout
    and actors file: node and authority keys (approvals are in the log), and the
    operator's salt with the names behind its commitments."""
    from types import SimpleNamespace

    from computewatch.audit.actors import load_logs
    from computewatch.demo.actors import SCENARIOS, logs_file
    from computewatch.demo.cluster import KeyPaths

    keys = KeyPaths(tmp_path / "keys")
    for d in (keys.nodes, keys.authorities):
        d.mkdir(parents=True)
    collector, node, authority = (PrivateKey.generate() for _ in range(3))
    write_public_key(collector.public, keys.collector_pub)
    write_public_key(node.public, keys.nodes / "n0.pub")
    write_public_key(authority.public, keys.authorities / "ministry.pub")
    cluster = SimpleNamespace(keys=keys)
    actors = SCENARIOS / "demo-actors.yaml"
    path = logs_file(tmp_path / "logs.yaml", {"op": (cluster, tmp_path / "copy", actors)})  # type: ignore[dict-item]
    (spec,) = load_logs(path)
    assert set(spec.trust.authorities) == {authority.public.keyid}
    assert set(spec.trust.nodes) == {node.public.keyid}
    salt = bytes.fromhex("6f1c3a520d3e4a4b9a8e3c9b7f0e2d11")
    assert spec.openings[commitment(salt, "org:Beta Labs")] == "org:Beta Labs"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("logs: []\n", "non-empty 'logs' list"),
        ("logs:\n  - {name: a, copy: c, node_keys: n}\n", r"logs\[0\]: missing collector_key"),
        (
            "logs:\n  - {name: a, copy: c, collector_key: k.pub, node_keys: n,"
            " open: {salt: zz, names: []}}\n",
            r"logs\[0\].open: expected salt",
        ),
    ],
)
def test_a_bad_logs_file_is_refused_naming_the_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    from computewatch.audit.actors import load_logs
    from protos.errors import ConfigError

    keys = Keys(tmp_path / "keys")
    keys.add_node("n")
    (tmp_path / "k.pub").write_bytes(keys.collector_pub.read_bytes())
    (tmp_path / "n").symlink_to(keys.node_dir)
    path = tmp_path / "logs.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_logs(path)
    res = CliRunner().invoke(cli, ["audit", "actors", str(path)])
    assert res.exit_code == 1
    assert "logs file" in res.output


def test_threads_below_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "logs.yaml"
    path.write_text("logs: []\n")
    res = CliRunner().invoke(cli, ["audit", "actors", str(path), "--threads", "0"])
    assert res.exit_code == 2, res.output
    assert "Invalid value for '--threads'" in res.output
