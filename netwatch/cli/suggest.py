"""`netwatch suggest`: least-privilege NetworkPolicies from observed traffic (DESIGN §7).

Reads a cluster snapshot and a flow log or capture (the input options of `analyze`),
attributes every record, asks `netwatch.core.suggest` for a policy set and verifies it
with a fresh engine before printing anything: every observed connection the set must
allow is re-attributed against the cluster as it would be (`replace`: the suggestions
alone; `add`: the existing policies plus the suggestions). A set that would deny one is
a bug in netwatch, and printing it would be worse than printing nothing: exit 3.

Output: `-o yaml` (default) the policies as multi-document YAML, or one file per policy
with `--out DIR` (`<namespace>.<name>.yaml`); `-o json` the report documented in the
README (policies included); `-o table` a summary for humans. Denied-but-observed
connections, warnings and the verification summary go to stderr.
Exit status: 0 printed, 2 bad input, 3 verification failed.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from netwatch.capture.flowfile import FlowFile, FlowInputError
from netwatch.cli.analyze import (
    FlowArgs,
    describe_input,
    optional_flows_options,
    prepare_cluster,
    prepare_inputs,
    report_input_problems,
)
from netwatch.cli.common import BadInput, stderr_console, stdout_console
from netwatch.cli.inventory import parse_named_cidrs, parse_time
from netwatch.cli.prometheus import instant_query
from netwatch.core.attribution import Attributor
from netwatch.core.cidr import DEFAULT_BUDGET
from netwatch.core.observed import Observations, group_flows, labels_of
from netwatch.core.promflows import FLOW_LABELS, edge_rows
from netwatch.core.suggest import StandIn, Suggestion, SuggestMode, SuggestOptions, suggest
from netwatch.core.verify import Verification, check_policies
from netwatch.k8s.snapshot import LoadResult
from netwatch.render.output import OutputFormat, emit
from netwatch.render.policy_yaml import dump_manifests, manifest_text
from netwatch.render.suggest import (
    file_name,
    manifest,
    render_groups_table,
    render_suggest_table,
    report_to_dict,
)

EXIT_VERIFY_FAILED = 3
MAX_SHOWN_ISSUES = 50
MAX_SHOWN_GROUPS = 20
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, flag: str) -> float:
    """`90`, `90s`, `15m`, `24h`, `7d`, `1w`, `1h30m` → seconds."""
    value = text.strip().lower()
    parts = list(_DURATION_PART.finditer(value))
    if not value or "".join(m.group(0) for m in parts) != value:
        raise BadInput(f"{flag} {text!r}: expected a duration such as 90s, 15m, 24h, 7d or 1h30m")
    return sum(float(m.group(1)) * _UNITS[m.group(2)] for m in parts)


@dataclass
class Observed:
    """The cluster, an attributor over it, and every record of the window, attributed."""

    load: LoadResult
    attributor: Attributor
    observations: Observations
    flows: FlowFile | None
    """None when the observations came from Prometheus."""
    pod_cidrs: tuple[str, ...]
    stand_ins: dict[str, StandIn] = field(default_factory=dict)
    """Representative addresses of external ends known only by label (`--prometheus`)."""


def observe(inputs: FlowArgs) -> Observed:
    """Load and attribute `analyze`'s inputs (bad input: exit 2); shared with `whatif`."""
    prepared = prepare_inputs(inputs)
    flows = prepared.flows
    try:
        observations = Observations()
        observations.add_rows(flows.rows(), prepared.attributor)
    except FlowInputError as exc:
        raise BadInput(str(exc)) from None
    report_input_problems(flows)
    stderr_console().print(describe_input(flows), highlight=False)
    return Observed(prepared.load, prepared.attributor, observations, flows, inputs.pod_cidrs)


