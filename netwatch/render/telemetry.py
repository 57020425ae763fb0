"""The agent's read-only API documents, rendered from a published `TelemetrySnapshot`.

`netwatch.server` serves them (`/api/flows`, `/api/findings`, `/api/graph`); they are
plain JSON-ready values built from the immutable snapshot, so any thread may build them.

`/api/graph` follows Grafana's Node Graph data API
(https://grafana.com/docs/grafana/latest/panels-visualizations/visualizations/node-graph/#data-api;
field names as in `NodeGraphDataFrameFieldNames`,
https://github.com/grafana/grafana/blob/main/packages/grafana-data/src/utils/nodeGraph.ts,
which Grafana matches case-insensitively): nodes have `id`, `title`, `subtitle`,
`mainstat` (connections), `secondarystat` (bytes), `arc__<verdict>` (shares of the
connections touching the node, summing to 1) and `detail__*`; edges have `id` (`SRC->DST`),
`source`, `target`, `mainstat`, `secondarystat`, `color` (the worst verdict: denied red,
unknown purple, unrestricted orange, allowed green) and `detail__*`. Node ids are the
keys `netwatch analyze` uses: `namespace/workload`, `world` or a CIDR name, `node:NAME`,
`service:namespace/name`, `unknown`. `graph_document` gives row lists (the Infinity data
source's "Nodes/Edges - Node Graph" formats); `graph_frames` the same as two data frames
in Grafana's JSON frame encoding, marked `preferredVisualisationType: nodeGraph`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

from netwatch.core.attribution import VERDICT_ORDER, VerdictKind
from netwatch.core.telemetry import (
    FLOW_LABELS,
    NODE_PREFIX,
    SERVICE_PREFIX,
    UNEXPECTED_LABELS,
    UNKNOWN_PEER,
    TelemetrySnapshot,
)


def to_json(document: Any) -> bytes:
    """Compact UTF-8 JSON with a trailing newline; NaN/infinity are refused."""
    return (json.dumps(document, separators=(",", ":"), allow_nan=False) + "\n").encode()


def _time(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def flows_document(
    snap: TelemetrySnapshot, filters: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """`/api/flows`: every flow series (or those whose labels equal `filters`)."""
    wanted = [(FLOW_LABELS.index(k), v) for k, v in (filters or {}).items()]
    rows = []
    for key, counts in snap.flows:
        if all(key[i] == v for i, v in wanted):
            rows.append(
                dict(zip(FLOW_LABELS, key, strict=True))
                | {
                    "flows": counts.flows,
                    "bytes": counts.bytes,
                    "packets": counts.packets,
                    "last_seen": _time(counts.last_seen),
                }
            )
    return {"generated_at": snap.generated_at, "node": snap.build.node, "flows": rows}


def findings_document(snap: TelemetrySnapshot) -> dict[str, Any]:
    """`/api/findings`: counts per kind plus the unused-rule and unexpected-flow rows."""
    return {
        "generated_at": snap.generated_at,
        "node": snap.build.node,
        "counts": dict(snap.findings),
        "unused_rules": [
            {"namespace": r.namespace, "policy": r.policy, "direction": r.direction, "rule": r.rule}
            for r in snap.unused_rules
        ],
        "unexpected_flows": [
            dict(zip(UNEXPECTED_LABELS, f.key, strict=True))
            | {
                "flows": f.flows,
                "bytes": f.bytes,
                "packets": f.packets,
                "last_seen": _time(f.last_seen),
            }
            for f in snap.unexpected_flows
        ],
    }


_COLORS = {"denied": "red", "unknown": "purple", "unrestricted": "orange", "allowed": "green"}
_WORST_FIRST = ("denied", "unknown", "unrestricted", "allowed")
_VERDICTS = tuple(v.value for v in VERDICT_ORDER)


def _node_id(namespace: str, workload: str) -> tuple[str, str, str, str]:
    """(id, title, subtitle, kind) of a flow peer, ids as `analysis` keys endpoints."""
    if workload.startswith(SERVICE_PREFIX):
        name = workload[len(SERVICE_PREFIX) :]
        return f"{SERVICE_PREFIX}{namespace}/{name}", name, namespace, "service"
    if namespace:
        return f"{namespace}/{workload}", workload, namespace, "workload"
    if workload.startswith(NODE_PREFIX):
        return workload, workload[len(NODE_PREFIX) :], "node", "node"
    if workload == UNKNOWN_PEER:
        return workload, workload, "unresolved", "unknown"
    return workload, workload, "external", "external"


def graph_document(snap: TelemetrySnapshot) -> dict[str, list[dict[str, Any]]]:
    """`/api/graph`: Node Graph nodes and edges (see the module doc for the fields)."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: dict[tuple[str, str], dict[str, Any]] = {}
    for key, counts in snap.flows:
        ends = []
        for namespace, workload in ((key[0], key[1]), (key[2], key[3])):
            node_id, title, subtitle, kind = _node_id(namespace, workload)
            ends.append(node_id)
            if node_id not in nodes:
                nodes[node_id] = {
                    "title": title,
                    "subtitle": subtitle,
                    "kind": kind,
                    "flows": 0,
                    "bytes": 0,
                    "verdicts": Counter[str](),
                }
        edge = edges.setdefault(
            (ends[0], ends[1]),
            {"flows": 0, "bytes": 0, "ports": set(), "verdicts": Counter[str]()},
        )
        edge["flows"] += counts.flows
        edge["bytes"] += counts.bytes
        edge["ports"].add((key.protocol, key.dst_port))
        edge["verdicts"][key.verdict] += counts.flows
        for node_id in {ends[0], ends[1]}:
            node = nodes[node_id]
            node["flows"] += counts.flows
            node["bytes"] += counts.bytes
            node["verdicts"][key.verdict] += counts.flows
    return {
        "nodes": [_node_row(node_id, nodes[node_id]) for node_id in sorted(nodes)],
        "edges": [_edge_row(src, dst, edges[(src, dst)]) for src, dst in sorted(edges)],
    }


