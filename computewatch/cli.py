"""The ``computewatch`` command. Thin: parse, build config, call the library.

Each command group lives in its own ``cli_<group>.py`` module and is
registered here.
"""

from __future__ import annotations

import logging

import click

from computewatch import __version__
from computewatch.clitools import configure_logging


@click.group()
@click.version_option(__version__, prog_name="computewatch")
@click.option(
    "--log-level",
    envvar="COMPUTEWATCH_LOG_LEVEL",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option(
    "--log-json/--no-log-json",
    envvar="COMPUTEWATCH_LOG_JSON",
    default=False,
    help="Log one JSON object per line.",
)
def cli(log_level: str, log_json: bool) -> None:
    """Measure, prove and bound accelerator compute."""
    configure_logging(getattr(logging, log_level.upper()), json_lines=log_json)


def _register() -> None:
    # Imported here so each group's imports load only with the CLI.
    from computewatch import cli_collector, cli_keys, cli_rules, cli_status

    for group in (cli_keys.keys, cli_collector.collector, cli_collector.nodes, cli_status.status):
        cli.add_command(group)
    cli.add_command(cli_rules.rules)
    from computewatch import cli_agent

    cli.add_command(cli_agent.agent)
    from computewatch import cli_audit, cli_audit_actors

    cli_audit.audit.add_command(cli_audit_actors.actors)
    cli.add_command(cli_audit.audit)
    from computewatch import cli_demo

    cli.add_command(cli_demo.demo)
    from computewatch import cli_control

    for command in (
        cli_control.halt,
        cli_control.approve,
        cli_control.evaluate,
        cli_control.directives,
    ):
        cli.add_command(command)
    from computewatch import cli_tls

    cli.add_command(cli_tls.tls)
    from computewatch import cli_bench

    cli.add_command(cli_bench.bench)
    from computewatch import cli_ledger

    cli.add_command(cli_ledger.ledger)
    from computewatch import cli_health

    cli_collector.collector.add_command(cli_health.health)


_register()


def main() -> None:
    cli(prog_name="computewatch")


if __name__ == "__main__":
    main()
