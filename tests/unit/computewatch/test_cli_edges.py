"""CLI edges an operator meets first: errors in one line, plain JSON, honest --help."""

from __future__ import annotations

import json
import socket

from click.testing import CliRunner

from computewatch.cli import cli
from computewatch.demo.view import render
from computewatch.plainjson import enum_prefix, plain
from protos.computewatch.v1 import control_pb2, status_pb2


def _dead_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_status_against_a_dead_collector_is_one_line_with_the_grpc_code() -> None:
    address = f"127.0.0.1:{_dead_port()}"
    result = CliRunner().invoke(cli, ["status", "--collector", address])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"Error: collector at {address}: UNAVAILABLE: ")
    assert "_InactiveRpcError" not in result.output


def test_plain_json_has_numbers_and_short_enum_names() -> None:
    st = status_pb2.ClusterStatus(reports_accepted=3, log_size=2**40, achieved_flops=float("nan"))
    st.rejected_by_reason["gap"] = 2
    st.nodes.add(node_id="n1", state=status_pb2.NODE_STATE_SILENT, last_sequence=7)
    doc = json.loads(json.dumps(plain(st)))  # valid JSON: NaN became null
    assert doc["reports_accepted"] == 3
    assert doc["log_size"] == 2**40
    assert doc["achieved_flops"] is None
    assert doc["rejected_by_reason"] == {"gap": 2}
    assert doc["nodes"][0]["state"] == "SILENT"
    assert doc["nodes"][0]["last_sequence"] == 7
    assert doc["gpus_lost"] == 0  # zeros are printed, not left out
    directive = control_pb2.Directive(id="d", counter=5, action=control_pb2.ACTION_HALT)
    d = plain(directive)
    assert (d["action"], d["counter"], d["evidence"]) == ("HALT", 5, None)
    assert enum_prefix(status_pb2.NodeState.DESCRIPTOR) == "NODE_STATE_"


def test_collector_serve_help_shows_defaults_and_environment_variables() -> None:
    result = CliRunner().invoke(cli, ["collector", "serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--metrics-address TEXT Address /metrics listens on. [default: 127.0.0.1]" in text
    assert "[env var: COMPUTEWATCH_COLLECTOR_METRICS_ADDRESS]" in text
    assert "HOST:PORT for gRPC. [default: 127.0.0.1:7443]" in text
    assert "[default: 2] [env var: COMPUTEWATCH_COLLECTOR_QUORUM]" in text
    assert "[env var: COMPUTEWATCH_COLLECTOR_LEDGER]" in text


def test_demo_view_does_not_read_halted_nodes_as_a_contradiction() -> None:
    st = status_pb2.ClusterStatus()
    for i in range(2):
        st.nodes.add(node_id=f"n{i}", state=status_pb2.NODE_STATE_OK, halted=True)
    text = render(st, [], elapsed=1.0, duration=2.0, job_thresholds=[], events=[])
    (line,) = [ln for ln in text.splitlines() if ln.startswith("nodes")]
    assert "reporting: 2" in line
    assert "halted by a directive: 2 of 2" in line
    assert "ok:" not in line
