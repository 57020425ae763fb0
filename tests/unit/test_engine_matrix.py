"""`PolicyEngine.matrix` (set-based) agrees with `PolicyEngine.evaluate` (per pair).

The matrix is computed with bitset operations per policy; `evaluate` walks the policies for
one pair. They are two implementations of DESIGN §3, so each hand-written cluster below is
checked pair by pair, for every policy protocol and a spread of ports.
"""

from __future__ import annotations

import pytest

from netwatch.core.engine import IPBlockPodIPs, Matrix, PolicyEngine
from netwatch.core.model import POLICY_PROTOCOLS, Namespace, Node, Pod, PodPhase, Protocol
from netwatch.core.policy import NetworkPolicy
from tests.builders import (
    cport,
    deny_all,
    engine,
    expr,
    ip_peer,
    node,
    ns,
    peer,
    pod,
    policy,
    port,
    rule,
    sel,
)

PORTS = (53, 80, 443, 5432, 8000, 8080, 8081, 9090)

NODES = (node("n1", "192.168.0.1"), node("n2", "192.168.0.2"))


def assert_matrix_matches_evaluate(
    eng: PolicyEngine, port_number: int, protocol: Protocol
) -> Matrix:
    m = eng.matrix(port_number, protocol)
    for i, a in enumerate(m.pods):
        for j, b in enumerate(m.pods):
            v = eng.evaluate(eng.target_for_pod(a), eng.target_for_pod(b), port_number, protocol)
            assert m.allowed(i, j) is v.allowed, (a.key, b.key, port_number, protocol, v)
    return m


# ----------------------------------------------------------------- clusters


def shop() -> tuple[list[Namespace], list[Pod], list[NetworkPolicy]]:
    """Three tiers, named ports, default-deny, DNS egress, an external ipBlock."""
    namespaces = [ns("shop", team="shop"), ns("kube-system"), ns("monitoring", team="obs")]
    pods = [
        pod("shop/web-1", {"app": "web"}, ip="10.0.1.1", node="n1", ports=[cport("http", 8080)]),
        pod("shop/web-2", {"app": "web"}, ip="10.0.1.2", node="n2", ports=[cport("http", 80)]),
        pod("shop/api", {"app": "api"}, ip="10.0.1.3", node="n1", ports=[cport("http", 8000)]),
        pod("shop/db", {"app": "db"}, ip="10.0.1.4", node="n2", ports=[cport("pg", 5432)]),
        pod(
            "kube-system/dns",
            {"k8s-app": "kube-dns"},
            ip="10.0.0.10",
            ports=[cport("dns", 53, "UDP"), cport("dns-tcp", 53)],
        ),
        pod("monitoring/prom", {"app": "prom"}, ip="10.0.2.1", node="n2"),
    ]
    dns = peer(pods=sel(**{"k8s-app": "kube-dns"}), namespaces=sel())
    policies = [
        deny_all("shop/default-deny"),
        policy(
            "shop/dns",
            sel(),
            types=["Egress"],
            egress=[rule([dns], [port("dns", "UDP"), port("dns-tcp")])],
        ),
        policy(
            "shop/web",
            sel(app="web"),
            ingress=[rule(None, [port("http")])],
            egress=[rule([peer(pods=sel(app="api"))], [port(8000, end=8080)])],
        ),
        policy(
            "shop/api",
            sel(app="api"),
            types=["Ingress", "Egress"],
            ingress=[
                rule([peer(pods=sel(app="web"))], [port("http")]),
                rule([peer(namespaces=sel(team="obs"))], [port(9090)]),
            ],
            egress=[rule([peer(pods=sel(app="db"))], [port(5432)]), rule([ip_peer("0.0.0.0/0")])],
        ),
        policy(
            "shop/db",
            sel(app="db"),
            ingress=[rule([peer(pods=sel(expr("app", "In", "api", "web")))], [port("pg")])],
        ),
    ]
    return namespaces, pods, policies


