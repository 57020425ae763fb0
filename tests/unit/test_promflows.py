"""`core.promflows`: workload edges from metrics become flow rows between representatives;
external ends become stand-ins that `suggest` turns into whole-range ipBlock rules."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from netwatch.core.attribution import Attributor
from netwatch.core.cluster import Cluster
from netwatch.core.identity import IdentityKind
from netwatch.core.model import Direction, Protocol
from netwatch.core.observed import Observations
from netwatch.core.policy import IPBlock, Peer, PortSpec, Rule
from netwatch.core.promflows import FLOW_LABELS, edge_rows
from netwatch.core.suggest import PeerKind, StandIn, SuggestOptions, suggest
from netwatch.core.verify import check_policies
from netwatch.k8s.snapshot import load_cluster

CLUSTER = (
    Path(__file__).resolve().parents[2] / "fixtures" / "scenarios" / "suggest-shop" / "cluster"
)
AT = 1764000500.0


def series(
    src: tuple[str, str], dst: tuple[str, str], port: str = "8080", proto: str = "TCP"
) -> dict[str, str]:
    values = (*src, *dst, port, proto, "allowed")
    return dict(zip(FLOW_LABELS, values, strict=True))


def test_workloads_become_their_first_pod_and_nodes_their_address() -> None:
    cluster = load_cluster([CLUSTER]).cluster
    rows = edge_rows(
        [
            (series(("shop", "frontend"), ("shop", "cart")), 3.0),
            (series(("monitoring", "prometheus"), ("", "node:node-2"), "9100"), 1.4),
        ],
        cluster,
        at=AT,
    )
    assert rows.skipped == {}
    [web, scrape] = rows.rows
    assert web.count == 3
    # frontend-7c9d8-aaaaa sorts first; cart has one pod
    assert web.row == (
        "10.244.1.10",
        "10.244.1.20",
        8080,
        Protocol.TCP,
        AT,
        AT,
        0,
        0,
        None,
        0,
        False,
    )
    assert scrape.count == 1
    assert scrape.row[:3] == ("10.244.2.40", "192.168.56.12", 9100)


def test_what_metrics_cannot_recreate_is_counted_by_reason() -> None:
    cluster = load_cluster([CLUSTER]).cluster
    rows = edge_rows(
        [
            (series(("shop", "cart"), ("", "corp"), "443"), 2.0),  # no --cidr corp=…
            (series(("", "unknown"), ("shop", "cart")), 1.0),
            (series(("shop", "gone"), ("shop", "cart")), 1.0),
            (series(("shop", "cart"), ("shop", "service:orphan")), 1.0),
            (series(("shop", "frontend"), ("shop", "cart"), "other"), 5.0),
            (series(("shop", "frontend"), ("shop", "cart"), "80", "GRE"), 1.0),
            (series(("shop", "frontend"), ("shop", "cart")), 0.2),  # rounds to nothing
        ],
        cluster,
        at=AT,
    )
    assert rows.rows == []
    assert rows.skipped == {
        "external peer named by the agents but not with --cidr": 2,
        "unknown endpoint": 1,
        "workload not in the cluster snapshot": 1,
        "Service without backends": 1,
        "port not a label (the 'other' bucket)": 5,
        "unrecognised protocol": 1,
    }


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


@pytest.mark.parametrize(
    ("named", "label", "expected"),
    [
        ({}, "world", "198.51.100.7"),
        ({"docs": "198.51.100.0/24"}, "world", "203.0.113.7"),  # not where `docs` claims
        ({"docs": "198.51.100.0/24"}, "docs", "198.51.100.1"),  # the first host
        ({"corp": "172.20.0.0/16", "vpn": "172.20.0.0/24"}, "corp", "172.20.1.0"),
        ({"lab": "10.244.0.0/16", "lab-a": "10.244.0.0/24"}, "lab", "10.244.3.0"),  # podCIDRs
        ({"n": "192.168.56.11/32"}, "n", None),  # a node's address: never external
    ],
)
def test_external_ends_stand_in_at_an_address_the_attributor_names_alike(
    named: Mapping[str, str], label: str, expected: str | None
) -> None:
    cluster = load_cluster([CLUSTER]).cluster
    rows = edge_rows(
        [(series(("shop", "cart"), ("", label), "443"), 2.0)], cluster, at=AT, named_cidrs=named
    )
    if expected is None:
        assert rows.rows == []
        assert rows.skipped == {"external peer without a free address to stand for it": 2}
        return
    [edge] = rows.rows
    assert edge.row[1] == expected
    cidr = named.get(label)
    assert rows.stand_ins == {expected: StandIn(label, None if cidr is None else net(cidr))}
    attributor = Attributor.from_cluster(cluster, named_cidrs=named)
    res = attributor.resolve_fields(*edge.row[:5], None)
    assert (res.server.kind, res.server.name) == (IdentityKind.EXTERNAL, label)


def suggested_from(
    cluster: Cluster,
    edges: list[tuple[dict[str, str], float]],
    named: Mapping[str, str],
    pod_cidrs: tuple[str, ...] = (),
) -> tuple[dict[str, list[Rule]], list[str], list[str | None], bool]:
    """(rules per policy and direction, warnings, review notes, verification ok)."""
    rows = edge_rows(edges, cluster, at=AT, named_cidrs=named, pod_cidrs=pod_cidrs)
    attributor = Attributor.from_cluster(cluster, named_cidrs=named, pod_cidrs=pod_cidrs)
    observed = Observations()
    for edge in rows.rows:
        observed.add_counted(edge.row, attributor, edge.count)
    result = suggest(
        observed,
        engine=attributor.engine,
        stand_ins=rows.stand_ins,
        options=SuggestOptions(pod_cidrs=pod_cidrs),
    )
    rules: dict[str, list[Rule]] = {}
    reviews: list[str | None] = []
    for s in result.policies:
        for d in Direction:
            rules[f"{s.policy.name} {d.value}"] = list(s.policy.rules(d))
        reviews += [r.review for r in s.rules if r.kind is PeerKind.RANGE]
    verification = check_policies(
        observed,
        attributor=attributor,
        policies=[s.policy for s in result.policies],
        replace=True,
        include_denied=False,
    )
    assert verification.checked == sum(e.count for e in rows.rows)
    return rules, list(result.warnings), reviews, verification.ok


POD_RANGES = (net("10.244.1.0/24"), net("10.244.2.0/24"))


def test_world_admits_any_address_outside_the_cluster_on_the_observed_port() -> None:
    cluster = load_cluster([CLUSTER]).cluster
    rules, warnings, reviews, ok = suggested_from(
        cluster,
        [
            (series(("shop", "cart"), ("", "world"), "443"), 2.0),
            (series(("", "world"), ("shop", "frontend"), "8080"), 5.0),
        ],
        {},
    )
    assert ok
    world = Peer(ip_block=IPBlock(net("0.0.0.0/0"), POD_RANGES))
    assert rules["cart-netwatch egress"][-1] == Rule(
        peers=(world,), ports=(PortSpec(Protocol.TCP, 443),)
    )
    # ingress: the server's port, named as its pod names it
    assert rules["frontend-netwatch ingress"] == [
        Rule(peers=(world,), ports=(PortSpec(Protocol.TCP, "http"),))
    ]
    assert (
        "shop/cart egress to world on TCP/443: metrics carry no addresses — this admits any "
        "external address; narrow it with the node agents' /api/suggestions or "
        "`netwatch suggest --flows`"
    ) in warnings
    assert any(w.startswith("shop/frontend ingress from world on TCP/http: ") for w in warnings)
    assert reviews == ["from metrics, which carry no addresses: admits any external address"] * 2


def test_world_also_excepts_the_pod_ranges_given_with_pod_cidr() -> None:
    """A CNI with its own IPAM leaves node podCIDRs empty: `--pod-cidr` names the range."""
    cluster = load_cluster([CLUSTER]).cluster
    rules, _, _, ok = suggested_from(
        cluster,
        [(series(("shop", "cart"), ("", "world"), "443"), 2.0)],
        {},
        pod_cidrs=("10.250.0.0/16", "10.244.1.0/24"),  # the second repeats a node's
    )
    assert ok
    (peer,) = rules["cart-netwatch egress"][-1].peers
    assert peer.ip_block == IPBlock(net("0.0.0.0/0"), (*POD_RANGES, net("10.250.0.0/16")))


def test_a_named_cidr_is_admitted_as_given_minus_the_cluster_ranges_inside_it() -> None:
    cluster = load_cluster([CLUSTER]).cluster
    named = {"corp": "172.20.0.0/16", "lab": "10.244.0.0/16"}
    rules, warnings, reviews, ok = suggested_from(
        cluster,
        [
            (series(("shop", "cart"), ("", "corp"), "5432"), 2.0),
            (series(("", "lab"), ("monitoring", "prometheus"), "9090"), 1.0),
            (series(("shop", "cart"), ("", "world"), "53", "UDP"), 1.0),
        ],
        named,
    )
    assert ok
    egress = rules["cart-netwatch egress"]
    assert egress[-2:] == [
        Rule(
            peers=(Peer(ip_block=IPBlock(net("172.20.0.0/16"))),),
            ports=(PortSpec(Protocol.TCP, 5432),),
        ),
        Rule(
            peers=(Peer(ip_block=IPBlock(net("0.0.0.0/0"), POD_RANGES)),),
            ports=(PortSpec(Protocol.UDP, 53),),
        ),
    ]
    assert rules["prometheus-netwatch ingress"] == [
        Rule(
            peers=(Peer(ip_block=IPBlock(net("10.244.0.0/16"), POD_RANGES)),),
            ports=(PortSpec(Protocol.TCP, "web"),),
        )
    ]
    assert any("this admits any address in corp (172.20.0.0/16)" in w for w in warnings)
    assert len(reviews) == 3


def test_world_adds_the_ipv6_range_only_in_a_cluster_with_ipv6() -> None:
    base = load_cluster([CLUSTER]).cluster
    nodes = [replace(n, pod_cidrs=(*n.pod_cidrs, f"fd00:10:244:{i}::/64")) for i, n in
             enumerate(base.nodes, start=1)]  # fmt: skip
    cluster = Cluster.build(
        namespaces=base.namespaces.values(),
        pods=base.pods,
        policies=base.policies,
        services=base.services,
        endpoint_slices=base.endpoint_slices,
        nodes=nodes,
        workload_objects=base.workload_objects,
    )
    rules, _, _, ok = suggested_from(
        cluster, [(series(("shop", "cart"), ("", "world"), "443"), 2.0)], {}
    )
    assert ok
    assert rules["cart-netwatch egress"][-1].peers == (
        Peer(ip_block=IPBlock(net("0.0.0.0/0"), POD_RANGES)),
        Peer(ip_block=IPBlock(net("::/0"), (net("fd00:10:244:1::/64"), net("fd00:10:244:2::/64")))),
    )
