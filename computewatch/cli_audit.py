"""``computewatch audit``: follow, verify and prove the public record (for regulators).

Trusts nothing but the public keys it is given. Every finding is printed as
``reason: message`` and makes the command exit with status 1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

import click
import grpc

from computewatch.audit import follow as followmod
from computewatch.audit import prove as provemod
from computewatch.audit.store import LocalStore
from computewatch.audit.trust import Trust, load_trust
from computewatch.audit.verify import VerifyReport, verify_store
from computewatch.clitls import ClientTls, tls_options
from computewatch.clitools import translate_errors
from protos import checkpoint as cpmod
from protos.auth import client_interceptors
from protos.computewatch.v1 import audit_pb2_grpc
from protos.errors import ConfigError
from protos.keys import load_private_key

P = ParamSpec("P")
R = TypeVar("R")
_PATH = click.Path(path_type=Path)
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _trust_options(fn: Callable[P, R]) -> Callable[P, R]:
    """--collector-key, --node-keys, --authority-keys, --origin, --resume-quorum."""
    opts = [
        click.option(
            "--collector-key",
            required=True,
            type=_FILE,
            help="The collector's public key (signs checkpoints and directives).",
        ),
        click.option(
            "--node-keys",
            multiple=True,
            type=click.Path(exists=True, path_type=Path),
            help="Node public keys: files, or directories of *.pub/*.pem (repeatable);"
            " optional: enrolments in the log introduce node keys.",
        ),
        click.option(
            "--authority-keys",
            multiple=True,
            type=click.Path(exists=True, path_type=Path),
            help="Authority/evaluator public keys for approvals, halts, evaluations.",
        ),
        click.option(
            "--origin", default=None, help="Expected log id (default: pinned on first use)."
        ),
        click.option(
            "--resume-quorum",
            type=click.IntRange(1, 1000),
            default=1,
            show_default=True,
            help="Distinct authority keys whose approvals every RESUME in the log must"
            " carry (your policy's k of k-of-n).",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _load_trust(
    collector_key: Path,
    node_keys: tuple[Path, ...],
    authority_keys: tuple[Path, ...],
    origin: str | None,
    resume_quorum: int,
) -> Trust:
    return load_trust(collector_key, node_keys, authority_keys, origin, resume_quorum)


def _channel(address: str, key: Path, tls: ClientTls) -> grpc.aio.Channel:
    return tls.aio_channel(address, client_interceptors(load_private_key(key)))


def _when(nanos: int) -> str:
    return datetime.fromtimestamp(nanos / 1e9, UTC).isoformat(timespec="seconds")


def _short_type(payload_type: str) -> str:
    return payload_type.removeprefix("application/vnd.computewatch.").removesuffix("+protobuf")


def _describe(cp: cpmod.Checkpoint) -> str:
    return f"size {cp.size}, root {cp.root.hex()[:16]}, signed {_when(cp.timestamp_unix_nanos)}"


@click.group()
def audit() -> None:
    """Follow and verify the collector's public record (for regulators)."""