def tricky() -> tuple[list[Namespace], list[Pod], list[NetworkPolicy]]:
    """Expressions, ipBlocks with excepts over pod IPs, [{}] rules, excluded pods."""
    namespaces = [ns("a", env="prod"), ns("b", env="dev"), ns("c")]
    pods = [
        pod("a/p1", {"role": "fe", "tier": "1"}, ip="10.0.0.5", ports=[cport("http", 80)]),
        pod("a/p2", {"role": "be"}, ip="10.0.0.130", node="n2", ports=[cport("http", 8080)]),
        pod("b/p3", {"role": "fe"}, ip="10.0.1.5", ports=[cport("http", 80, "UDP")]),
        pod("b/p4", {}, ip="10.0.1.200", node="n2"),
        pod("c/p5", {"tier": "2"}, ip="10.0.2.5"),
        pod(
            "c/hostnet", {"role": "fe"}, ip="192.168.0.1", host_ip="192.168.0.1", host_network=True
        ),
        pod("c/pending", {"role": "fe"}, ip=None),
        pod("a/done", {"role": "be"}, ip="10.0.0.77", phase=PodPhase.SUCCEEDED),
    ]
    policies = [
        policy(
            "a/fe",
            sel(expr("role", "In", "fe")),
            ingress=[
                rule([ip_peer("10.0.0.0/16", "10.0.0.128/25", "10.0.1.128/25")], [port(80)]),
                rule([peer(namespaces=sel(expr("env", "NotIn", "prod")))], [port("http", "UDP")]),
            ],
        ),
        policy(
            "a/be",
            sel(expr("role", "Exists")),
            types=["Egress", "Ingress"],
            ingress=[rule()],
            egress=[
                rule([peer(pods=sel(expr("tier", "DoesNotExist")), namespaces=sel())], [port()]),
                rule([ip_peer("10.0.2.0/24")], [port(53, "UDP"), port(8000, end=8080)]),
            ],
        ),
        policy("b/deny", sel(), ingress=[], egress=[]),
        policy(
            "b/allow",
            sel(),
            ingress=[
                rule([peer(pods=sel(role="fe"), namespaces=sel(env="prod")), peer(pods=sel())])
            ],
        ),
        policy("c/sctp", sel(tier="2"), ingress=[rule(None, [port(None, "SCTP")])]),
    ]
    return namespaces, pods, policies


def open_cluster() -> tuple[list[Namespace], list[Pod], list[NetworkPolicy]]:
    """No policies at all: everything is allowed."""
    pods = [pod(f"x/p{i}", {"i": str(i)}, ip=f"10.0.0.{i + 1}") for i in range(4)]
    return [], pods, []


CLUSTERS = {"shop": shop, "tricky": tricky, "open": open_cluster}


@pytest.mark.parametrize("mode", list(IPBlockPodIPs), ids=lambda m: m.value)
@pytest.mark.parametrize("protocol", POLICY_PROTOCOLS, ids=lambda p: p.value)
@pytest.mark.parametrize("name", sorted(CLUSTERS))
def test_matrix_agrees_with_evaluate_for_every_pair(
    name: str, protocol: Protocol, mode: IPBlockPodIPs
) -> None:
    namespaces, pods, policies = CLUSTERS[name]()
    eng = engine(
        pods=pods, policies=policies, namespaces=namespaces, nodes=NODES, ipblock_pod_ips=mode
    )
    for port_number in PORTS:
        assert_matrix_matches_evaluate(eng, port_number, protocol)


def matrix_pairs(m: Matrix) -> set[tuple[str, str]]:
    return {
        (a.key, b.key)
        for i, a in enumerate(m.pods)
        for j, b in enumerate(m.pods)
        if m.allowed(i, j) and i != j
    }


def test_shop_matrix_allows_exactly_the_intended_pairs() -> None:
    namespaces, pods, policies = shop()
    eng = engine(pods=pods, policies=policies, namespaces=namespaces, nodes=NODES)
    # web → api on 8000 (egress range 8000-8080, api's named http=8000).
    assert matrix_pairs(eng.matrix(8000, Protocol.TCP)) == {
        ("shop/web-1", "shop/api"),
        ("shop/web-2", "shop/api"),
        # monitoring/prom reaches api only on 9090; unisolated pods reach each other.
        ("monitoring/prom", "kube-system/dns"),
        ("kube-system/dns", "monitoring/prom"),
        ("shop/api", "monitoring/prom"),  # api egress 0.0.0.0/0 covers pod IPs (match)
        ("shop/api", "kube-system/dns"),
    }
    # UDP 53 to DNS from everyone (shop's DNS egress policy, dns not isolated).
    dns_pairs = {
        (a, b) for a, b in matrix_pairs(eng.matrix(53, Protocol.UDP)) if b == "kube-system/dns"
    }
    assert {a for a, _ in dns_pairs} == {
        "shop/web-1",
        "shop/web-2",
        "shop/api",
        "shop/db",
        "monitoring/prom",
    }


def test_matrix_excludes_hostnetwork_terminal_and_ip_less_pods() -> None:
    namespaces, pods, policies = tricky()
    eng = engine(pods=pods, policies=policies, namespaces=namespaces, nodes=NODES)
    m = eng.matrix(80, Protocol.TCP)
    keys = [p.key for p in m.pods]
    assert "c/hostnet" not in keys
    assert "c/pending" not in keys
    assert "a/done" not in keys
    assert keys == ["a/p1", "a/p2", "b/p3", "b/p4", "c/p5"]
    assert len(m.rows) == len(keys)
    assert all(len(r) == len(keys) for r in m.rows)


def test_matrix_pods_are_sorted_by_namespace_then_name() -> None:
    pods = [
        pod("zeta/a", ip="10.0.0.1"),
        pod("alpha/b", ip="10.0.0.2"),
        pod("alpha/a", ip="10.0.0.3"),
        pod("mid/z", ip="10.0.0.4"),
        pod("alpha/aa", ip="10.0.0.5"),
    ]
    m = engine(pods=pods).matrix(80, Protocol.TCP)
    assert [p.key for p in m.pods] == ["alpha/a", "alpha/aa", "alpha/b", "mid/z", "zeta/a"]


