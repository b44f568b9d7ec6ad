"""``computewatch audit actors``: one actor's compute across several operators' logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from computewatch.audit.actors import WINDOW, ActorTotal, Figure, LogResult, load_logs, total_across
from computewatch.clitools import translate_errors


def _q(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.3g}"


def _figure(f: Figure) -> dict[str, Any]:
    return {
        "estimate": f.estimate,
        "upper_bound": f.upper_bound,
        "unmeasured_gpu_seconds": f.unmeasured_gpu_seconds,
        f"last_{WINDOW}d": {"estimate": f.window_estimate, "upper_bound": f.window_upper_bound},
    }


def as_json(results: list[LogResult], totals: list[ActorTotal]) -> dict[str, Any]:
    return {
        "logs": [
            {
                "name": r.name,
                "verified": r.ok,
                "entries": r.report.entries,
                "checkpoint": {"size": r.checkpoint_size, "root": r.checkpoint_root},
                "findings": [f"{f.reason}: {f.message}" for f in r.report.findings],
            }
            for r in results
        ],
        "actors": [
            {
                "actor": t.actor,
                "cumulative_flop": _figure(t.total),
                "logs": {
                    name: {"published_as": published, "cumulative_flop": _figure(fig)}
                    for name, (published, fig) in sorted(t.per_log.items())
                },
            }
            for t in totals
        ],
    }


@click.command("actors")
@click.argument("logs_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json_out", is_flag=True, help="Print one JSON document.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@translate_errors
def actors(*, logs_file: Path, as_json_out: bool, threads: int) -> None:
    """Verify several operators' logs and total each actor's FLOP across them.

    LOGS_FILE lists each log's local copy, public keys and (optionally) the
    operator's salt and names that open its actor commitments. A log that does
    not verify is not totalled, and the command exits non-zero.
    """
    results, totals = total_across(load_logs(logs_file), threads=threads)
    if as_json_out:
        click.echo(json.dumps(as_json(results, totals), indent=2))
    else:
        for r in results:
            state = "verified" if r.ok else "FAILED"
            click.echo(
                f"log {r.name}: {state}, {r.report.entries} entries,"
                f" checkpoint {r.checkpoint_size} {r.checkpoint_root[:16]}"
            )
            for f in r.report.findings[:10]:
                click.echo(f"  {f.reason}: {f.message}", err=True)
        for t in totals:
            click.echo(
                f"{t.actor}: {_q(t.total.estimate)} FLOP (upper bound"
                f" {_q(t.total.upper_bound)}, {WINDOW} d {_q(t.total.window_estimate)}),"
                f" {t.total.unmeasured_gpu_seconds:.3g} GPU-s unmeasured"
            )
            for name, (published, fig) in sorted(t.per_log.items()):
                shown = "" if published == t.actor else f" as {published}"
                click.echo(
                    f"    {name}{shown}: {_q(fig.estimate)} (upper bound {_q(fig.upper_bound)})"
                )
    failed = [r.name for r in results if not r.ok]
    if failed:
        raise click.ClickException(f"logs that did not verify (not totalled): {', '.join(failed)}")
