"""`python -m sagaflow`: sagaflow's own commands, for any application (`migrate`: its
tables in one database). The DLQ's commands are each application's own (build_cli)."""

from __future__ import annotations

import sys

try:
    import click
except ImportError:  # the command line is an extra: sagaflow[cli]
    sys.stderr.write("error: python -m sagaflow needs click: pip install 'sagaflow[cli]'\n")
    sys.exit(2)

from sagaflow.dlq.cli import run_cli
from sagaflow.migrations.cli import migrate

PROG = "python -m sagaflow"


@click.group()
def cli() -> None:
    """sagaflow's own commands."""


cli.add_command(migrate)

if __name__ == "__main__":
    run_cli(cli, PROG)
