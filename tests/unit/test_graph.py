"""The workload graph: pure aggregation, networkx, Grafana Node Graph JSON, DOT, GraphML."""

from __future__ import annotations

import io

import networkx as nx

from netwatch.core.analysis import TrafficAnalysis
from netwatch.core.attribution import Attributor, VerdictKind
from netwatch.core.cluster import Cluster
from netwatch.core.graph import WorkloadGraph, workload_graph
from netwatch.core.model import Node, NodeName, Protocol
from netwatch.render.graph import graph_to_dot, graph_to_grafana, graph_to_graphml, to_networkx
from tests.builders import peer, pod, policy, port, rule, sel

T0 = 1_764_237_600.0


def build() -> WorkloadGraph:
    pods = [
        pod("shop/web-1", {"app": "web"}, ip="10.42.0.10"),
        pod("shop/api-1", {"app": "api"}, ip="10.42.0.20"),
        pod("shop/db-0", {"app": "db"}, ip="10.42.0.30"),
    ]
    pol = policy(
        "shop/api-from-web",
        sel(app="api"),
        ingress=[rule([peer(pods=sel(app="web"))], [port(8080)])],
    )
    node = Node(NodeName("n1"), ("10.0.0.1",), pod_cidrs=("10.42.0.0/24",))
    cluster = Cluster.build(pods=pods, policies=[pol], nodes=[node])
    analysis = TrafficAnalysis(Attributor.from_cluster(cluster))
    tcp, udp = Protocol.TCP, Protocol.UDP
    analysis.add_rows(
        [
            ("10.42.0.10", "10.42.0.20", 8080, tcp, T0, T0 + 1, 1000, 10, None, 40000, False),
            ("10.42.0.10", "10.42.0.20", 8080, tcp, T0 + 5, T0 + 6, 500, 5, None, 40001, False),
            ("10.42.0.10", "10.42.0.20", 9090, tcp, T0, T0 + 1, 100, 2, None, 40002, False),
            ("10.42.0.20", "10.42.0.30", 5432, tcp, T0, T0 + 1, 300, 3, None, 40003, False),
            ("10.42.0.20", "10.42.0.30", 53, udp, T0, T0 + 1, 80, 2, None, 40004, False),
            ("8.8.8.8", "10.42.0.10", 8080, tcp, T0, T0 + 1, 60, 1, None, 40005, False),
        ]
    )
    return workload_graph(analysis.result(static=False).groups)


def test_edges_aggregate_ports_counts_bytes_and_verdicts_per_workload_pair() -> None:
    g = build()
    assert [n.id for n in g.nodes] == ["shop/api-1", "shop/db-0", "shop/web-1", "world"]
    edges = {(e.source, e.target): e for e in g.edges}
    web_api = edges[("shop/web-1", "shop/api-1")]
    assert web_api.ports == ("TCP/8080", "TCP/9090")
    assert (web_api.count, web_api.bytes, web_api.packets) == (3, 1600, 17)
    assert dict(web_api.verdicts) == {
        VerdictKind.ALLOWED: 2,
        VerdictKind.DENIED: 1,
        VerdictKind.UNRESTRICTED: 0,
        VerdictKind.UNKNOWN: 0,
    }
    assert web_api.worst is VerdictKind.DENIED
    assert edges[("shop/api-1", "shop/db-0")].protocols == ("TCP", "UDP")
    api = next(n for n in g.nodes if n.id == "shop/api-1")
    assert (api.records_in, api.records_out, api.bytes_in, api.bytes_out) == (3, 2, 1600, 380)
    world = next(n for n in g.nodes if n.id == "world")
    assert world.kind == "external" and world.records_out == 1


def test_networkx_graph_carries_the_attributes() -> None:
    dg = to_networkx(build())
    assert isinstance(dg, nx.DiGraph)
    assert dg.number_of_nodes() == 4 and dg.number_of_edges() == 3
    attrs = dg.edges["shop/web-1", "shop/api-1"]
    assert attrs["ports"] == ["TCP/8080", "TCP/9090"]
    assert attrs["verdicts"]["denied"] == 1 and attrs["verdict"] == "denied"
    assert dg.nodes["shop/api-1"]["kind"] == "pod"


def test_grafana_json_uses_node_graph_field_names() -> None:
    data = graph_to_grafana(build())
    assert set(data) == {"nodes", "edges"}
    node = data["nodes"][0]
    for name in ("id", "title", "subTitle", "mainStat", "secondaryStat"):
        assert name in node
    arcs = [v for k, v in node.items() if k.startswith("arc__")]
    assert len(arcs) == 4 and abs(sum(arcs) - 1) < 1e-3
    edge = next(e for e in data["edges"] if e["id"] == "shop/web-1->shop/api-1")
    assert (edge["source"], edge["target"]) == ("shop/web-1", "shop/api-1")
    assert edge["color"] == "red" and edge["highlighted"] is True
    assert edge["detail__ports"] == "TCP/8080, TCP/9090"
    assert 1 <= edge["thickness"] <= 6


def test_dot_is_deterministic_and_quotes_ids() -> None:
    text = graph_to_dot(build())
    assert text == graph_to_dot(build())
    assert text.startswith("digraph netwatch {")
    assert '"shop/web-1" -> "shop/api-1"' in text
    assert "color=red" in text


def test_graphml_round_trips_through_networkx() -> None:
    text = graph_to_graphml(to_networkx(build()))
    assert text == graph_to_graphml(to_networkx(build()))
    back = nx.read_graphml(io.BytesIO(text.encode()))
    assert back.edges["shop/web-1", "shop/api-1"]["ports"] == "TCP/8080,TCP/9090"
    assert back.edges["shop/web-1", "shop/api-1"]["verdict_denied"] == 1
    assert back.nodes["world"]["kind"] == "external"
