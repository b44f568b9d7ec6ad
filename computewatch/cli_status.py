"""``computewatch status``: the cluster as a running collector sees it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click
import grpc

from computewatch.clitools import rpc_failure, translate_errors
from computewatch.plainjson import plain
from computewatch.render import si, table
from protos.auth import call_metadata
from protos.computewatch.v1 import status_pb2, status_pb2_grpc
from protos.keys import PrivateKey, load_private_key

_STATE = {
    status_pb2.NODE_STATE_OK: "ok",
    status_pb2.NODE_STATE_SILENT: "SILENT",
    status_pb2.NODE_STATE_NEVER_SEEN: "never seen",
}


_METHOD = "/computewatch.v1.Status/GetStatus"


def fetch_status(
    address: str, key: PrivateKey | None = None, timeout: float = 10.0
) -> status_pb2.ClusterStatus:
    metadata = call_metadata(key, _METHOD) if key is not None else None
    with grpc.insecure_channel(address) as channel:
        stub = status_pb2_grpc.StatusStub(channel)
        try:
            result: status_pb2.ClusterStatus = stub.GetStatus(
                status_pb2.StatusRequest(), timeout=timeout, metadata=metadata
            )
        except grpc.RpcError as exc:
            raise rpc_failure(address, exc) from exc
    return result


def render_status(st: status_pb2.ClusterStatus) -> str:
    when = datetime.fromtimestamp(st.generated_unix_nanos / 1e9, tz=UTC).isoformat()
    lines = [
        f"cluster at {when}: {st.gpus_total} GPUs ({st.gpus_lost} lost,"
        f" {st.gpus_unknown_model} of unknown model), log size {st.log_size}",
        f"  installed {si(st.installed_flops, 'FLOP/s')}   allocated"
        f" {si(st.allocated_flops, 'FLOP/s')}   achieved {si(st.achieved_flops, 'FLOP/s')}",
        f"  reports accepted {st.reports_accepted}; rejected "
        + (", ".join(f"{k}={v}" for k, v in sorted(st.rejected_by_reason.items())) or "none"),
        "",
        table(
            ["node", "state", "seq", "gpus", "lost", "achieved", "halted"],
            [
                [
                    n.node_id,
                    _STATE.get(n.state, "?"),
                    str(n.last_sequence),
                    str(n.gpus),
                    str(n.gpus_lost),
                    si(n.achieved_flops, "FLOP/s"),
                    "yes" if n.halted else "",
                ]
                for n in st.nodes
            ],
        ),
        "",
        table(
            ["job", "cumulative", "achieved", "gpus", "nodes", "parents"],
            [
                [
                    j.job_id,
                    si(j.cumulative_flop, "FLOP") + (" (upper bound)" if j.upper_bound else ""),
                    si(j.achieved_flops, "FLOP/s"),
                    str(j.gpus),
                    str(len(j.node_ids)),
                    ",".join(j.parent_job_ids),
                ]
                for j in st.jobs
            ],
        ),
    ]
    return "\n".join(lines)


@click.command()
@click.option(
    "--collector",
    "address",
    default="127.0.0.1:7443",
    show_default=True,
    envvar="COMPUTEWATCH_COLLECTOR",
    help="Collector HOST:PORT.",
)
@click.option(
    "--key",
    "key_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="COMPUTEWATCH_KEY",
    help="Auditor or authority private key, for collectors that require signed tokens.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@translate_errors
def status(address: str, key_path: Path | None, as_json: bool) -> None:
    """Show cluster compute, nodes and jobs from a running collector."""
    st = fetch_status(address, load_private_key(key_path) if key_path else None)
    if as_json:
        click.echo(json.dumps(plain(st), indent=2, sort_keys=True))
    else:
        click.echo(render_status(st))
