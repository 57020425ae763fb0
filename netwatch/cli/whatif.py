"""`netwatch whatif`: which observed connections a proposed policy set would deny.

`--policies` names files or directories of NetworkPolicy manifests (a `suggest --out`
directory works as is); other kinds in them are ignored. The proposal is judged next
to the snapshot's policies (a same-named one replaces the existing policy, as applying
it would) or, with `--replace`, instead of all of them (`netwatch.core.whatif`).
Exit status: 0 nothing would be denied, 1 something would, 2 bad input.
"""

from __future__ import annotations

import sys

import click

from netwatch.cli.analyze import FlowArgs, flows_options
from netwatch.cli.common import BadInput, output_format, output_option, stdout_console
from netwatch.cli.suggest import observe
from netwatch.core.policy import NetworkPolicy
from netwatch.core.whatif import whatif
from netwatch.k8s.snapshot import load_cluster
from netwatch.render.output import OutputFormat, emit
from netwatch.render.whatif import render_whatif_table, whatif_to_dict


def load_proposal(paths: tuple[str, ...]) -> tuple[NetworkPolicy, ...]:
    """The NetworkPolicies of `paths`; any invalid object or unreadable file is bad input."""
    result = load_cluster(paths)
    if result.problems:
        lines = "\n  ".join(str(p) for p in result.problems)
        raise BadInput(f"--policies: {len(result.problems)} problem(s):\n  {lines}")
    if not result.cluster.policies:
        raise BadInput(f"--policies: no NetworkPolicy in {', '.join(paths)}")
    return result.cluster.policies


@click.command(name="whatif")
@flows_options
@click.option(
    "--policies",
    "policy_paths",
    multiple=True,
    required=True,
    type=click.Path(path_type=str),
    help="Proposed NetworkPolicy manifests (file or directory); repeatable.",
)
@click.option("--replace", is_flag=True, help="Judge the proposal instead of existing policies.")
@click.option(
    "--include-denied",
    is_flag=True,
    help="Also judge connections today's policies deny (default: count them only).",
)
@output_option
def whatif_command(
    *,
    inputs: FlowArgs,
    policy_paths: tuple[str, ...],
    replace: bool,
    include_denied: bool,
    output: str,
) -> None:
    """Observed connections a proposed policy set would deny, per workload pair.

    Exit 0 when nothing would be denied, 1 otherwise, 2 on bad input.
    """
    proposal = load_proposal(policy_paths)
    run = observe(inputs)
    result = whatif(
        run.observations,
        attributor=run.attributor,
        policies=proposal,
        replace=replace,
        include_denied=include_denied,
        pod_cidrs=run.pod_cidrs,
    )
    fmt = output_format(output)
    if fmt is OutputFormat.TABLE:
        render_whatif_table(result, replace=replace, console=stdout_console())
    else:
        emit(
            whatif_to_dict(result, replace=replace, include_denied=include_denied), fmt, sys.stdout
        )
    sys.exit(0 if result.ok else 1)
