"""Rendering of `netwatch graph`: a networkx DiGraph of workloads, as JSON, DOT or GraphML.

`to_networkx` builds the DiGraph from the pure `core.graph.WorkloadGraph` (networkx stays
out of the core). Node attributes: `kind`, `namespace`, `name`, `workload_kind`,
`records_in/out`, `bytes_in/out`, `verdicts` (records per verdict). Edge attributes:
`ports` (`PROTOCOL/PORT`), `protocols`, `services`, `count`, `bytes`, `packets`,
`verdicts`, `verdict` (the worst: denied > unknown > unrestricted > allowed).

JSON is what Grafana's Node Graph panel reads — two frames, `nodes` (`id`, `title`,
`subTitle`, `mainStat`, `secondaryStat`, `arc__*` fractions summing to 1, `detail__*`)
and `edges` (`id`, `source`, `target`, `mainStat`, `secondaryStat`, `detail__*`,
`thickness`, `color`, `highlighted`). Field names per Grafana's Node Graph data API:
https://grafana.com/docs/grafana/latest/panels-visualizations/visualizations/node-graph/
(the `NodeGraphDataFrameFieldNames` enum of `@grafana/data`:
https://grafana.com/docs/grafana/v8.2/packages_api/data/nodegraphdataframefieldnames/).
Feed each list to the panel as its own frame (e.g. the Infinity data source's "Nodes -
Node Graph" and "Edges - Node Graph" formats). The arc colours are panel overrides on
the `arc__allowed`, `arc__denied`, `arc__unrestricted` and `arc__unknown` fields.

DOT is written here (no pydot/pygraphviz needed); GraphML by networkx, with lists joined
by commas and verdict counts as `verdict_<kind>` attributes (GraphML has scalars only).
"""

from __future__ import annotations

import io
import math
from typing import Any

import networkx as nx

from netwatch.core.attribution import VerdictKind
from netwatch.core.graph import GraphEdge, GraphNode, WorkloadGraph
from netwatch.render.analysis import human_bytes

VERDICT_COLOR = {
    VerdictKind.ALLOWED: "green",
    VerdictKind.DENIED: "red",
    VerdictKind.UNRESTRICTED: "orange",
    VerdictKind.UNKNOWN: "purple",
}
MAX_THICKNESS = 6


def to_networkx(graph: WorkloadGraph) -> nx.DiGraph:
    g = nx.DiGraph(name="netwatch workloads")
    for n in graph.nodes:
        g.add_node(
            n.id,
            kind=n.kind,
            namespace=n.namespace,
            name=n.name,
            workload_kind=n.workload_kind,
            records_in=n.records_in,
            records_out=n.records_out,
            bytes_in=n.bytes_in,
            bytes_out=n.bytes_out,
            verdicts={k.value: c for k, c in n.verdicts},
        )
    for e in graph.edges:
        g.add_edge(
            e.source,
            e.target,
            ports=list(e.ports),
            protocols=list(e.protocols),
            services=list(e.services),
            count=e.count,
            bytes=e.bytes,
            packets=e.packets,
            verdicts={k.value: c for k, c in e.verdicts},
            verdict=e.worst.value,
        )
    return g


# ------------------------------------------------------------------ Grafana JSON


def _subtitle(n: GraphNode) -> str:
    if n.kind == "pod":
        return f"{n.namespace} · {n.workload_kind}" if n.workload_kind else str(n.namespace)
    return n.kind


def _verdict_text(verdicts: tuple[tuple[VerdictKind, int], ...]) -> str:
    return ", ".join(f"{k.value} {c:,}" for k, c in verdicts if c)


def grafana_node(n: GraphNode) -> dict[str, Any]:
    total = sum(c for _, c in n.verdicts)
    out: dict[str, Any] = {
        "id": n.id,
        "title": n.name,
        "subTitle": _subtitle(n),
        "mainStat": f"{n.records_in + n.records_out:,} conns",
        "secondaryStat": human_bytes(n.bytes_in + n.bytes_out),
    }
    for kind, count in n.verdicts:
        out[f"arc__{kind.value}"] = round(count / total, 4) if total else 0
    out |= {
        "detail__kind": n.kind,
        "detail__namespace": n.namespace or "",
        "detail__workload_kind": n.workload_kind or "",
        "detail__received": f"{n.records_in:,} conns, {human_bytes(n.bytes_in)}",
        "detail__sent": f"{n.records_out:,} conns, {human_bytes(n.bytes_out)}",
        "detail__verdicts": _verdict_text(n.verdicts),
    }
    return out


def _thickness(count: int, biggest: int) -> int:
    """1..MAX_THICKNESS, logarithmic in the edge's record count."""
    if biggest <= 1:
        return 1
    return 1 + round((MAX_THICKNESS - 1) * math.log(count) / math.log(biggest))


def grafana_edge(e: GraphEdge, *, biggest: int) -> dict[str, Any]:
    worst = e.worst
    return {
        "id": e.id,
        "source": e.source,
        "target": e.target,
        "mainStat": f"{e.count:,} conns",
        "secondaryStat": human_bytes(e.bytes),
        "detail__ports": ", ".join(e.ports),
        "detail__services": ", ".join(e.services),
        "detail__verdicts": _verdict_text(e.verdicts),
        "detail__verdict": worst.value,
        "thickness": _thickness(e.count, biggest),
        "color": VERDICT_COLOR[worst],
        "highlighted": worst is VerdictKind.DENIED,
    }


def graph_to_grafana(graph: WorkloadGraph) -> dict[str, Any]:
    biggest = max((e.count for e in graph.edges), default=1)
    return {
        "nodes": [grafana_node(n) for n in graph.nodes],
        "edges": [grafana_edge(e, biggest=biggest) for e in graph.edges],
    }


# ------------------------------------------------------------------ DOT


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def graph_to_dot(graph: WorkloadGraph) -> str:
    lines = [
        "digraph netwatch {",
        "  rankdir=LR;",
        '  node [shape=box, style=rounded, fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for n in graph.nodes:
        shape = "" if n.kind == "pod" else ", shape=ellipse"
        label = f"{n.name}\n{_subtitle(n)}"
        lines.append(f"  {_dot_quote(n.id)} [label={_dot_quote(label)}{shape}];")
    biggest = max((e.count for e in graph.edges), default=1)
    for e in graph.edges:
        worst = e.worst
        label = f"{', '.join(e.ports)}\n{e.count:,} conns, {human_bytes(e.bytes)}"
        if worst is not VerdictKind.ALLOWED:
            label += f"\n{_verdict_text(e.verdicts)}"
        style = ", style=dashed" if worst is VerdictKind.UNKNOWN else ""
        lines.append(
            f"  {_dot_quote(e.source)} -> {_dot_quote(e.target)} [label={_dot_quote(label)}, "
            f"color={VERDICT_COLOR[worst]}, penwidth={_thickness(e.count, biggest)}{style}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ GraphML


def _scalar_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, list):
            out[key] = ",".join(value)
        elif isinstance(value, dict):
            for sub, n in value.items():
                out[f"verdict_{sub}"] = n
        else:
            out[key] = value
    return out


def graph_to_graphml(g: nx.DiGraph) -> str:
    flat = nx.DiGraph()
    for node, attrs in g.nodes(data=True):
        flat.add_node(node, **_scalar_attrs(attrs))
    for src, dst, attrs in g.edges(data=True):
        flat.add_edge(src, dst, **_scalar_attrs(attrs))
    buf = io.BytesIO()
    nx.write_graphml(flat, buf, encoding="utf-8", prettyprint=True)
    return buf.getvalue().decode("utf-8")
