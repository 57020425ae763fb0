"""`netwatch analyze`: observed connections against the cluster's NetworkPolicies (DESIGN §6).

Reads a cluster snapshot and a flow log (JSON Lines) or a capture (pcap/pcapng), attributes
every record to workloads at its own time, evaluates it, and prints verdict counts, the
connections grouped by workload pair, and findings. `netwatch graph` shares the input
half (`flows_options`, `attribute_flows`).

Malformed flow lines are reported on stderr with their line number and skipped; with
`--strict` the first one (or any invalid cluster object) is fatal, exit 2.
"""

from __future__ import annotations

import functools
import gc
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from netwatch.capture.flowfile import FlowFile, FlowInputError
from netwatch.cli.common import (
    BadInput,
    cluster_options,
    ipblock_option,
    load,
    output_format,
    output_option,
    stderr_console,
    stdout_console,
)
from netwatch.cli.inventory import parse_named_cidrs, parse_time
from netwatch.core.analysis import AnalysisResult, TrafficAnalysis
from netwatch.core.attribution import Attributor
from netwatch.core.engine import IPBlockPodIPs
from netwatch.k8s.snapshot import LoadResult
from netwatch.render.analysis import (
    DEFAULT_TOP,
    analysis_to_dict,
    render_analysis_table,
    write_analysis_json,
)
from netwatch.render.output import OutputFormat, emit

_F = TypeVar("_F", bound=Callable[..., Any])
PROGRESS_MIN_BYTES = 8 << 20
"""Inputs smaller than this read too fast for a progress bar to help."""
MAX_SHOWN_ISSUES = 50


@dataclass(frozen=True)
class FlowArgs:
    """The input options every traffic command shares, bundled by `flows_options`."""

    cluster_paths: tuple[str, ...]
    strict: bool
    flows_path: str | None
    """None only for commands that read traffic elsewhere (`suggest --prometheus`)."""
    since_text: str | None
    until_text: str | None
    cidrs: tuple[str, ...]
    pod_cidrs: tuple[str, ...]
    ipblock_pod_ips: str


def flows_options(func: _F) -> _F:
    """`--cluster`, `--strict`, `--flows`, `--since/--until`, `--cidr`, `--pod-cidr`,
    `--ipblock-pod-ips` (in that order in `--help`), passed to `func` as one
    `inputs: FlowArgs` keyword argument."""
    return _flows_options(func, flows_required=True)


def optional_flows_options(func: _F) -> _F:
    """`flows_options` with `--flows` optional (the command has another traffic source)."""
    return _flows_options(func, flows_required=False)


def _flows_options(func: _F, *, flows_required: bool) -> _F:

    @functools.wraps(func)
    def bundled(
        *,
        cluster_paths: tuple[str, ...],
        strict: bool,
        flows_path: str | None,
        since_text: str | None,
        until_text: str | None,
        cidrs: tuple[str, ...],
        pod_cidrs: tuple[str, ...],
        ipblock_pod_ips: str,
        **rest: Any,
    ) -> Any:
        inputs = FlowArgs(
            cluster_paths=cluster_paths,
            strict=strict,
            flows_path=flows_path,
            since_text=since_text,
            until_text=until_text,
            cidrs=cidrs,
            pod_cidrs=pod_cidrs,
            ipblock_pod_ips=ipblock_pod_ips,
        )
        return func(inputs=inputs, **rest)

    wrapped: Any = ipblock_option(bundled)
    for option in reversed(
        [
            click.option(
                "--flows",
                "flows_path",
                required=flows_required,
                default=None,
                type=click.Path(path_type=str, allow_dash=True),
                help="Flow log (JSON Lines, `-` for stdin, may be gzipped) or pcap/pcapng.",
            ),
            click.option(
                "--since",
                "since_text",
                metavar="TIME",
                help="Only records active at or after TIME (epoch seconds or RFC 3339).",
            ),
            click.option(
                "--until",
                "until_text",
                metavar="TIME",
                help="Only records that started at or before TIME.",
            ),
            click.option(
                "--cidr",
                "cidrs",
                multiple=True,
                metavar="NAME=CIDR",
                help="Name an external range (longest prefix wins; others are 'world').",
            ),
            click.option(
                "--pod-cidr",
                "pod_cidrs",
                multiple=True,
                metavar="CIDR",
                help="Cluster pod range besides the nodes' podCIDRs: an address in it that "
                "no pod held is 'unknown', not external. Repeatable.",
            ),
        ]
    ):
        wrapped = option(wrapped)
    return cast(_F, cluster_options(wrapped))


@dataclass(frozen=True)
class PreparedInputs:
    """The loaded cluster, an attributor over it, and the (not yet read) flow input."""

    load: LoadResult
    attributor: Attributor
    flows: FlowFile


