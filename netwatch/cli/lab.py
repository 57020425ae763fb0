"""`netwatch lab up|traffic|down|list`: the netns lab from the command line (DESIGN §4).

`up` builds a lab from a scenario and leaves it running (recorded in
/run/netwatch-lab/<id>.json) unless `--foreground` keeps it until Ctrl-C; `traffic` runs
a scenario's traffic script against a running lab and prints or writes the manifest;
`down` removes a run (by scenario, run id, or all recorded runs). Needs root.
Exit status: 0 done, 1 some scripted connections failed, 2 bad input or usage.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.markup import escape
from rich.table import Table

from netwatch.cli.common import (
    BadInput,
    output_format,
    output_option,
    stderr_console,
    stdout_console,
)
from netwatch.k8s.snapshot import load_cluster
from netwatch.lab.lab import STATE_DIR, LabHandle, attach, down, read_state, runs, up
from netwatch.lab.manifest import TrafficManifest
from netwatch.lab.scenario import ScenarioError, load_scenario
from netwatch.lab.topology import LabError
from netwatch.render.output import OutputFormat, emit

EXIT_TRAFFIC_FAILED = 1
_F = TypeVar("_F", bound=Callable[..., Any])


@click.group()
def lab() -> None:
    """A miniature cluster of network namespaces on this machine (needs root)."""


def _scenario_option(required: bool) -> Callable[[_F], _F]:
    return click.option(
        "--scenario",
        "scenario_path",
        required=required,
        type=click.Path(path_type=str),
        help="Scenario file (format: fixtures/lab/README.md).",
    )


@lab.command("up")
@_scenario_option(required=True)
@click.option(
    "--foreground",
    is_flag=True,
    help="Stay in the foreground and remove the lab on Ctrl-C or SIGTERM.",
)
@click.option(
    "--snapshot-out",
    type=click.Path(dir_okay=False, path_type=str),
    help="Also copy the cluster snapshot here (it lives in the run directory otherwise).",
)
@output_option
def up_command(scenario_path: str, foreground: bool, snapshot_out: str | None, output: str) -> None:
    """Build the lab and start its pods' servers."""
    try:
        handle = up(scenario_path)
    except ScenarioError as exc:
        raise _bad_input(exc) from None
    except (LabError, PermissionError) as exc:
        raise click.ClickException(str(exc)) from None
    problems = load_cluster([handle.snapshot_path]).problems
    for problem in problems:  # a lab bug, not the user's: say so loudly
        stderr_console().print(f"[yellow]warning:[/] snapshot: {escape(str(problem))}")
    if snapshot_out:
        shutil.copyfile(handle.snapshot_path, snapshot_out)
    _print_lab(handle, output_format(output))
    if not foreground:
        handle.detach()
        return
    stderr_console().print(f"lab {handle.run_id} is up; Ctrl-C removes it")
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):  # SIGTERM/SIGHUP raise SystemExit (lab.lab)
        pass
    finally:
        handle.down()


def _print_lab(handle: LabHandle, fmt: OutputFormat) -> None:
    if fmt is not OutputFormat.TABLE:
        emit(read_state(handle.run_id, state_dir=handle.state_dir) or {}, fmt, sys.stdout)
        return
    console = stdout_console()
    console.print(
        f"lab [bold]{handle.run_id}[/] (scenario {handle.plan.scenario.name}) is up\n"
        f"state:    {handle.state_path}\nsnapshot: {handle.snapshot_path}",
        highlight=False,
    )
    nodes = Table("node", "netns", "ip", "podCIDR")
    for n in handle.plan.nodes:
        nodes.add_row(n.name, n.netns, n.ip, n.pod_cidr)
    console.print(nodes)
    pods = Table("pod", "node", "ip", "host veth", "netns")
    for p in handle.plan.pods:
        pods.add_row(p.key, p.node, p.ip, p.interface or "(hostNetwork)", p.netns)
    console.print(pods)
    if handle.internet is not None:
        console.print(f"internet: {handle.internet.ip} ({handle.internet.netns})")


