"""The command tree: every command resolves, and policy commands start light."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from netwatch.cli.main import COMMANDS, cli


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_listed_command_resolves_to_a_click_command(name: str) -> None:
    command = cli.get_command(click.Context(cli), name)
    assert isinstance(command, click.Command)


def test_unknown_command_is_a_usage_error() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2


def test_policy_commands_do_not_import_capture_or_lab_dependencies() -> None:
    probe = (
        "import sys\n"
        "from netwatch.cli.main import cli\n"
        "try:\n"
        "    cli(['policy', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('pyroute2', 'bcc', 'jsonschema', 'scapy', 'kubernetes')"
        " if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    stdout = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    marker = next(line for line in stdout.splitlines() if line.startswith("HEAVY="))
    assert marker == "HEAVY=", f"policy commands imported {marker}"