def prepare_inputs(inputs: FlowArgs) -> PreparedInputs:
    """Validate the options, load the cluster, build the attributor (bad input: exit 2)."""
    if inputs.flows_path is None:
        raise BadInput("--flows is required")
    since = None if inputs.since_text is None else parse_time(inputs.since_text, "--since")
    until = None if inputs.until_text is None else parse_time(inputs.until_text, "--until")
    if since is not None and until is not None and until < since:
        raise BadInput(f"--until {inputs.until_text} is before --since {inputs.since_text}")
    loaded, attributor = prepare_cluster(inputs)
    flows = FlowFile(inputs.flows_path, strict=inputs.strict, since=since, until=until)
    return PreparedInputs(loaded, attributor, flows)


def prepare_cluster(inputs: FlowArgs) -> tuple[LoadResult, Attributor]:
    """Load the cluster and build the attributor the options describe (bad input: exit 2)."""
    named = parse_named_cidrs(inputs.cidrs)
    for cidr in inputs.pod_cidrs:
        try:
            parse_named_cidrs((f"pod={cidr}",))
        except BadInput:
            raise BadInput(f"--pod-cidr {cidr!r}: not a CIDR") from None
    loaded = load(inputs.cluster_paths, strict=inputs.strict)
    try:
        attributor = Attributor.from_cluster(
            loaded.cluster,
            ipblock_pod_ips=IPBlockPodIPs(inputs.ipblock_pod_ips),
            named_cidrs=named,
            pod_cidrs=inputs.pod_cidrs,
        )
    except ValueError as exc:  # two names for one range
        raise BadInput(f"--cidr: {exc}") from None
    return loaded, attributor


@dataclass
class AttributedFlows:
    load: LoadResult
    attributor: Attributor
    analysis: TrafficAnalysis
    flows: FlowFile


def attribute_flows(inputs: FlowArgs) -> AttributedFlows:
    """Load the cluster, read the flows and attribute every record (bad input: exit 2)."""
    prepared = prepare_inputs(inputs)
    analysis = TrafficAnalysis(prepared.attributor)
    flows = prepared.flows
    # The loop allocates millions of short-lived tuples and dicts but no reference
    # cycles; the cyclic collector would only rescan the growing caches again and again.
    gc.disable()
    try:
        with _progress(flows) as on_progress:
            flows.progress = on_progress
            analysis.add_rows(flows.rows())
    except FlowInputError as exc:
        raise BadInput(str(exc)) from None
    finally:
        gc.enable()
    report_input_problems(flows)
    return AttributedFlows(prepared.load, prepared.attributor, analysis, flows)


@contextmanager
def _progress(flows: FlowFile) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr for large inputs on a terminal, else nothing."""
    console = stderr_console()
    if flows.is_capture or flows.size is None or flows.size < PROGRESS_MIN_BYTES:
        yield None
        return
    if not console.is_terminal:
        yield None
        return
    columns = (
        TextColumn("reading {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(flows.path, total=flows.size)
        yield lambda done: progress.update(task, completed=done)


def report_input_problems(flows: FlowFile) -> None:
    """Warnings, skipped lines and a summary of them on stderr."""
    err = stderr_console()
    for warning in flows.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    for issue in flows.issues[:MAX_SHOWN_ISSUES]:
        err.print(f"[yellow]warning:[/] {issue} (line skipped)", highlight=False)
    if flows.skipped_lines:
        more = len(flows.issues) - MAX_SHOWN_ISSUES
        tail = f"; {more} more problem(s) not shown" if more > 0 else ""
        err.print(
            f"[yellow]warning:[/] skipped {flows.skipped_lines} malformed line(s) of "
            f"{flows.path}{tail}; --strict makes them fatal",
            highlight=False,
        )


def describe_input(flows: FlowFile) -> str:
    """One line for humans: what was read and what the window dropped."""
    what = "capture" if flows.is_capture else "flow log"
    text = f"{flows.records:,} connection record(s) from {what} {flows.path}"
    if flows.outside_window:
        text += f"; {flows.outside_window:,} outside --since/--until ignored"
    if flows.skipped_lines:
        text += f"; {flows.skipped_lines:,} malformed line(s) skipped"
    return text


@click.command()
@flows_options
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=DEFAULT_TOP,
    show_default=True,
    help="Table output: connection groups shown (by bytes) and findings per kind.",
)
@click.option("--all", "show_all", is_flag=True, help="Table output: show every group and finding.")
@output_option
def analyze(
    *,
    inputs: FlowArgs,
    top: int,
    show_all: bool,
    output: str,
) -> None:
    """Verdicts and findings for observed connections (allowed, denied, unrestricted, unknown).

    Each record is attributed at its first_seen time: pods by who held the IP then, Service
    ClusterIPs to a backend pod and its target port. Findings: unexpected-flow,
    unprotected-workload, unused-rule, overly-broad-rule and the static lint kinds.
    """
    run = attribute_flows(inputs)
    result: AnalysisResult = run.analysis.result(problems=run.load.problems)
    fmt = output_format(output)
    if fmt is OutputFormat.TABLE:
        render_analysis_table(
            result,
            stdout_console(),
            top=None if show_all else top,
            header=describe_input(run.flows),
        )
    elif fmt is OutputFormat.JSON:
        write_analysis_json(result, sys.stdout)
    else:
        emit(analysis_to_dict(result), fmt, sys.stdout)
