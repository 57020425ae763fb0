"""The `netwatch` command tree; each command group lives in its own module."""

from __future__ import annotations

import click

from netwatch import __version__
from netwatch.cli.inventory import inventory
from netwatch.cli.lab import lab
from netwatch.cli.policy import policy


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="netwatch")
def cli() -> None:
    """netwatch: Kubernetes network traffic against NetworkPolicy, offline or live."""


cli.add_command(policy)
cli.add_command(lab)
cli.add_command(inventory)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
