"""``computewatch bench [ingest|fleet|agent|halt|crash|all]``: the benchmarks in ``bench/``.

Thin: picks sizes, calls ``bench.run_all``, prints its table and, with
``--out``, writes the results as JSON. What each benchmark measures is in
``bench/README.md``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

_CHOICES = ("ingest", "fleet", "agent", "halt", "crash", "all")


@click.command()
@click.argument("which", type=click.Choice(_CHOICES), default="all")
@click.option("--quick", is_flag=True, help="Small sizes: about a minute for all of them.")
@click.option("--agents", type=click.IntRange(min=1), help="Agents (ingest, fleet and halt).")
@click.option(
    "--reports", type=click.IntRange(min=1), help="Reports per agent (ingest), default 250."
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True),
    help="Measured seconds (fleet), default 30.",
)
@click.option("--samples", type=click.IntRange(min=1), help="Samples (agent), default 500.")
@click.option(
    "--runs", type=click.IntRange(min=1), help="Fresh fleets per tick setting (halt), default 3."
)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    help="Kill -9 rounds (crash), default 50.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the results as JSON (bench/results.json by convention).",
)
def bench(
    which: str,
    quick: bool,
    agents: int | None,
    reports: int | None,
    seconds: float | None,
    samples: int | None,
    runs: int | None,
    iterations: int | None,
    out: Path | None,
) -> None:
    """Measure ingest throughput, fleet cost, agent cost, halt latency and crash safety here."""
    from bench.common import BenchError
    from bench.run_all import FULL, QUICK, render, run

    sizes = QUICK if quick else FULL
    if agents is not None:
        sizes = replace(sizes, ingest_agents=agents, fleet_agents=agents, halt_agents=agents)
    if reports is not None:
        sizes = replace(sizes, ingest_reports=reports)
    if seconds is not None:
        sizes = replace(sizes, fleet_seconds=seconds)
    if samples is not None:
        sizes = replace(sizes, agent_samples=samples)
    if runs is not None:
        sizes = replace(sizes, halt_runs=runs)
    if iterations is not None:
        sizes = replace(sizes, crash_iterations=iterations)
    try:
        doc = run([] if which == "all" else [which], sizes)
    except BenchError as exc:
        raise click.ClickException(f"bench: {exc}") from exc
    click.echo(render(doc))
    if out is not None:
        out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        click.echo(f"wrote {out}", err=True)