def _verdict_text(verdicts: Counter[str]) -> str:
    return ", ".join(f"{v} {verdicts[v]}" for v in _VERDICTS if verdicts[v])


def _node_row(node_id: str, node: dict[str, Any]) -> dict[str, Any]:
    verdicts: Counter[str] = node["verdicts"]
    total = sum(verdicts.values())
    arcs = {f"arc__{v}": (verdicts[v] / total if total else 0.0) for v in _VERDICTS}
    if not total:
        arcs["arc__allowed"] = 1.0  # arcs must sum to 1; a node with no new connections
    return {
        "id": node_id,
        "title": node["title"],
        "subtitle": node["subtitle"],
        "mainstat": node["flows"],
        "secondarystat": node["bytes"],
        **arcs,
        "detail__kind": node["kind"],
        "detail__verdicts": _verdict_text(verdicts),
    }


def _edge_row(src: str, dst: str, edge: dict[str, Any]) -> dict[str, Any]:
    verdicts: Counter[str] = edge["verdicts"]
    worst = next((v for v in _WORST_FIRST if verdicts[v]), VerdictKind.ALLOWED.value)
    ports = sorted(edge["ports"], key=lambda p: (p[0], int(p[1]) if p[1].isdigit() else 1 << 17))
    return {
        "id": f"{src}->{dst}",
        "source": src,
        "target": dst,
        "mainstat": edge["flows"],
        "secondarystat": edge["bytes"],
        "color": _COLORS[worst],
        "detail__ports": ", ".join(f"{proto}/{port}" for proto, port in ports),
        "detail__verdicts": _verdict_text(verdicts),
        "detail__verdict": worst,
    }


def _frame(name: str, rows: list[dict[str, Any]], columns: list[str]) -> dict[str, Any]:
    fields = []
    for column in columns:
        sample = rows[0][column] if rows else ""
        kind = "number" if isinstance(sample, int | float) else "string"
        field: dict[str, Any] = {"name": column, "type": kind}
        if column.startswith("arc__"):
            verdict = column[len("arc__") :]
            field["config"] = {
                "displayName": verdict,
                "color": {"mode": "fixed", "fixedColor": _COLORS[verdict]},
            }
        if column == "mainstat":
            field["config"] = {"displayName": "connections"}
        if column == "secondarystat":
            field["config"] = {"displayName": "bytes", "unit": "decbytes"}
        fields.append(field)
    return {
        "schema": {
            "name": name,
            "meta": {"preferredVisualisationType": "nodeGraph"},
            "fields": fields,
        },
        "data": {"values": [[row[c] for row in rows] for c in columns]},
    }


_NODE_COLUMNS = [
    "id",
    "title",
    "subtitle",
    "mainstat",
    "secondarystat",
    *(f"arc__{v}" for v in _VERDICTS),
    "detail__kind",
    "detail__verdicts",
]
_EDGE_COLUMNS = [
    "id",
    "source",
    "target",
    "mainstat",
    "secondarystat",
    "color",
    "detail__ports",
    "detail__verdicts",
    "detail__verdict",
]


def graph_frames(snap: TelemetrySnapshot) -> list[dict[str, Any]]:
    """`/api/graph?format=frames`: the same data as two Grafana data frames."""
    doc = graph_document(snap)
    return [
        _frame("nodes", doc["nodes"], _NODE_COLUMNS),
        _frame("edges", doc["edges"], _EDGE_COLUMNS),
    ]
