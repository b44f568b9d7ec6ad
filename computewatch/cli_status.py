"""``computewatch status``: the cluster as a running collector sees it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click
import grpc

from computewatch.clitls import ClientTls, tls_options
from computewatch.clitools import rpc_failure, translate_errors
from computewatch.plainjson import plain
from computewatch.render import interval, si, table
from protos.auth import call_metadata
from protos.computewatch.v1 import status_pb2, status_pb2_grpc
from protos.keys import PrivateKey, load_private_key

_STATE = {
    status_pb2.NODE_STATE_OK: "ok",
    status_pb2.NODE_STATE_SILENT: "SILENT",
    status_pb2.NODE_STATE_NEVER_SEEN: "never seen",
}


_METHOD = "/computewatch.v1.Status/GetStatus"


# Pages followed at most (x 1000 items a page): a collector whose tokens never
# end cannot keep the CLI looping.
MAX_PAGES = 10_000


def fetch_status(
    address: str,
    key: PrivateKey | None = None,
    timeout: float = 10.0,
    page_size: int = 0,
    tls: ClientTls | None = None,
) -> status_pb2.ClusterStatus:
    """The whole status: follows ``next_page_token`` and joins the pages'
    nodes and jobs (cluster figures and actors come from the first page).
    ``tls`` None: TLS trusting the system's roots."""
    with (tls or ClientTls()).channel(address) as channel:
        stub = status_pb2_grpc.StatusStub(channel)
        result: status_pb2.ClusterStatus | None = None
        token = ""
        for _ in range(MAX_PAGES):
            page = _page(stub, address, key, timeout, page_size, token)
            if result is None:
                result = page
            else:
                result.nodes.extend(page.nodes)
                result.jobs.extend(page.jobs)
            if not page.next_page_token:
                result.next_page_token = ""
                return result
            if page.next_page_token == token:
                raise click.ClickException(f"collector at {address}: page token did not advance")
            token = page.next_page_token
    raise click.ClickException(f"collector at {address}: more than {MAX_PAGES} status pages")


def _page(
    stub: status_pb2_grpc.StatusStub,
    address: str,
    key: PrivateKey | None,
    timeout: float,
    page_size: int,
    token: str,
) -> status_pb2.ClusterStatus:
    metadata = call_metadata(key, _METHOD) if key is not None else None
    try:
        page: status_pb2.ClusterStatus = stub.GetStatus(
            status_pb2.StatusRequest(page_size=page_size, page_token=token),
            timeout=timeout,
            metadata=metadata,
        )
    except grpc.RpcError as exc:
        raise rpc_failure(address, exc) from exc
    return page


def cluster_achieved(st: status_pb2.ClusterStatus) -> float | None:
    return st.achieved_flops_estimate if st.HasField("achieved_flops_estimate") else None


def job_cumulative(j: status_pb2.JobStatus) -> str:
    """A job's cumulative FLOP as its interval (``unknown``/``>=`` forms)."""
    estimate = j.cumulative_flop_estimate if j.HasField("cumulative_flop_estimate") else None
    return interval(estimate, j.cumulative_flop_upper_bound, "FLOP", j.unmeasured_gpu_seconds)


def render_status(st: status_pb2.ClusterStatus) -> str:
    when = datetime.fromtimestamp(st.generated_unix_nanos / 1e9, tz=UTC).isoformat()
    lines = [
        f"cluster at {when}: {st.gpus_total} GPUs ({st.gpus_lost} lost,"
        f" {st.gpus_unknown_model} of unknown model), log size {st.log_size}",
        f"  installed {si(st.installed_flops, 'FLOP/s')}   allocated"
        f" {si(st.allocated_flops, 'FLOP/s')}   achieved"
        f" {interval(cluster_achieved(st), st.achieved_flops_upper_bound, 'FLOP/s')}",
        f"  cumulative {interval(st.cumulative_flop, st.cumulative_flop_upper_bound, 'FLOP')}"
        f"   unmeasured {st.unmeasured_gpu_seconds:,.0f} GPU-s   method {st.method or '-'}",
        *(f"  possibly crossed: {p}" for p in st.possibly_crossed),
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
                    interval(
                        n.achieved_flops_estimate
                        if n.HasField("achieved_flops_estimate")
                        else None,
                        n.achieved_flops_upper_bound,
                        "FLOP/s",
                    ),
                    "yes" if n.halted else "",
                ]
                for n in st.nodes
            ],
        ),
        "",
        table(
            ["job", "cumulative", "achieved", "method", "gpus", "nodes", "parents", "possibly"],
            [
                [
                    j.job_id,
                    job_cumulative(j),
                    interval(
                        j.achieved_flops_estimate
                        if j.HasField("achieved_flops_estimate")
                        else None,
                        j.achieved_flops_upper_bound,
                        "FLOP/s",
                    ),
                    j.method,
                    str(j.gpus),
                    str(j.nodes_total or len(j.node_ids)),
                    ",".join(j.parent_job_ids),
                    ",".join(j.possibly_crossed_rules),
                ]
                for j in st.jobs
            ],
        ),
    ]
    if st.actors:
        lines += ["", actor_table(st)]
    return "\n".join(lines)


def actor_table(st: status_pb2.ClusterStatus) -> str:
    """Every actor (docs/actors.md): its jobs together, as intervals."""

    def window(a: status_pb2.ActorStatus, days: int) -> str:
        for w in a.windows:
            if w.days == days:
                return interval(
                    w.estimate if w.HasField("estimate") else None, w.upper_bound, "FLOP"
                )
        return "-"

    return table(
        ["actor", "cumulative", "last 90 d", "achieved", "gpus", "jobs", "firing"],
        [
            [
                a.actor_id,
                interval(
                    a.cumulative_flop_estimate if a.HasField("cumulative_flop_estimate") else None,
                    a.cumulative_flop_upper_bound,
                    "FLOP",
                ),
                window(a, 90),
                interval(
                    a.achieved_flops_estimate if a.HasField("achieved_flops_estimate") else None,
                    a.achieved_flops_upper_bound,
                    "FLOP/s",
                ),
                str(a.gpus),
                str(len(a.job_ids)),
                ",".join(a.firing_rules),
            ]
            for a in st.actors
        ],
    )


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
@click.option(
    "--page-size",
    type=click.IntRange(0, 1000),
    default=0,
    help="Nodes plus jobs per request (0: the collector's default); all pages are shown.",
)
@tls_options
@translate_errors
def status(
    address: str, key_path: Path | None, as_json: bool, page_size: int, tls: ClientTls
) -> None:
    """Show cluster compute, nodes, jobs and actors from a running collector."""
    st = fetch_status(
        address, load_private_key(key_path) if key_path else None, page_size=page_size, tls=tls
    )
    if as_json:
        doc = plain(st)
        doc.pop("next_page_token", None)  # every page is joined: nothing left to fetch
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        click.echo(render_status(st))
