"""The workload graph: who talked to whom, aggregated from analysis groups (pure).

Nodes are the endpoints of `analysis.ConnectionGroup`s by their key (`namespace/workload`,
`world` or a CIDR name, `node:NAME`, `service:ns/name`, `unknown:IP`); one directed edge
per (client, server) pair carries every port and protocol used, record and byte counts,
and the records per verdict. Everything is sorted, so any rendering of it is
deterministic. `netwatch.render.graph` turns it into a networkx DiGraph, Grafana Node
Graph JSON, DOT and GraphML.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from netwatch.core.analysis import ConnectionGroup, EndpointView
from netwatch.core.attribution import VERDICT_ORDER, VerdictKind


@dataclass(frozen=True, slots=True)
class GraphNode:
    id: str
    kind: str
    """`pod` (a workload), `service`, `node`, `external` or `unknown`."""
    namespace: str | None
    name: str
    """Workload name for pods; node, range, Service or address otherwise."""
    workload_kind: str | None
    records_in: int
    records_out: int
    bytes_in: int
    bytes_out: int
    verdicts: tuple[tuple[VerdictKind, int], ...]
    """Records per verdict over every edge touching the node, in `VERDICT_ORDER`."""


@dataclass(frozen=True, slots=True)
class GraphEdge:
    source: str
    target: str
    ports: tuple[str, ...]
    """`PROTOCOL/PORT` (the server port as the backend sees it), sorted."""
    protocols: tuple[str, ...]
    services: tuple[str, ...]
    """Services the client addressed on this edge."""
    count: int
    bytes: int
    packets: int
    verdicts: tuple[tuple[VerdictKind, int], ...]
    """Records per verdict, in `VERDICT_ORDER`, zero counts included."""

    @property
    def id(self) -> str:
        return f"{self.source}->{self.target}"

    @property
    def worst(self) -> VerdictKind:
        """The verdict an edge is drawn as: denied, else unknown, unrestricted, allowed."""
        counts = dict(self.verdicts)
        for kind in (
            VerdictKind.DENIED,
            VerdictKind.UNKNOWN,
            VerdictKind.UNRESTRICTED,
            VerdictKind.ALLOWED,
        ):
            if counts.get(kind):
                return kind
        return VerdictKind.ALLOWED


@dataclass(frozen=True, slots=True)
class WorkloadGraph:
    nodes: tuple[GraphNode, ...]
    """Sorted by id."""
    edges: tuple[GraphEdge, ...]
    """Sorted by (source, target)."""


class _EdgeAcc:
    __slots__ = ("bytes", "count", "packets", "ports", "protocols", "services", "verdicts")

    def __init__(self) -> None:
        self.ports: set[tuple[str, int]] = set()
        self.protocols: set[str] = set()
        self.services: set[str] = set()
        self.count = self.bytes = self.packets = 0
        self.verdicts = dict.fromkeys(VERDICT_ORDER, 0)


def _node_name(view: EndpointView) -> str:
    if view.kind == "pod" and view.workload:
        return view.workload
    return view.name or view.key


def workload_graph(groups: Iterable[ConnectionGroup]) -> WorkloadGraph:
    views: dict[str, EndpointView] = {}
    edges: dict[tuple[str, str], _EdgeAcc] = {}
    for g in groups:
        views.setdefault(g.client.key, g.client)
        views.setdefault(g.server.key, g.server)
        acc = edges.get((g.client.key, g.server.key))
        if acc is None:
            acc = edges[(g.client.key, g.server.key)] = _EdgeAcc()
        acc.ports.add((g.protocol.value, g.port))
        acc.protocols.add(g.protocol.value)
        if g.server.service:
            acc.services.add(g.server.service)
        acc.count += g.count
        acc.bytes += g.bytes
        acc.packets += g.packets
        acc.verdicts[g.verdict] += g.count
    built_edges = tuple(
        GraphEdge(
            source=src,
            target=dst,
            ports=tuple(f"{p}/{n}" for p, n in sorted(acc.ports)),
            protocols=tuple(sorted(acc.protocols)),
            services=tuple(sorted(acc.services)),
            count=acc.count,
            bytes=acc.bytes,
            packets=acc.packets,
            verdicts=tuple(acc.verdicts.items()),
        )
        for (src, dst), acc in sorted(edges.items())
    )
    touching: dict[str, list[GraphEdge]] = {key: [] for key in views}
    incoming: dict[str, list[GraphEdge]] = {key: [] for key in views}
    for e in built_edges:
        touching[e.source].append(e)
        incoming[e.target].append(e)
        if e.target != e.source:
            touching[e.target].append(e)
    nodes = []
    for key in sorted(views):
        view = views[key]
        verdicts = dict.fromkeys(VERDICT_ORDER, 0)
        for e in touching[key]:
            for kind, n in e.verdicts:
                verdicts[kind] += n
        out = [e for e in touching[key] if e.source == key]
        nodes.append(
            GraphNode(
                id=key,
                kind=view.kind,
                namespace=view.namespace,
                name=_node_name(view),
                workload_kind=view.workload_kind,
                records_in=sum(e.count for e in incoming[key]),
                records_out=sum(e.count for e in out),
                bytes_in=sum(e.bytes for e in incoming[key]),
                bytes_out=sum(e.bytes for e in out),
                verdicts=tuple(verdicts.items()),
            )
        )
    return WorkloadGraph(nodes=tuple(nodes), edges=built_edges)
