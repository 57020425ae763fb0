"""`netwatch graph`: the workload graph of observed connections (DESIGN §4).

Same inputs as `netwatch analyze` (cluster snapshot plus a flow log or pcap, attributed
per record at its own time); output is a directed graph of workloads whose edges carry
ports, protocols, counts, bytes and verdicts, as Grafana Node Graph JSON (default), DOT
or GraphML (see `netwatch.render.graph`).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import click

from netwatch.cli.analyze import FlowArgs, attribute_flows, flows_options
from netwatch.cli.common import BadInput
from netwatch.core.graph import workload_graph
from netwatch.render.graph import graph_to_dot, graph_to_grafana, graph_to_graphml, to_networkx
from netwatch.render.output import dump_json

FORMATS = ("json", "dot", "graphml")


@click.command()
@flows_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="json",
    show_default=True,
    help="json: Grafana Node Graph nodes/edges; dot: Graphviz; graphml: networkx GraphML.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=str, dir_okay=False),
    help="Write to FILE instead of stdout.",
)
def graph(
    *,
    inputs: FlowArgs,
    fmt: str,
    out_path: str | None,
) -> None:
    """Workload graph of observed connections: JSON (Grafana Node Graph), DOT or GraphML."""
    run = attribute_flows(inputs)
    wg = workload_graph(run.analysis.result(static=False).groups)
    if fmt == "dot":
        text = graph_to_dot(wg)
    elif fmt == "graphml":
        text = graph_to_graphml(to_networkx(wg))
    else:
        buf = io.StringIO()
        dump_json(graph_to_grafana(wg), buf)
        text = buf.getvalue()
    if out_path is None:
        sys.stdout.write(text)
        return
    try:
        Path(out_path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"--out {out_path}: {exc.strerror or exc}") from None
