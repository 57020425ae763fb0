"""Options and helpers every command shares: output format, cluster input, exit codes.

Exit status contract (DESIGN §4): 2 on bad input or usage. Commands with a yes/no answer
(`policy check`) use 0/1 for that answer, so 2 must never be reused for a result.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
from rich.console import Console

from netwatch.core.engine import IPBlockPodIPs
from netwatch.k8s.snapshot import LoadResult, load_cluster
from netwatch.render.output import OutputFormat

EXIT_BAD_INPUT = 2
_F = TypeVar("_F", bound=Callable[..., Any])


class BadInput(click.ClickException):
    """Input the user must fix (unknown pod, invalid objects under --strict, …): exit 2."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file: Any = None) -> None:
        stderr_console().print(f"[bold red]error:[/] {self.format_message()}", highlight=False)


def stderr_console() -> Console:
    return Console(stderr=True, soft_wrap=True)


def stdout_console() -> Console:
    """Terminal width on a TTY; 120 columns when piped (unless COLUMNS says otherwise)."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=120)
    return console


def output_option(func: _F) -> _F:
    return click.option(
        "-o",
        "--output",
        "output",
        type=click.Choice([f.value for f in OutputFormat]),
        default=OutputFormat.TABLE.value,
        show_default=True,
        help="table for humans; json/yaml are stable (documented in the README).",
    )(func)


def cluster_options(func: _F) -> _F:
    func = click.option(
        "--strict",
        is_flag=True,
        help="Treat any invalid or unreadable object as fatal (exit 2).",
    )(func)
    return click.option(
        "--cluster",
        "cluster_paths",
        multiple=True,
        required=True,
        type=click.Path(path_type=str),
        help="Snapshot file or directory (kubectl get -o yaml/json); repeatable.",
    )(func)


def ipblock_option(func: _F) -> _F:
    return click.option(
        "--ipblock-pod-ips",
        type=click.Choice([m.value for m in IPBlockPodIPs]),
        default=IPBlockPodIPs.MATCH.value,
        show_default=True,
        help="Whether ipBlock peers also match pod IPs (Calico/upstream: match; Cilium: ignore).",
    )(func)


def load(paths: Sequence[str], *, strict: bool) -> LoadResult:
    """Load snapshots; report rejected objects on stderr, and fail under --strict."""
    result = load_cluster(paths)
    if result.problems:
        err = stderr_console()
        for problem in result.problems:
            err.print(f"[yellow]warning:[/] {problem}", highlight=False)
        if strict:
            raise BadInput(
                f"{len(result.problems)} invalid or unreadable object(s) (--strict); see above"
            )
    if result.objects == 0 and not result.problems:
        raise BadInput(f"no Kubernetes objects found in {', '.join(paths)}")
    return result


def output_format(value: str) -> OutputFormat:
    return OutputFormat(value)


def write_stdout(text: str) -> None:
    sys.stdout.write(text)
