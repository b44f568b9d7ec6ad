"""``computewatch halt``, ``approve``, ``evaluate`` and ``directives list|show``.

Each submission is built here, signed with the caller's own key (``--key``)
and sent to the collector's ``Control`` service; the same key signs the
call's auth token, for collectors that require one.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import click
import grpc
from google.protobuf.message import Message

from computewatch.clitls import ClientTls, tls_options
from computewatch.clitools import rpc_failure, translate_errors
from computewatch.plainjson import Json, plain
from computewatch.render import table
from protos import dsse
from protos.auth import call_metadata
from protos.computewatch.v1 import control_pb2, control_pb2_grpc
from protos.keys import PrivateKey, PublicKey, load_private_key, load_public_key

R = TypeVar("R", bound=Message)
_SERVICE = "/computewatch.v1.Control/"
_KINDS = {
    "node": control_pb2.SCOPE_KIND_NODE,
    "job": control_pb2.SCOPE_KIND_JOB,
    "gpu": control_pb2.SCOPE_KIND_GPU,
    "actor": control_pb2.SCOPE_KIND_ACTOR,
}

collector_option = click.option(
    "--collector",
    "address",
    default="127.0.0.1:7443",
    show_default=True,
    envvar="COMPUTEWATCH_COLLECTOR",
    help="Collector HOST:PORT.",
)
key_option = click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="COMPUTEWATCH_AUTHORITY_KEY",
    help="Your private key (an authority's, or an evaluator's for evaluate).",
)
timeout_option = click.option(
    "--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait."
)


def parse_scope(values: tuple[str, ...]) -> control_pb2.Scope:
    """``cluster`` or any number of ``node:NAME`` / ``job:ID`` / ``gpu:UUID`` /
    ``actor:ID`` (``actor:lei:...``, ``actor:c:...``) of one kind."""
    if not values:
        raise click.BadParameter("give at least one --scope", param_hint="--scope")
    if "cluster" in values:
        if len(values) > 1:
            raise click.BadParameter("cluster stands alone", param_hint="--scope")
        return control_pb2.Scope(kind=control_pb2.SCOPE_KIND_CLUSTER)
    kinds: set[str] = set()
    scope = control_pb2.Scope()
    for value in values:
        kind, sep, name = value.partition(":")
        if not sep or kind not in _KINDS or not name:
            raise click.BadParameter(
                f"{value!r}: expected cluster, node:NAME, job:ID, gpu:UUID or actor:ID",
                param_hint="--scope",
            )
        kinds.add(kind)
        targets = {
            "node": scope.node_ids,
            "job": scope.job_ids,
            "gpu": scope.gpu_uuids,
            "actor": scope.actor_ids,
        }
        targets[kind].append(name)
    if len(kinds) > 1:
        raise click.BadParameter(
            f"one kind per halt, got {', '.join(sorted(kinds))}", param_hint="--scope"
        )
    scope.kind = _KINDS[kinds.pop()]
    return scope


def _call(
    address: str,
    method: str,
    request: Message,
    response: type[R],
    *,
    key: PrivateKey | None,
    timeout: float,
    tls: ClientTls,
) -> R:
    """One unary Control call; a refusal becomes a one-line ClickException."""
    full = _SERVICE + method
    metadata = call_metadata(key, full) if key is not None else None
    with tls.channel(address) as channel:
        stub = control_pb2_grpc.ControlStub(channel)
        rpc: Callable[..., object] = getattr(stub, method)
        try:
            result = rpc(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise rpc_failure(address, exc, "refused") from exc
    if not isinstance(result, response):
        raise click.ClickException(f"collector at {address} sent a {type(result).__name__}")
    return result


def _submit(
    address: str, method: str, envelope: bytes, key: PrivateKey, timeout: float, tls: ClientTls
) -> None:
    reply = _call(
        address,
        method,
        control_pb2.SubmitRequest(envelope=envelope),
        control_pb2.SubmitResponse,
        key=key,
        timeout=timeout,
        tls=tls,
    )
    click.echo(f"{reply.message} (log index {reply.log_index})")
    for directive_id in reply.directive_ids:
        click.echo(directive_id)


@click.command()
@collector_option
@tls_options
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    help="cluster, node:NAME, job:ID, gpu:UUID or actor:ID (repeat for several of one kind).",
)
@click.option("--reason", required=True, help="Why, in plain language (goes into the log).")
@key_option
@timeout_option
@translate_errors
def halt(
    address: str,
    scopes: tuple[str, ...],
    reason: str,
    key_path: Path,
    timeout: float,
    tls: ClientTls,
) -> None:
    """Halt at once, signed by one authority key."""
    scope = parse_scope(scopes)
    key = load_private_key(key_path)
    request = control_pb2.ManualHalt(
        scope=scope,
        reason=reason,
        requested_unix_nanos=time.time_ns(),
        nonce=secrets.token_hex(16),
    )
    _submit(address, "SubmitManualHalt", dsse.seal(request, key), key, timeout, tls)


@click.command()
@click.argument("directive_id")
@collector_option
@tls_options
@key_option
@click.option("--comment", default="", help="Why you approve (goes into the log).")
@click.option("--authority", default="", help="Your name or role, for people reading the log.")
@timeout_option
@translate_errors
def approve(
    directive_id: str,
    address: str,
    key_path: Path,
    comment: str,
    authority: str,
    timeout: float,
    tls: ClientTls,
) -> None:
    """Approve lifting DIRECTIVE_ID; with a quorum of keys the collector resumes."""
    key = load_private_key(key_path)
    request = control_pb2.Approval(
        directive_id=directive_id,
        approved_unix_nanos=time.time_ns(),
        authority=authority,
        comment=comment,
    )
    _submit(address, "SubmitApproval", dsse.seal(request, key), key, timeout, tls)


@click.command()
@collector_option
@tls_options
@click.option("--job", "job_id", required=True, help="Job whose model was evaluated.")
@click.option("--model", "model_id", default="", help="Model id.")
@click.option("--evaluation", "name", required=True, help="Evaluation name, e.g. cyber-offense.")
@click.option("--score", type=float, required=True, help="Score (0 = none, 1 = the maximum).")
@click.option("--evaluator", default="", help="Who evaluated.")
@key_option
@timeout_option
@translate_errors
def evaluate(
    address: str,
    job_id: str,
    model_id: str,
    name: str,
    score: float,
    evaluator: str,
    key_path: Path,
    timeout: float,
    tls: ClientTls,
) -> None:
    """Submit a signed capability evaluation result (capability rules act on it)."""
    if not math.isfinite(score):
        raise click.BadParameter(f"{score!r} is not a finite number", param_hint="--score")
    key = load_private_key(key_path)
    request = control_pb2.Evaluation(
        model_id=model_id,
        job_id=job_id,
        evaluation=name,
        score=score,
        evaluated_unix_nanos=time.time_ns(),
        evaluator=evaluator,
    )
    _submit(address, "SubmitEvaluation", dsse.seal(request, key), key, timeout, tls)


# -- directives list | show ------------------------------------------------------------


def _fetch(
    address: str,
    in_force_only: bool,
    key: PrivateKey | None,
    collector_key: PublicKey | None,
    tls: ClientTls,
    page_size: int = 0,
) -> list[tuple[control_pb2.DirectiveRecord, control_pb2.Directive, bool]]:
    out = []
    for record in _list_all(address, in_force_only, key, tls, page_size):
        if collector_key is not None:
            verified = dsse.verify(
                record.envelope,
                {collector_key.keyid: collector_key},
                expected_type=dsse.DIRECTIVE_TYPE,
            )
            out.append((record, verified.parse(control_pb2.Directive), True))
        else:
            env = dsse.open_envelope(record.envelope)
            out.append((record, dsse.parse_message(control_pb2.Directive, env.payload), False))
    return out


# Pages followed at most: a collector whose tokens never end cannot keep the CLI looping.
MAX_PAGES = 10_000


def _list_all(
    address: str,
    in_force_only: bool,
    key: PrivateKey | None,
    tls: ClientTls,
    page_size: int = 0,
) -> list[control_pb2.DirectiveRecord]:
    """Every directive record, following ``next_page_token``."""
    records: list[control_pb2.DirectiveRecord] = []
    token = ""
    for _ in range(MAX_PAGES):
        reply = _call(
            address,
            "ListDirectives",
            control_pb2.ListDirectivesRequest(
                in_force_only=in_force_only, page_size=page_size, page_token=token
            ),
            control_pb2.DirectiveList,
            key=key,
            timeout=10.0,
            tls=tls,
        )
        records.extend(reply.directives)
        if not reply.next_page_token:
            return records
        if reply.next_page_token == token:
            raise click.ClickException(f"collector at {address}: page token did not advance")
        token = reply.next_page_token
    raise click.ClickException(f"collector at {address}: more than {MAX_PAGES} directive pages")


def _when(nanos: int) -> str:
    return datetime.fromtimestamp(nanos / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _scope_text(scope: control_pb2.Scope) -> str:
    if scope.kind == control_pb2.SCOPE_KIND_CLUSTER:
        return "cluster"
    if scope.kind == control_pb2.SCOPE_KIND_JOB:
        return "job:" + ",".join(scope.job_ids)
    if scope.kind == control_pb2.SCOPE_KIND_GPU:
        return "gpu:" + ",".join(scope.gpu_uuids)
    return "node:" + ",".join(scope.node_ids)


def _doc(
    record: control_pb2.DirectiveRecord, d: control_pb2.Directive, verified: bool
) -> dict[str, Json]:
    doc = plain(d)
    doc.pop("approvals", None)
    to_effective = (
        (record.effective_unix_nanos - d.issued_unix_nanos) / 1e9
        if record.effective_unix_nanos
        else None
    )
    doc.update(
        log_index=record.log_index,
        in_force=record.in_force,
        effective_unix_nanos=record.effective_unix_nanos,
        seconds_to_effective=to_effective,
        approval_keyids=list(record.approval_keyids),
        receipt_node_ids=list(record.receipt_node_ids),
        signature_verified=verified,
    )
    return doc


def _key_options(fn: Callable[..., None]) -> Callable[..., None]:
    fn = click.option(
        "--collector-key",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Collector public key: verify every directive's signature.",
    )(fn)
    return click.option(
        "--key",
        "key_path",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Your private key, for collectors that require signed calls.",
    )(fn)


@click.group()
def directives() -> None:
    """Directives the collector issued (halts, resumes, throttles, terminates)."""


@directives.command("list")
@collector_option
@tls_options
@click.option("--in-force", is_flag=True, help="Only halts, throttles and terminates in force.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--page-size",
    type=click.IntRange(0, 1000),
    default=0,
    help="Directives per request (0: the collector's default); all pages are shown.",
)
@_key_options
@translate_errors
def list_directives(
    address: str,
    in_force: bool,
    as_json: bool,
    page_size: int,
    key_path: Path | None,
    collector_key: Path | None,
    tls: ClientTls,
) -> None:
    """List directives, oldest first."""
    key = load_private_key(key_path) if key_path else None
    pub = load_public_key(collector_key) if collector_key else None
    rows = _fetch(address, in_force, key, pub, tls, page_size)
    if as_json:
        click.echo(json.dumps([_doc(*r) for r in rows], indent=2, sort_keys=True))
        return
    body = []
    for record, d, _ in rows:
        effective = (
            f"{(record.effective_unix_nanos - d.issued_unix_nanos) / 1e9:.3f} s"
            if record.effective_unix_nanos
            else "-"
        )
        body.append(
            [
                d.id,
                str(d.counter),
                control_pb2.Action.Name(d.action).removeprefix("ACTION_"),
                _scope_text(d.scope),
                d.rule_id or "-",
                _when(d.issued_unix_nanos),
                "yes" if record.in_force else "",
                effective,
                str(len(record.approval_keyids)),
                str(len(record.receipt_node_ids)),
            ]
        )
    click.echo(
        table(
            [
                "id",
                "counter",
                "action",
                "scope",
                "rule",
                "issued",
                "in force",
                "effective",
                "approvals",
                "receipts",
            ],
            body,
        )
    )
    if pub is None:
        click.echo("(signatures not verified: pass --collector-key to check them)")


@directives.command("show")
@click.argument("directive_id")
@collector_option
@tls_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_key_options
@translate_errors
def show_directive(
    directive_id: str,
    address: str,
    as_json: bool,
    key_path: Path | None,
    collector_key: Path | None,
    tls: ClientTls,
) -> None:
    """Show one directive with its evidence, approvals and receipts."""
    key = load_private_key(key_path) if key_path else None
    pub = load_public_key(collector_key) if collector_key else None
    for record, d, verified in _fetch(address, False, key, pub, tls):
        if d.id == directive_id:
            doc = _doc(record, d, verified)
            if as_json:
                click.echo(json.dumps(doc, indent=2, sort_keys=True))
            else:
                for name, value in sorted(doc.items()):
                    click.echo(f"{name}: {json.dumps(value, sort_keys=True)}")
            return
    raise click.ClickException(f"no directive {directive_id} at {address}")
