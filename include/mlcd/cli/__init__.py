"""The ``mlcd`` command line: the operator's handle on the platform.

Each area registers its own commands from a module of this package (``register(group)``), so the
areas grow without editing one shared file. Heavy libraries are imported inside the commands.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from mlcd import __version__

# Modules that add commands; a module absent from this checkout is simply skipped.
COMMAND_MODULES = (
    "mlcd.cli.data",
    "mlcd.cli.mlflow",
    "mlcd.cli.training",
    "mlcd.cli.registry",
    "mlcd.cli.serving",
    "mlcd.cli.guard",
    "mlcd.cli.demo",
    "mlcd.cli.platform",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlcd")
def cli() -> None:
    """mlcd keeps a production model fresh and safe: validate, train, gate, canary, roll back."""


for _name in COMMAND_MODULES:
    if importlib.util.find_spec(_name) is not None:
        importlib.import_module(_name).register(cli)


def main() -> None:
    """Console-script entry point. Click maps usage errors to exit code 2."""
    sys.exit(cli.main(standalone_mode=True))