def flows_query(window_seconds: float) -> str:
    """Connections per workload edge over the window, summed across every agent.

    `increase()` ignores a series' first sample, so a series an agent created inside the
    window (its first connection) would count only what came after its first scrape —
    often nothing. Such series (absent at the window start) count their maximum instead.
    """
    labels = ",".join(FLOW_LABELS)
    metric = "netwatch_flows_total"
    w = f"{int(window_seconds)}s"
    older = f"(increase({metric}[{w}]) and {metric} offset {w})"
    newer = f"(max_over_time({metric}[{w}]) unless {metric} offset {w})"
    return f"sum by ({labels}) ({older} or {newer})"


def observe_prometheus(inputs: FlowArgs, url: str, window: str) -> Observed:
    """The workload edges every agent exported, from Prometheus (`core.promflows`)."""
    if inputs.since_text is not None:
        raise BadInput("--since does not apply to --prometheus (use --window)")
    seconds = parse_duration(window, "--window")
    if seconds < 1:
        raise BadInput(f"--window {window!r}: must be at least 1s")
    until = None if inputs.until_text is None else parse_time(inputs.until_text, "--until")
    loaded, attributor = prepare_cluster(inputs)
    at, samples = instant_query(url, flows_query(seconds), at=until)
    when = at if at is not None else (until or 0.0)
    edges = edge_rows(
        samples,
        loaded.cluster,
        at=when,
        named_cidrs=parse_named_cidrs(inputs.cidrs),
        pod_cidrs=inputs.pod_cidrs,
    )
    observations = Observations()
    for edge in edges.rows:
        observations.add_counted(edge.row, attributor, edge.count)
    err = stderr_console()
    if edges.skipped:
        parts = ", ".join(f"{n} {why}" for why, n in sorted(edges.skipped.items()))
        err.print(
            f"[yellow]warning:[/] connections that cannot become rules from metrics: {parts}",
            highlight=False,
        )
    err.print(
        f"read {len(samples)} workload edge(s), {observations.records} connection(s) "
        f"over {window} from Prometheus at {url}",
        highlight=False,
    )
    return Observed(loaded, attributor, observations, None, inputs.pod_cidrs, edges.stand_ins)


