"""``computewatch demo``: a simulated cluster on loopback, live, then a summary."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from computewatch.clitools import translate_errors

DEFAULT_SCENARIO = Path(__file__).resolve().parents[1] / "deploy" / "scenarios" / "demo.yaml"


@click.command()
@click.option(
    "--scenario",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=DEFAULT_SCENARIO if DEFAULT_SCENARIO.exists() else None,
    help="Scenario YAML (default: deploy/scenarios/demo.yaml).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    default=None,
    help="Seconds to run (default: the scenario's, at most 60; with --serve: until Ctrl-C).",
)
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the summary as JSON to this file.",
)
@click.option(
    "--live/--no-live",
    default=None,
    help="Redraw a live view (default: when stdout is a terminal).",
)
@click.option(
    "--resume-after",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds a halt stays effective before two authorities approve resuming.",
)
@click.option(
    "--rule-pack",
    "rule_packs",
    multiple=True,
    help="Rule packs (default: demo and operator-default).",
)
@click.option(
    "--serve",
    is_flag=True,
    help="Keep the cluster running (until Ctrl-C, or --duration) with /metrics on loopback"
    " for every agent and the collector; write a Prometheus config and file_sd targets"
    " and print how to load the Grafana dashboard. No summary.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep keys, ledger and agent state here instead of a temporary directory.",
)
@translate_errors
def demo(
    scenario: Path | None,
    duration: float | None,
    summary_json: Path | None,
    live: bool | None,
    resume_after: float,
    rule_packs: tuple[str, ...],
    serve: bool,
    workdir: Path | None,
) -> None:
    """Run a simulated cluster: collector, agents on a fake NVML, rules, halts, resume."""
    from computewatch.demo.run import (
        DEFAULT_PACKS,
        MAX_DURATION,
        DemoOptions,
        print_summary,
        run_demo,
    )

    if scenario is None:
        raise click.UsageError("no scenario: pass --scenario FILE")
    if serve:
        from computewatch.demo.serve import ServeOptions, serve_demo

        opts_serve = ServeOptions(
            scenario=scenario,
            rule_packs=rule_packs or DEFAULT_PACKS,
            workdir=workdir,
            duration=duration,
        )
        asyncio.run(serve_demo(opts_serve, sys.stdout))
        return
    if duration is not None and duration > MAX_DURATION:
        raise click.BadParameter(
            f"at most {MAX_DURATION:g} s without --serve", param_hint="--duration"
        )
    opts = DemoOptions(
        scenario=scenario,
        duration=duration,
        summary_json=summary_json,
        live=sys.stdout.isatty() if live is None else live,
        resume_after=resume_after,
        rule_packs=rule_packs or DEFAULT_PACKS,
        workdir=workdir,
    )
    root = logging.getLogger()
    if opts.live and root.level < logging.WARNING:
        root.setLevel(logging.WARNING)  # log lines would tear the redrawn screen
    result = asyncio.run(run_demo(opts, sys.stdout))
    print_summary(result, sys.stdout)
