"""The `netwatch` command tree; each command (group) lives in its own module.

Commands are imported only when invoked: `netwatch policy matrix` must not pay for
pyroute2, bcc or jsonschema (about 0.25 s and 20 MiB per run — measured by
`benchmarks/policy_matrix.py`, which runs the CLI once per port).
To add a command: one line in `COMMANDS`.
"""

from __future__ import annotations

import importlib

import click

from netwatch import __version__

COMMANDS: dict[str, str] = {
    "agent": "netwatch.cli.agent:agent",
    "analyze": "netwatch.cli.analyze:analyze",
    "capture": "netwatch.cli.capture:capture",
    "demo": "netwatch.cli.demo:demo",
    "graph": "netwatch.cli.graph:graph",
    "inventory": "netwatch.cli.inventory:inventory",
    "lab": "netwatch.cli.lab:lab",
    "policy": "netwatch.cli.policy:policy",
    "suggest": "netwatch.cli.suggest:suggest_command",
    "whatif": "netwatch.cli.whatif:whatif_command",
}
"""Command name → `module:attribute` of its click command."""


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module the first time it is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is not None or cmd_name not in COMMANDS:
            return found
        module_name, _, attr = COMMANDS[cmd_name].partition(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{COMMANDS[cmd_name]} is not a click command")
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="netwatch")
def cli() -> None:
    """netwatch: Kubernetes network traffic against NetworkPolicy, offline or live."""


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
