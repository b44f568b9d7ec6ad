"""``computewatch rules``: check, list and dry-run rule packs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from collector.rules.load import (
    builtin_pack_names,
    check_files,
    load_packs,
    resolve_pack,
    resolve_packs,
)
from collector.rules.metrics import format_quantity
from collector.rules.model import Decision, Rule, RulePack
from computewatch.cliledger import ledger_options
from computewatch.clitools import translate_errors

if TYPE_CHECKING:
    from collector.store.sql import Location


@click.group()
def rules() -> None:
    """Check, list and dry-run rule packs."""


@rules.command()
@click.argument("packs", nargs=-1, metavar="FILE_DIR_OR_NAME...")
@translate_errors
def check(packs: tuple[str, ...]) -> None:
    """Check rule packs and print every mistake as FILE:LINE: rule ID: ...

    A directory checks every .yaml/.yml file in it. With no argument, checks
    every shipped pack. Duplicate rule ids are looked for across all the
    packs given. Exit status 1 if anything is wrong.
    """
    paths = resolve_packs(packs) or [resolve_pack(n) for n in builtin_pack_names()]
    result = check_files(paths)
    for finding in result.findings:
        click.echo(str(finding))
    n = len(result.findings)
    if n:
        files = len({f.file for f in result.findings})
        noun = "problem" if n == 1 else "problems"
        raise click.ClickException(f"{n} {noun} in {files} of {len(paths)} files")
    rules_count = sum(len(p.rules) for p in result.packs)
    click.echo(f"ok: {len(result.packs)} packs, {rules_count} rules")


def _rule_line(rule: Rule) -> str:
    metric = (
        f"{rule.metric} ({rule.bound.value.replace('_', ' ')})" if rule.bounded else rule.metric
    )
    cond = f"{rule.scope} {metric} {rule.comparison} {format_quantity(rule.threshold, rule.unit)}"
    if rule.for_seconds:
        cond += f" for {rule.for_seconds:g} s"
    action = str(rule.action)
    if rule.power_cap_watts is not None:
        action += f" {rule.power_cap_watts:g} W"
    if rule.lineage.value == "descendants":
        action += " (job and descendants)"
    return f"  {rule.id}: {cond} -> {action}"


def _pack_header(pack: RulePack) -> str:
    head = f"{pack.name} {pack.version}: {pack.description}"
    if pack.historical:
        head += f" [historical: {pack.note}]"
    if pack.source is not None:
        head += f"\n  source: {pack.source}" + (f" <{pack.source.url}>" if pack.source.url else "")
    return head


@rules.command("list")
@click.option(
    "--pack",
    "packs",
    multiple=True,
    metavar="FILE_OR_NAME",
    help="Pack file or shipped pack name (repeatable); default: every shipped pack.",
)
@translate_errors
def list_(packs: tuple[str, ...]) -> None:
    """List packs and their rules."""
    loaded = load_packs(packs or builtin_pack_names())
    for pack in loaded:
        click.echo(_pack_header(pack))
        for rule in pack.rules:
            click.echo(_rule_line(rule))


def _when(t: float, start: float | None) -> str:
    stamp = datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    offset = f" (+{t - start:.1f}s)" if start is not None else ""
    return stamp[:-4] + "Z" + offset


def _decision_line(d: Decision, start: float | None) -> str:
    line = f"{_when(d.time, start)} {d.kind.upper():7} {d.action:9} {d.rule.id}: {d.reason}"
    if len(d.targets) > 1:
        line += f" [targets: {', '.join(d.targets)}]"
    if d.log_indices:
        shown = ", ".join(str(i) for i in d.log_indices[:8])
        more = f", ... ({len(d.log_indices)} in all)" if len(d.log_indices) > 8 else ""
        line += f" [log {shown}{more}]"
    return line


@rules.command()
@ledger_options(exists=True, envvar="COMPUTEWATCH_RULES_LEDGER")
@click.option(
    "--pack",
    "packs",
    multiple=True,
    required=True,
    metavar="FILE_OR_NAME",
    help="Pack file or shipped pack name (repeatable).",
)
@click.option(
    "--tick",
    "tick_seconds",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="Seconds between evaluations on the recorded clock.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per decision, then a summary."
)
@translate_errors
def test(ledger: Location, packs: tuple[str, ...], tick_seconds: float, as_json: bool) -> None:
    """Replay a recorded ledger against packs and print what would have fired (dry run)."""
    from collector.rules.replay import replay_ledger
    from collector.store.sql import describe

    loaded = load_packs(packs)
    result = replay_ledger(ledger, loaded, tick_seconds=tick_seconds)
    fired = sum(1 for d in result.decisions if d.kind == "fire")
    summary = {
        "ledger": describe(ledger),
        "packs": [p.name for p in loaded],
        "entries": result.entries,
        "reports": result.reports,
        "evaluations": result.evaluations,
        "skipped": dict(result.skipped),
        "other": dict(result.other),
        "ticks": result.ticks,
        "first_time": result.first_time,
        "last_time": result.last_time,
        "decisions": len(result.decisions),
        "fired": fired,
    }
    if as_json:
        for d in result.decisions:
            click.echo(json.dumps(d.to_dict(), sort_keys=True))
        click.echo(json.dumps({"summary": summary}, sort_keys=True))
        return
    for d in result.decisions:
        click.echo(_decision_line(d, result.first_time))
    skipped = sum(result.skipped.values())
    click.echo(
        f"replayed {result.reports} reports and {result.evaluations} evaluations "
        f"of {result.entries} entries ({skipped} skipped) in {result.ticks} ticks: "
        f"{fired} rules fired, {len(result.decisions)} decisions (dry run, nothing written)"
    )