def _write_out(out_dir: str, s: Suggestion) -> None:
    root = Path(out_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for p in s.policies:
            (root / file_name(p)).write_text(manifest_text(manifest(p)), encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"--out {out_dir}: {exc.strerror or exc}") from None
    stderr_console().print(f"wrote {len(s.policies)} policy file(s) to {out_dir}", highlight=False)


def _fail_verification(v: Verification) -> None:
    err = stderr_console()
    err.print(
        f"[bold red]error:[/] the suggested set denies {v.denied_connections} of the "
        f"{v.checked} observed connection(s) it must allow — this is a netwatch bug; "
        "nothing was printed. Please report it with these inputs.",
        highlight=False,
    )
    for d in v.denials[:20]:
        a = d.observed.sample
        client, server = labels_of(a)
        c = a.connection
        err.print(
            f"  {client} → {server} {a.protocol.value}/{a.port} "
            f"({c.client_ip}:{c.client_port} → {c.server_ip}:{c.server_port})",
            highlight=False,
        )
    sys.exit(EXIT_VERIFY_FAILED)


def _stderr_summary(s: Suggestion, v: Verification) -> None:
    err = stderr_console()
    for warning in s.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if s.skipped:
        parts = ", ".join(f"{n} {why}" for why, n in s.skipped.items())
        err.print(f"skipped connection records: {parts}", highlight=False)
    if s.unexpected:
        err.print(
            f"[bold red]{s.unexpected_connections} denied connection(s) were observed[/] (an "
            "enforcement gap); they are NOT legalized (--include-denied adds them):",
            highlight=False,
        )
        groups = sorted(group_flows(s.unexpected), key=lambda g: (-g.count, g.sort_key))
        render_groups_table(groups[:MAX_SHOWN_GROUPS], err)
        if len(groups) > MAX_SHOWN_GROUPS:
            err.print(
                f"… and {len(groups) - MAX_SHOWN_GROUPS} more group(s) (-o json lists all)",
                highlight=False,
            )
    note = f"verified: all {v.checked} connection(s) the set must allow are allowed"
    if v.admitted is not None:
        a = v.admitted
        note += (
            f"; it still admits {a.workload_pairs} unobserved workload pair(s) and "
            f"{a.pod_pairs} unobserved pod pair(s) on the observed ports"
        )
    err.print(note, highlight=False)


@click.command(name="suggest")
@optional_flows_options
@click.option(
    "--prometheus",
    "prometheus_url",
    metavar="URL",
    help="Read the workload edges every agent exported from this Prometheus instead of "
    "--flows (cluster-wide suggestions).",
)
@click.option(
    "--window",
    default="7d",
    show_default=True,
    metavar="DURATION",
    help="With --prometheus: how far back to read (ending at --until, default now).",
)
@click.option(
    "--mode",
    type=click.Choice([m.value for m in SuggestMode]),
    default=SuggestMode.REPLACE.value,
    show_default=True,
    help="replace: the complete set for every workload seen; add: only what the existing "
    "policies lack.",
)
@click.option(
    "--include-denied",
    is_flag=True,
    help="Also allow connections today's policies deny (default: report them only).",
)
@click.option(
    "--quiet-period",
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="A policy is 'stable' once its newest rule was first seen this long before the "
    "end of the window (90s, 15m, 24h, 7d).",
)
@click.option(
    "--max-cidrs",
    type=click.IntRange(1, 256),
    default=DEFAULT_BUDGET,
    show_default=True,
    help="At most this many CIDRs per ipBlock rule (external peers are aggregated).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=str),
    help="Write one <namespace>.<name>.yaml per policy into this directory.",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["yaml", "json", "table"]),
    default="yaml",
    show_default=True,
    help="yaml: the policies (multi-document); json: the documented report; table: summary.",
)
def suggest_command(
    *,
    inputs: FlowArgs,
    prometheus_url: str | None,
    window: str,
    mode: str,
    include_denied: bool,
    quiet_period: str,
    max_cidrs: int,
    out_dir: str | None,
    output: str,
) -> None:
    """Least-privilege NetworkPolicies from observed connections, verified before printing.

    Exit 0 when printed, 2 on bad input, 3 when verification fails (a netwatch bug).
    """
    options = SuggestOptions(
        mode=SuggestMode(mode),
        include_denied=include_denied,
        quiet_period=parse_duration(quiet_period, "--quiet-period"),
        max_cidrs=max_cidrs,
        pod_cidrs=inputs.pod_cidrs,
    )
    if prometheus_url is not None and inputs.flows_path is not None:
        raise BadInput("--flows and --prometheus are mutually exclusive")
    if prometheus_url is None and inputs.flows_path is None:
        raise BadInput("one of --flows or --prometheus is required")
    if prometheus_url is not None:
        run = observe_prometheus(inputs, prometheus_url, window)
    else:
        run = observe(inputs)
    result = suggest(
        run.observations, engine=run.attributor.engine, options=options, stand_ins=run.stand_ins
    )
    verification = check_policies(
        run.observations,
        attributor=run.attributor,
        policies=[p.policy for p in result.policies],
        replace=options.mode is SuggestMode.REPLACE,
        include_denied=include_denied,
        measure=True,
        pod_cidrs=run.pod_cidrs,
    )
    if not verification.ok:
        _fail_verification(verification)
    _stderr_summary(result, verification)
    emit_suggestion(
        result,
        verification=verification,
        total=run.observations.records,
        output=output,
        out_dir=out_dir,
    )


def emit_suggestion(
    result: Suggestion,
    *,
    verification: Verification,
    total: int,
    output: str,
    out_dir: str | None,
) -> None:
    if out_dir is not None:
        _write_out(out_dir, result)
    if output == "yaml":
        if out_dir is None:
            dump_manifests([manifest(p) for p in result.policies], sys.stdout)
        return
    unexpected = group_flows(result.unexpected)
    if output == "table":
        render_suggest_table(
            result, verification=verification, unexpected=unexpected, console=stdout_console()
        )
        return
    data = report_to_dict(result, verification=verification, unexpected=unexpected, total=total)
    emit(data, OutputFormat.JSON, sys.stdout)