def test_matrix_diagonal_is_always_allowed() -> None:
    pods = [pod(f"x/p{i}", ip=f"10.0.0.{i + 1}") for i in range(3)]
    m = engine(pods=pods, policies=[deny_all("x/deny")]).matrix(80, Protocol.TCP)
    assert m.rows == ("100", "010", "001")


def test_matrix_of_cluster_without_policies_is_all_ones() -> None:
    _, pods, _ = open_cluster()
    m = engine(pods=pods).matrix(443, Protocol.SCTP)
    assert m.rows == ("1111",) * 4
    assert m.port == 443
    assert m.protocol is Protocol.SCTP


def test_matrix_named_port_is_resolved_per_destination() -> None:
    pods = [
        pod("x/client", {"role": "c"}, ip="10.0.0.1"),
        pod("x/s80", {"role": "s"}, ip="10.0.0.2", ports=[cport("http", 80)]),
        pod("x/s81", {"role": "s"}, ip="10.0.0.3", ports=[cport("http", 81)]),
        pod("x/udp80", {"role": "s"}, ip="10.0.0.4", ports=[cport("http", 80, "UDP")]),
    ]
    pol = policy("x/in", sel(role="s"), ingress=[rule(None, [port("http")])])
    eng = engine(pods=pods, policies=[pol])
    m = assert_matrix_matches_evaluate(eng, 80, Protocol.TCP)
    assert ("x/client", "x/s80") in matrix_pairs(m)
    assert ("x/client", "x/s81") not in matrix_pairs(m)
    assert ("x/client", "x/udp80") not in matrix_pairs(m)
    m81 = assert_matrix_matches_evaluate(eng, 81, Protocol.TCP)
    assert ("x/client", "x/s81") in matrix_pairs(m81)
    mudp = assert_matrix_matches_evaluate(eng, 80, Protocol.UDP)
    assert ("x/client", "x/udp80") not in matrix_pairs(mudp)  # rule's http is TCP


def test_matrix_egress_named_port_is_resolved_on_destination() -> None:
    pods = [
        pod("x/client", {"role": "c"}, ip="10.0.0.1", ports=[cport("pg", 80)]),
        pod("x/db", {"role": "db"}, ip="10.0.0.2", ports=[cport("pg", 5432)]),
    ]
    pol = policy("x/out", sel(role="c"), types=["Egress"], egress=[rule(None, [port("pg")])])
    eng = engine(pods=pods, policies=[pol])
    assert ("x/client", "x/db") in matrix_pairs(
        assert_matrix_matches_evaluate(eng, 5432, Protocol.TCP)
    )
    assert ("x/client", "x/db") not in matrix_pairs(
        assert_matrix_matches_evaluate(eng, 80, Protocol.TCP)
    )


def test_matrix_respects_ipblock_pod_ips_switch() -> None:
    pods = [pod("x/a", {"r": "a"}, ip="10.0.0.1"), pod("x/b", {"r": "b"}, ip="10.0.0.2")]
    pol = policy("x/in", sel(r="b"), ingress=[rule([ip_peer("10.0.0.0/24")])])
    match = engine(pods=pods, policies=[pol]).matrix(80, Protocol.TCP)
    ignore = engine(pods=pods, policies=[pol], ipblock_pod_ips=IPBlockPodIPs.IGNORE).matrix(
        80, Protocol.TCP
    )
    assert match.rows == ("11", "11")
    assert ignore.rows == ("10", "11")  # rows are sources: x/a → x/b is denied


def test_matrix_for_pod_with_several_ips_uses_the_primary() -> None:
    pods = [
        pod("x/a", {"r": "a"}, ips=["10.0.0.1", "fd00::1"]),
        pod("x/b", {"r": "b"}, ips=["fd00::2", "10.0.0.2"]),
    ]
    pol = policy("x/in", sel(), ingress=[rule([ip_peer("10.0.0.0/24")])])
    eng = engine(pods=pods, policies=[pol])
    m = assert_matrix_matches_evaluate(eng, 80, Protocol.TCP)
    # x/a's primary 10.0.0.1 is in the block; x/b's primary fd00::2 is not.
    assert m.rows == ("11", "01")


def test_matrix_with_nodes_is_unaffected_by_node_local_exemption() -> None:
    # The node-local exemption applies to node/hostNetwork clients, never to pod → pod.
    pods = [pod("x/a", ip="10.0.0.1", node="n1"), pod("x/b", ip="10.0.0.2", node="n1")]
    eng = engine(pods=pods, policies=[deny_all("x/deny")], nodes=[Node(name=NODES[0].name)])
    assert assert_matrix_matches_evaluate(eng, 80, Protocol.TCP).rows == ("10", "01")


def test_matrix_refuses_icmp_like_evaluate() -> None:
    _, pods, _ = open_cluster()
    eng = engine(pods=pods)
    with pytest.raises(ValueError, match="ICMP"):
        eng.matrix(0, Protocol.ICMP)