@lab.command("traffic")
@_scenario_option(required=False)
@click.option("--run-id", help="The lab to use (default: the one running this scenario).")
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False, path_type=str),
    help="Write the traffic manifest (JSON) here.",
)
@output_option
def traffic_command(
    scenario_path: str | None, run_id: str | None, manifest_path: str | None, output: str
) -> None:
    """Run the scenario's traffic script in a running lab; report what was sent."""
    run_id = _pick_run(run_id, scenario_path)
    try:
        handle = attach(run_id)
        steps = load_scenario(scenario_path).traffic if scenario_path else None
        manifest = handle.run_traffic(steps, check=False)
    except ScenarioError as exc:
        raise _bad_input(exc) from None
    except LabError as exc:
        raise _bad_input(exc) from None
    if manifest_path:
        Path(manifest_path).write_text(manifest.to_json(), encoding="utf-8")
    fmt = output_format(output)
    if fmt is OutputFormat.TABLE:
        _print_manifest(manifest)
    else:
        emit(manifest.to_dict(), fmt, sys.stdout)
    if manifest.failures():
        sys.exit(EXIT_TRAFFIC_FAILED)


def _print_manifest(manifest: TrafficManifest) -> None:
    table = Table("step", "kind", "connections", "failed", "bytes out", "bytes in", "rate/s")
    for step in manifest.steps:
        conns = manifest.step(step.name)
        table.add_row(
            step.name,
            step.kind,
            str(step.connections),
            str(step.failed),
            str(sum(c.payload_out for c in conns)),
            str(sum(c.payload_in for c in conns)),
            f"{step.rate:.0f}" if step.rate else "",
        )
    console = stdout_console()
    console.print(table)
    for c in manifest.failures()[:20]:
        reason = c.error or "not confirmed by the server"
        console.print(f"[red]failed[/] {escape(f'{c.step} {c.id}: {reason}')}")


def _bad_input(exc: Exception) -> BadInput:
    # Messages name fields like `traffic[step-0].from`: not rich markup.
    return BadInput(escape(str(exc)))


def _pick_run(run_id: str | None, scenario_path: str | None) -> str:
    if run_id:
        return run_id
    live = [r for r in runs() if r.get("status") == "up"]
    if scenario_path:
        wanted = str(Path(scenario_path).resolve())
        matching = [r for r in live if _resolved(r.get("scenario_source")) == wanted]
        live = matching or live
    if len(live) == 1:
        return str(live[0]["run_id"])
    if not live:
        raise BadInput("no lab is up (netwatch lab up --scenario FILE)")
    ids = ", ".join(str(r["run_id"]) for r in live)
    raise BadInput(f"several labs are up ({ids}); choose one with --run-id")


def _resolved(path: object) -> str | None:
    return str(Path(path).resolve()) if isinstance(path, str) else None


@lab.command("down")
@_scenario_option(required=False)
@click.option("--run-id", help="Remove this run (also works for a crashed, half-built run).")
@click.option("--all", "everything", is_flag=True, help="Remove every recorded run.")
def down_command(scenario_path: str | None, run_id: str | None, everything: bool) -> None:
    """Remove a lab: its processes, namespaces and files."""
    if everything:
        ids = [str(r["run_id"]) for r in runs()]
    elif run_id:
        ids = [run_id]
    elif scenario_path:
        wanted = str(Path(scenario_path).resolve())
        ids = [str(r["run_id"]) for r in runs() if _resolved(r.get("scenario_source")) == wanted]
        if not ids:
            raise BadInput(f"no recorded lab run of {scenario_path}")
    else:
        raise BadInput("say which lab: --scenario FILE, --run-id ID or --all")
    err = stderr_console()
    for rid in ids:
        try:
            removed = down(rid)
        except LabError as exc:
            raise click.ClickException(str(exc)) from None
        err.print(f"lab {rid}: removed {len(removed)} network namespace(s)", highlight=False)


@lab.command("list")
@output_option
def list_command(output: str) -> None:
    """Recorded lab runs and whether their namespaces are all still there."""
    found = runs()
    fmt = output_format(output)
    if fmt is not OutputFormat.TABLE:
        emit({"runs": found}, fmt, sys.stdout)
        return
    table = Table("run", "scenario", "status", "alive", "namespaces", "state file")
    for r in found:
        table.add_row(
            str(r.get("run_id")),
            str(r.get("scenario")),
            str(r.get("status")),
            "yes" if r.get("alive") else "no",
            str(len(r.get("netns", []))),
            str(STATE_DIR / f"{r.get('run_id')}.json"),
        )
    stdout_console().print(table)
