"""``mlcd demo``: the whole story on the embedded default (``make demo``)."""

from __future__ import annotations

import sys

import click


@click.command("demo")
def demo_command() -> None:
    """Run the demo story on this machine, state under MLCD_HOME."""
    from mlcd.demo import run_demo

    try:
        code = run_demo()
    except ValueError as err:  # unusable reference data (an invalid MLCD_DATA file, too few images): one line
        raise click.ClickException(str(err)) from None
    sys.exit(code)


def register(group: click.Group) -> None:
    group.add_command(demo_command)