def _connection_options(fn: Callable[P, R]) -> Callable[P, R]:
    opts = [
        click.option(
            "--key",
            required=True,
            type=_FILE,
            help="Your auditor private key (signs the access token of each call).",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return tls_options(fn)


@audit.command()
@click.option("--collector", "address", required=True, help="Collector address, HOST:PORT.")
@click.option("--out", "out", required=True, type=_PATH, help="Directory of the local copy.")
@_connection_options
@_trust_options
@click.option(
    "--follow/--once",
    default=False,
    show_default=True,
    help="Keep following new entries, or stop once caught up.",
)
@click.option("--max-age", type=float, default=None, help="Freshness bound, seconds.")
@click.option("--max-retries", type=int, default=5, show_default=True)
@translate_errors
def subscribe(
    *,
    address: str,
    out: Path,
    key: Path,
    tls: ClientTls,
    collector_key: Path,
    node_keys: tuple[Path, ...],
    authority_keys: tuple[Path, ...],
    origin: str | None,
    resume_quorum: int,
    follow: bool,
    max_age: float | None,
    max_retries: int,
) -> None:
    """Keep a verified local copy of the log in OUT, resuming where it stopped."""
    trust = _load_trust(collector_key, node_keys, authority_keys, origin, resume_quorum)
    options = followmod.FollowOptions(
        once=not follow, max_age_seconds=max_age, max_retries=max_retries
    )

    async def run() -> followmod.FollowResult:
        store = LocalStore(out)
        try:
            async with _channel(address, key, tls) as channel:
                follower = followmod.Follower(audit_pb2_grpc.AuditStub(channel), store, trust)
                return await follower.run(options)
        finally:
            store.close()

    result = asyncio.run(run())
    latest = result.latest
    where = _describe(latest.checkpoint) if latest else "no checkpoint"
    click.echo(f"ok: {result.entries_added} new entries stored in {out}; checkpoint {where}")


def _print_report(report: VerifyReport) -> None:
    for finding in report.findings:
        click.echo(f"{finding.reason}: {finding.message}", err=True)
    if report.suppressed:
        click.echo(f"... and {report.suppressed} more findings", err=True)


@audit.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_trust_options
@click.option("--max-age", type=float, default=None, help="Freshness bound, seconds.")
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    type=_FILE,
    help="A signed checkpoint seen elsewhere, checked against the copy (repeatable).",
)
@click.option("--threads", type=int, default=2, show_default=True)
@translate_errors
def verify(
    *,
    directory: Path,
    collector_key: Path,
    node_keys: tuple[Path, ...],
    authority_keys: tuple[Path, ...],
    origin: str | None,
    resume_quorum: int,
    max_age: float | None,
    checkpoints: tuple[Path, ...],
    threads: int,
) -> None:
    """Re-check every signature, chain, root and checkpoint in a local copy."""
    trust = _load_trust(collector_key, node_keys, authority_keys, origin, resume_quorum)
    store = LocalStore(directory, create=False)
    try:
        report = verify_store(
            store,
            trust,
            now_ns=time.time_ns(),
            max_age_seconds=max_age,
            extra_checkpoints=[p.read_bytes() for p in checkpoints],
            threads=threads,
        )
    finally:
        store.close()
    _print_report(report)
    if not report.ok:
        reasons = sorted({f.reason for f in report.findings})
        n = len(report.findings) + report.suppressed
        raise click.ClickException(f"{n} finding(s): {', '.join(reasons)}")
    latest = _describe(report.latest) if report.latest else "none"
    click.echo(
        f"ok: {report.entries} entries from {report.signers} signers, {report.checkpoints}"
        f" checkpoints; newest {latest}"
    )


@audit.command()
@click.option("--index", required=True, type=click.IntRange(min=0), help="Log index to prove.")
@click.option("--collector", "address", default=None, help="Ask this collector (HOST:PORT).")
@click.option("--key", type=_FILE, default=None, help="Auditor private key (with --collector).")
@tls_options
@click.option("--dir", "directory", type=_PATH, default=None, help="A local copy.")
@click.option("--bundle", type=_FILE, default=None, help="Check a saved bundle offline.")
@click.option("--entry", type=_FILE, default=None, help="The entry bytes you hold (envelope).")
@click.option("--save", type=_PATH, default=None, help="Write the proof bundle (JSON) here.")
@_trust_options
@translate_errors
def prove(
    *,
    index: int,
    address: str | None,
    key: Path | None,
    tls: ClientTls,
    directory: Path | None,
    bundle: Path | None,
    entry: Path | None,
    save: Path | None,
    collector_key: Path,
    node_keys: tuple[Path, ...],
    authority_keys: tuple[Path, ...],
    origin: str | None,
    resume_quorum: int,
) -> None:
    """Check that entry INDEX is in the signed log.

    With --collector, fetch the proof (and, with --dir, also check that the
    collector's tree extends your copy's newest checkpoint); with --dir alone,
    prove from the copy; with --bundle, check a saved proof offline.
    """
    trust = _load_trust(collector_key, node_keys, authority_keys, origin, resume_quorum)
    if directory is not None:  # keys the verified copy learned from the log
        copy = LocalStore(directory, create=False)
        try:
            trust = provemod.trust_from_copy(copy, trust)
        finally:
            copy.close()
    held = entry.read_bytes() if entry else None
    if bundle is not None:
        got = provemod.InclusionBundle.from_json(bundle.read_text())
    elif address is not None:
        if key is None:
            raise ConfigError("--collector needs --key (your auditor key)")
        got = asyncio.run(
            _fetch(address, key, tls, index=index, trust=trust, held=held, directory=directory)
        )
    elif directory is not None:
        store = LocalStore(directory, create=False)
        try:
            got = provemod.local_bundle(store, index, trust)
        finally:
            store.close()
    else:
        raise ConfigError("give --collector, --dir or --bundle")
    if got.index != index:
        raise ConfigError(f"the bundle proves index {got.index}, not {index}")
    if held is not None and held != got.entry:
        raise ConfigError(f"entry {index} in the log differs from {entry}")
    signed = provemod.check_bundle(got, trust)
    # The entry's own signature, by the keys trusted for its type.
    from computewatch.audit.entries import EntryChecker

    verified = EntryChecker(trust).authenticate(index, got.entry)
    if save is not None:
        save.write_text(got.to_json())
    click.echo(
        f"ok: entry {index} ({_short_type(verified.payload_type)}, signed by"
        f" {verified.signer.keyid[:16]}) is in the log at {_describe(signed.checkpoint)}"
    )


async def _fetch(
    address: str,
    key: Path,
    tls: ClientTls,
    *,
    index: int,
    trust: Trust,
    held: bytes | None,
    directory: Path | None,
) -> provemod.InclusionBundle:
    since = None
    if directory is not None:
        store = LocalStore(directory, create=False)
        try:
            latest = store.latest_checkpoint()
        finally:
            store.close()
        if latest is not None:
            since = cpmod.open_note(latest.note, [trust.collector], origin=trust.origin)
    async with _channel(address, key, tls) as channel:
        return await provemod.fetch_bundle(
            audit_pb2_grpc.AuditStub(channel), index, trust, entry=held, since=since
        )


@audit.command("verifier-key")
@click.option("--collector-key", required=True, type=_FILE, help="The collector's public key.")
@click.option("--origin", required=True, help="The log id (the checkpoint key name).")
@translate_errors
def verifier_key(collector_key: Path, origin: str) -> None:
    """Print the C2SP note verifier key, for checking checkpoints with other tools."""
    from protos.keys import load_public_key

    click.echo(cpmod.verifier_key(origin, load_public_key(collector_key)))
