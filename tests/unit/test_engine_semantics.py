# Truth-table rows are kept one per line (`# fmt: skip`) so a table reads as a table.
# ruff: noqa: E501
"""Truth tables for DESIGN §3 rules 1-8, one parametrized table per rule.

Every row is a connection in a fixed small cluster (`WORLD_PODS`) under a handful of
policies, with the verdict networking.k8s.io/v1 gives. Rows are chosen so that the classic
mis-implementations (order-sensitive policyTypes, `[{}]` not admitting IPs, podSelector
peers leaking across namespaces, NotIn not matching missing keys, named ports resolved on
the wrong pod, exclusive endPort, ...) each flip at least one row.
"""

from __future__ import annotations

import ipaddress

import pytest

from netwatch.core.cluster import NAMESPACE_NAME_LABEL, Cluster
from netwatch.core.engine import (
    Exemption,
    IPBlockPodIPs,
    PolicyEngine,
    RuleRef,
    Target,
)
from netwatch.core.model import Direction, NamespaceName, PodPhase, Protocol
from netwatch.core.policy import (
    NetworkPolicy,
    Peer,
    PolicyKey,
    PortSpec,
    Rule,
    effective_policy_types,
)
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
    sel_labels,
    target,
    verdict,
)

MATCH = IPBlockPodIPs.MATCH
IGNORE = IPBlockPodIPs.IGNORE

EXT = "203.0.113.5"
"""An address outside the cluster."""
N1_IP = "192.168.0.1"
N2_IP = "192.168.0.2"

NAMESPACES = (ns("prod", team="a", env="prod"), ns("dev", team="b", env="dev"), ns("other"))
NODES = (node("n1", N1_IP), node("n2", N2_IP))
WORLD_PODS = (
    pod(
        "prod/web",
        {"app": "web", "tier": "front"},
        ip="10.0.1.10",
        node="n1",
        ports=[cport("http", 80), cport("dns", 53, "UDP"), cport("metrics", 9090)],
    ),
    pod(
        "prod/db",
        {"app": "db"},
        ip="10.0.1.20",
        node="n2",
        ports=[cport("pg", 5432), cport("http", 8080)],
    ),
    pod("prod/bare", {}, ip="10.0.1.30", node="n1"),
    # hostNetwork: same labels as prod/web, but its traffic is node n1's traffic (§3.7).
    pod(
        "prod/agent",
        {"app": "web"},
        ip=N1_IP,
        host_ip=N1_IP,
        node="n1",
        host_network=True,
        ports=[cport("http", 80)],
    ),
    pod("dev/web", {"app": "web"}, ip="10.0.2.10", node="n2", ports=[cport("http", 8080)]),
    pod("dev/tool", {"app": "tool", "tier": "back"}, ip="10.0.2.20", node="n1"),
    pod("other/x", {"app": "x"}, ip="10.0.3.10", node="n2"),
)


def world(*policies: NetworkPolicy, mode: IPBlockPodIPs = MATCH) -> PolicyEngine:
    return engine(
        pods=WORLD_PODS,
        policies=policies,
        namespaces=NAMESPACES,
        nodes=NODES,
        ipblock_pod_ips=mode,
    )


def row(
    case_id: str,
    policies: list[NetworkPolicy],
    src: str,
    dst: str,
    port_number: int,
    allowed: bool,
    protocol: str = "TCP",
) -> object:
    return pytest.param(policies, src, dst, port_number, protocol, allowed, id=case_id)


ROW_ARGS = "policies,src,dst,port_number,protocol,allowed"


def assert_row(
    policies: list[NetworkPolicy],
    src: str,
    dst: str,
    port_number: int,
    protocol: str,
    allowed: bool,
    mode: IPBlockPodIPs = MATCH,
) -> None:
    v = verdict(world(*policies, mode=mode), src, dst, port_number, protocol)
    assert v.allowed is allowed, v


# ======================================================================== §3.1


@pytest.mark.parametrize(
    "declared,has_egress_rules,expected",
    [
        pytest.param(None, False, {"ingress"}, id="omitted-without-egress-is-ingress-only"),
        pytest.param(None, True, {"ingress", "egress"}, id="omitted-with-egress-rules-adds-egress"),
        pytest.param([], False, {"ingress"}, id="empty-list-is-defaulted-like-omitted"),
        pytest.param(["Egress"], False, {"egress"}, id="explicit-egress-only"),
        pytest.param(["Egress"], True, {"egress"}, id="explicit-egress-never-adds-ingress"),
        pytest.param(["Ingress"], True, {"ingress"}, id="explicit-ingress-ignores-egress-rules"),
        pytest.param(["Ingress", "Egress"], False, {"ingress", "egress"}, id="ingress-egress"),
        pytest.param(["Egress", "Ingress"], False, {"ingress", "egress"}, id="egress-ingress"),
    ],
)
def test_effective_policy_types_default_like_the_api_server(
    declared: list[str] | None, has_egress_rules: bool, expected: set[str]
) -> None:
    types = effective_policy_types(declared, has_egress_rules=has_egress_rules)
    assert types == {Direction(d) for d in expected}


WEB = sel(app="web")


@pytest.mark.parametrize(
    "policies,pod_ref,ingress_isolated,egress_isolated",
    [
        pytest.param([policy("prod/p", WEB)], "prod/web", True, False, id="omitted-types-no-rules"),
        pytest.param(
            [policy("prod/p", WEB, egress=[rule()])],
            "prod/web",
            True,
            True,
            id="omitted-types-with-egress-rule-isolates-both",
        ),
        pytest.param(
            [policy("prod/p", WEB, egress=[])],
            "prod/web",
            True,
            False,
            id="omitted-types-with-empty-egress-list-does-not-isolate-egress",
        ),
        pytest.param(
            [policy("prod/p", WEB, ingress=[rule()])],
            "prod/web",
            True,
            False,
            id="omitted-types-with-ingress-rule-only",
        ),
        pytest.param(
            [policy("prod/p", WEB, types=["Egress"], ingress=[rule()])],
            "prod/web",
            False,
            True,
            id="egress-type-only-ignores-ingress-rules",
        ),
        pytest.param(
            [policy("prod/p", WEB, types=["Ingress"], egress=[rule()])],
            "prod/web",
            True,
            False,
            id="ingress-type-only-ignores-egress-rules",
        ),
        pytest.param(
            [policy("prod/p", WEB, types=["Egress", "Ingress"])],
            "prod/web",
            True,
            True,
            id="types-egress-ingress",
        ),
        pytest.param(
            [policy("prod/p", WEB, types=["Ingress", "Egress"])],
            "prod/web",
            True,
            True,
            id="types-ingress-egress",
        ),
        pytest.param(
            [deny_all("dev/p", WEB)],
            "prod/web",
            False,
            False,
            id="policy-in-another-namespace-does-not-isolate",
        ),
        pytest.param(
            [deny_all("prod/p", sel(app="db"))],
            "prod/web",
            False,
            False,
            id="policy-not-selecting-the-pod-does-not-isolate",
        ),
        pytest.param(
            [deny_all("prod/p", sel())],
            "prod/bare",
            True,
            True,
            id="empty-pod-selector-selects-unlabelled-pod",
        ),
        pytest.param(
            [deny_all("prod/p", sel())],
            "dev/tool",
            False,
            False,
            id="empty-pod-selector-stays-in-its-namespace",
        ),
        pytest.param(
            [deny_all("prod/p", WEB)],
            "prod/agent",
            False,
            False,
            id="hostnetwork-pod-is-never-isolated",
        ),
        pytest.param(
            [policy("prod/i", WEB), policy("prod/e", sel(app="db"), types=["Egress"])],
            "prod/web",
            True,
            False,
            id="isolation-is-per-pod-and-direction",
        ),
    ],
)
def test_pod_isolation_follows_effective_policy_types(
    policies: list[NetworkPolicy], pod_ref: str, ingress_isolated: bool, egress_isolated: bool
) -> None:
    eng = world(*policies)
    into = verdict(eng, EXT, pod_ref, 80)
    out = verdict(eng, pod_ref, EXT, 80)
    assert into.ingress.isolated is ingress_isolated
    assert out.egress.isolated is egress_isolated
    # A non-isolated side allows everything and names no rule.
    if not ingress_isolated:
        assert into.ingress.allowed
        assert into.ingress.allowed_by == ()
    if not egress_isolated:
        assert out.egress.allowed
        assert out.egress.allowed_by == ()


FROM_DB = rule([peer(pods=sel(app="db"))])


@pytest.mark.parametrize(
    ROW_ARGS,
    [
        row(
            "egress-only-policy-leaves-ingress-open",
            [policy("prod/p", WEB, types=["Egress"], ingress=[FROM_DB])],
            EXT,
            "prod/web",
            80,
            True,
        ),
        row(
            "ingress-only-policy-leaves-egress-open",
            [policy("prod/p", WEB, types=["Ingress"], egress=[FROM_DB])],
            "prod/web",
            EXT,
            80,
            True,
        ),
        row(
            "omitted-types-with-only-egress-rules-still-denies-ingress",
            [policy("prod/p", WEB, egress=[rule()])],
            "prod/db",
            "prod/web",
            80,
            False,
        ),
        row(
            "omitted-types-with-egress-rule-restricts-egress",
            [policy("prod/p", WEB, egress=[rule([peer(pods=sel(app="db"))])])],
            "prod/web",
            "prod/bare",
            80,
            False,
        ),
        row(
            "omitted-types-with-empty-egress-list-leaves-egress-open",
            [policy("prod/p", WEB, ingress=[rule()], egress=[])],
            "prod/web",
            EXT,
            80,
            True,
        ),
    ],
)
def test_policy_types_decide_which_rule_lists_apply(
    policies: list[NetworkPolicy],
    src: str,
    dst: str,
    port_number: int,
    protocol: str,
    allowed: bool,
) -> None:
    assert_row(policies, src, dst, port_number, protocol, allowed)


# ======================================================================== §3.2

DB = sel(app="db")


@pytest.mark.parametrize(
    ROW_ARGS,
    [
        row("no-policies-allow-everything", [], "prod/web", "prod/db", 5432, True),
        row(
            "egress-isolated-client-denies-despite-server-allowing",
            [
                policy("prod/web-out", WEB, types=["Egress"]),
                policy("prod/db-in", DB, ingress=[rule()]),
            ],
            "prod/web",
            "prod/db",
            5432,
            False,
        ),
        row(
            "ingress-isolated-server-denies-despite-client-allowing",
            [
                policy("prod/web-out", WEB, types=["Egress"], egress=[rule()]),
                policy("prod/db-in", DB),
            ],
            "prod/web",
            "prod/db",
            5432,
            False,
        ),
        row(
            "both-sides-allowing-allows",
            [
                policy("prod/web-out", WEB, types=["Egress"], egress=[rule([peer(pods=DB)])]),
                policy("prod/db-in", DB, ingress=[rule([peer(pods=WEB)])]),
            ],
            "prod/web",
            "prod/db",
            5432,
            True,
        ),
        row(
            "egress-rule-to-db-denies-other-destinations",
            [policy("prod/web-out", WEB, types=["Egress"], egress=[rule([peer(pods=DB)])])],
            "prod/web",
            "prod/bare",
            80,
            False,
        ),
        row(
            "deny-all-policy-plus-allow-policy-allows",
            [
                policy("prod/deny", DB),
                policy("prod/allow", DB, ingress=[rule([peer(pods=WEB)])]),
            ],
            "prod/web",
            "prod/db",
            5432,
            True,
        ),
        row(
            "namespace-wide-deny-all-also-isolates-the-client",
            [
                policy("prod/a-allow", DB, ingress=[rule([peer(pods=WEB)])]),
                policy("prod/z-deny", sel(), types=["Ingress", "Egress"]),
            ],
            "prod/web",
            "prod/db",
            5432,
            False,  # z-deny isolates prod/web for egress: the client side denies.
        ),
        row(
            "second-policy-adds-a-port",
            [
                policy("prod/a", DB, ingress=[rule([peer(pods=WEB)], [port(5432)])]),
                policy("prod/b", DB, ingress=[rule([peer(pods=WEB)], [port(8080)])]),
            ],
            "prod/web",
            "prod/db",
            8080,
            True,
        ),
        row(
            "first-policy-port-still-allowed",
            [
                policy("prod/a", DB, ingress=[rule([peer(pods=WEB)], [port(5432)])]),
                policy("prod/b", DB, ingress=[rule([peer(pods=WEB)], [port(8080)])]),
            ],
            "prod/web",
            "prod/db",
            5432,
            True,
        ),
        row(
            "port-in-neither-policy-denied",
            [
                policy("prod/a", DB, ingress=[rule([peer(pods=WEB)], [port(5432)])]),
                policy("prod/b", DB, ingress=[rule([peer(pods=WEB)], [port(8080)])]),
            ],
            "prod/web",
            "prod/db",
            9999,
            False,
        ),
        row(
            "cross-namespace-needs-client-egress-and-server-ingress",
            [
                policy("dev/out", sel(), types=["Egress"], egress=[rule([peer(namespaces=sel())])]),
                policy("prod/in", DB, ingress=[rule([peer(namespaces=sel(team="b"))])]),
            ],
            "dev/tool",
            "prod/db",
            5432,
            True,
        ),
        row(
            "cross-namespace-denied-when-server-admits-other-namespace",
            [
                policy("dev/out", sel(), types=["Egress"], egress=[rule([peer(namespaces=sel())])]),
                policy("prod/in", DB, ingress=[rule([peer(namespaces=sel(team="a"))])]),
            ],
            "dev/tool",
            "prod/db",
            5432,
            False,
        ),
    ],
)
def test_connection_needs_client_egress_and_server_ingress(
    policies: list[NetworkPolicy],
    src: str,
    dst: str,
    port_number: int,
    protocol: str,
    allowed: bool,
) -> None:
    assert_row(policies, src, dst, port_number, protocol, allowed)


def test_egress_isolation_of_client_does_not_depend_on_server_policies() -> None:
    eng = world(
        policy("prod/web-out", WEB, types=["Egress"]),
        policy("prod/db-in", DB, ingress=[rule()]),
    )
    v = verdict(eng, "prod/web", "prod/db", 5432)
    assert v.egress.isolated
    assert not v.egress.allowed
    assert v.ingress.allowed
    assert v.ingress.allowed_by == (RuleRef(PolicyKey("prod/db-in"), Direction.INGRESS, 0),)
    assert not v.allowed


# ======================================================================== §3.3

ONLY_INGRESS = ["Ingress"]


def web_ingress(*rules: Rule) -> list[NetworkPolicy]:
    return [policy("prod/p", WEB, types=ONLY_INGRESS, ingress=rules)]


def web_egress(*rules: Rule) -> list[NetworkPolicy]:
    return [policy("prod/p", WEB, types=["Egress"], egress=rules)]


@pytest.mark.parametrize(
    ROW_ARGS,
    [
        row("ingress-absent-denies-pods", web_ingress(), "prod/db", "prod/web", 80, False),
        row("ingress-absent-denies-external-ips", web_ingress(), EXT, "prod/web", 80, False),
        row(
            "ingress-absent-denies-other-node-ip",
            web_ingress(),
            N2_IP,
            "prod/web",
            80,
            False,
        ),
        row(
            "ingress-empty-list-denies",
            [policy("prod/p", WEB, ingress=[])],
            "prod/db",
            "prod/web",
            80,
            False,
        ),
        row("empty-rule-admits-pods", web_ingress(rule()), "prod/db", "prod/web", 80, True),
        row(
            "empty-from-list-admits-external-ips",
            web_ingress(rule([], [port(80)])),
            EXT,
            "prod/web",
            80,
            True,
        ),
        row(
            "empty-from-list-admits-pods",
            web_ingress(rule([], [port(80)])),
            "other/x",
            "prod/web",
            80,
            True,
        ),
        row(
            "empty-rule-admits-other-namespaces",
            web_ingress(rule()),
            "dev/tool",
            "prod/web",
            80,
            True,
        ),
        row("empty-rule-admits-external-ips", web_ingress(rule()), EXT, "prod/web", 80, True),
        row("empty-rule-admits-other-node", web_ingress(rule()), N2_IP, "prod/web", 80, True),
        row(
            "empty-rule-admits-udp",
            web_ingress(rule()),
            "prod/db",
            "prod/web",
            9999,
            True,
            "UDP",
        ),
        row(
            "empty-rule-admits-sctp",
            web_ingress(rule()),
            "prod/db",
            "prod/web",
            1,
            True,
            "SCTP",
        ),
        row(
            "empty-from-with-ports-admits-external-on-that-port",
            web_ingress(rule(None, [port(80)])),
            EXT,
            "prod/web",
            80,
            True,
        ),
        row(
            "empty-from-with-ports-denies-other-ports",
            web_ingress(rule(None, [port(80)])),
            EXT,
            "prod/web",
            81,
            False,
        ),
        row(
            "empty-to-admits-external-ips",
            web_egress(rule(None, [port(443)])),
            "prod/web",
            EXT,
            443,
            True,
        ),
        row(
            "empty-to-admits-pods-in-any-namespace",
            web_egress(rule(None, [port(443)])),
            "prod/web",
            "other/x",
            443,
            True,
        ),
        row(
            "empty-to-with-ports-denies-other-ports",
            web_egress(rule(None, [port(443)])),
            "prod/web",
            EXT,
            80,
            False,
        ),
        row(
            "egress-absent-with-egress-type-denies",
            web_egress(),
            "prod/web",
            EXT,
            443,
            False,
        ),
        row(
            "ports-absent-admits-udp",
            web_ingress(FROM_DB),
            "prod/db",
            "prod/web",
            53,
            True,
            "UDP",
        ),
        row(
            "ports-absent-admits-sctp",
            web_ingress(FROM_DB),
            "prod/db",
            "prod/web",
            7,
            True,
            "SCTP",
        ),
        row(
            "port-without-protocol-admits-tcp",
            web_ingress(rule(None, [port(80)])),
            "prod/db",
            "prod/web",
            80,
            True,
        ),
        row(
            "port-without-protocol-denies-udp",
            web_ingress(rule(None, [port(80)])),
            "prod/db",
            "prod/web",
            80,
            False,
            "UDP",
        ),
        row(
            "port-without-protocol-denies-sctp",
            web_ingress(rule(None, [port(80)])),
            "prod/db",
            "prod/web",
            80,
            False,
            "SCTP",
        ),
        row(
            "empty-port-entry-admits-any-tcp-port",
            web_ingress(rule(None, [port()])),
            "prod/db",
            "prod/web",
            65535,
            True,
        ),
        row(
            "empty-port-entry-denies-udp",
            web_ingress(rule(None, [port()])),
            "prod/db",
            "prod/web",
            53,
            False,
            "UDP",
        ),
        row(
            "empty-port-entry-denies-sctp",
            web_ingress(rule(None, [port()])),
            "prod/db",
            "prod/web",
            80,
            False,
            "SCTP",
        ),
        row(
            "udp-protocol-only-entry-admits-any-udp-port",
            web_ingress(rule(None, [port(None, "UDP")])),
            "prod/db",
            "prod/web",
            5353,
            True,
            "UDP",
        ),
        row(
            "udp-port-entry-denies-tcp-same-number",
            web_ingress(rule(None, [port(53, "UDP")])),
            "prod/db",
            "prod/web",
            53,
            False,
        ),
        row(
            "udp-port-entry-admits-udp",
            web_ingress(rule(None, [port(53, "UDP")])),
            "prod/db",
            "prod/web",
            53,
            True,
            "UDP",
        ),
        # Peers and ports of different rules are never cross-combined.
        row(
            "rule0-peer-with-rule1-port-denied",
            web_ingress(
                rule([peer(pods=DB)], [port(80)]),
                rule([peer(pods=sel(expr("app", "DoesNotExist")))], [port(9090)]),
            ),
            "prod/db",
            "prod/web",
            9090,
            False,
        ),
        row(
            "rule0-peer-with-rule0-port-allowed",
            web_ingress(
                rule([peer(pods=DB)], [port(80)]),
                rule([peer(pods=sel(expr("app", "DoesNotExist")))], [port(9090)]),
            ),
            "prod/db",
            "prod/web",
            80,
            True,
        ),
        row(
            "rule1-peer-with-rule0-port-denied",
            web_ingress(
                rule([peer(pods=DB)], [port(80)]),
                rule([peer(pods=sel(expr("app", "DoesNotExist")))], [port(9090)]),
            ),
            "prod/bare",
            "prod/web",
            80,
            False,
        ),
        row(
            "rule1-peer-with-rule1-port-allowed",
            web_ingress(
                rule([peer(pods=DB)], [port(80)]),
                rule([peer(pods=sel(expr("app", "DoesNotExist")))], [port(9090)]),
            ),
            "prod/bare",
            "prod/web",
            9090,
            True,
        ),
    ],
)
def test_empty_and_absent_lists_follow_upstream_meaning(
    policies: list[NetworkPolicy],
    src: str,
    dst: str,
    port_number: int,
    protocol: str,
    allowed: bool,
) -> None:
    assert_row(policies, src, dst, port_number, protocol, allowed)


# ======================================================================== §3.4


def db_from(*peers: Peer) -> list[NetworkPolicy]:
    """prod/db (node n2) admits ingress from `peers` on every port."""
    return [policy("prod/db-in", DB, ingress=[rule(peers)])]


TIER_FRONT = sel(expr("tier", "In", "front"), app="web")


@pytest.mark.parametrize(
    ROW_ARGS,
    [
        # podSelector only → pods of the policy's namespace.
        row("pod-selector-peer-admits-own-namespace", db_from(peer(pods=WEB)), "prod/web", "prod/db", 1, True),
        row("pod-selector-peer-denies-same-labels-elsewhere", db_from(peer(pods=WEB)), "dev/web", "prod/db", 1, False),
        row("pod-selector-peer-denies-external-ip", db_from(peer(pods=WEB)), EXT, "prod/db", 1, False),
        row("pod-selector-peer-denies-pod-ip-as-plain-ip", db_from(peer(pods=WEB)), "10.0.9.9", "prod/db", 1, False),
        row("pod-selector-peer-denies-hostnetwork-with-labels", db_from(peer(pods=WEB)), "prod/agent", "prod/db", 1, False),
        row("empty-pod-selector-peer-admits-unlabelled-pod", db_from(peer(pods=sel())), "prod/bare", "prod/db", 1, True),
        row("empty-pod-selector-peer-denies-other-namespace", db_from(peer(pods=sel())), "dev/tool", "prod/db", 1, False),
        row("empty-pod-selector-peer-denies-external-ip", db_from(peer(pods=sel())), EXT, "prod/db", 1, False),
        # namespaceSelector only → all pods of matching namespaces, never IPs.
        row("namespace-selector-peer-admits-any-pod-there", db_from(peer(namespaces=sel(team="b"))), "dev/tool", "prod/db", 1, True),
        row("namespace-selector-peer-admits-other-pod-there", db_from(peer(namespaces=sel(team="b"))), "dev/web", "prod/db", 1, True),
        row("namespace-selector-peer-denies-other-namespace", db_from(peer(namespaces=sel(team="b"))), "prod/web", "prod/db", 1, False),
        row("namespace-selector-peer-denies-unowned-ip", db_from(peer(namespaces=sel(team="b"))), "10.0.2.99", "prod/db", 1, False),
        row("empty-namespace-selector-admits-every-namespace", db_from(peer(namespaces=sel())), "other/x", "prod/db", 1, True),
        row("empty-namespace-selector-admits-own-namespace", db_from(peer(namespaces=sel())), "prod/bare", "prod/db", 1, True),
        row("empty-namespace-selector-denies-external-ip", db_from(peer(namespaces=sel())), EXT, "prod/db", 1, False),
        row("empty-namespace-selector-denies-node-ip", db_from(peer(namespaces=sel())), N1_IP, "prod/db", 1, False),
        row("empty-namespace-selector-denies-hostnetwork-pod", db_from(peer(namespaces=sel())), "prod/agent", "prod/db", 1, False),
        # Both selectors in ONE peer → AND; in two peers → OR.
        row("both-selectors-one-peer-need-both", db_from(peer(pods=WEB, namespaces=sel(team="b"))), "dev/web", "prod/db", 1, True),
        row("both-selectors-one-peer-deny-wrong-pod", db_from(peer(pods=WEB, namespaces=sel(team="b"))), "dev/tool", "prod/db", 1, False),
        row("both-selectors-one-peer-deny-wrong-namespace", db_from(peer(pods=WEB, namespaces=sel(team="b"))), "prod/web", "prod/db", 1, False),
        row("two-peers-admit-namespace-match", db_from(peer(namespaces=sel(team="b")), peer(pods=WEB)), "dev/tool", "prod/db", 1, True),
        row("two-peers-admit-pod-match", db_from(peer(namespaces=sel(team="b")), peer(pods=WEB)), "prod/web", "prod/db", 1, True),
        row("two-peers-deny-neither", db_from(peer(namespaces=sel(team="b")), peer(pods=WEB)), "other/x", "prod/db", 1, False),
        row("two-peers-pod-peer-stays-in-policy-namespace", db_from(peer(namespaces=sel(team="a")), peer(pods=sel(app="x"))), "other/x", "prod/db", 1, False),
        row("all-namespaces-and-pod-selector-crosses-namespaces", db_from(peer(pods=WEB, namespaces=sel())), "dev/web", "prod/db", 1, True),
        row("all-namespaces-and-pod-selector-filters-pods", db_from(peer(pods=WEB, namespaces=sel())), "other/x", "prod/db", 1, False),
        # matchLabels AND matchExpressions, and operator semantics.
        row("match-labels-and-expressions-both-hold", db_from(peer(pods=TIER_FRONT, namespaces=sel())), "prod/web", "prod/db", 1, True),
        row("match-labels-hold-expression-key-missing", db_from(peer(pods=TIER_FRONT, namespaces=sel())), "dev/web", "prod/db", 1, False),
        row("two-match-labels-are-anded", db_from(peer(pods=sel(app="tool", tier="front"), namespaces=sel())), "dev/tool", "prod/db", 1, False),
        row("two-match-labels-both-hold", db_from(peer(pods=sel(app="tool", tier="back"), namespaces=sel())), "dev/tool", "prod/db", 1, True),
        row("in-matches-listed-value", db_from(peer(pods=sel(expr("tier", "In", "front", "back")), namespaces=sel())), "dev/tool", "prod/db", 1, True),
        row("in-does-not-match-missing-key", db_from(peer(pods=sel(expr("tier", "In", "front", "back")), namespaces=sel())), "other/x", "prod/db", 1, False),
        row("in-does-not-match-missing-key-unlabelled", db_from(peer(pods=sel(expr("tier", "In", "front")))), "prod/bare", "prod/db", 1, False),
        row("notin-matches-missing-key", db_from(peer(pods=sel(expr("tier", "NotIn", "front")))), "prod/bare", "prod/db", 1, True),
        row("notin-matches-other-value", db_from(peer(pods=sel(expr("tier", "NotIn", "front")), namespaces=sel())), "dev/tool", "prod/db", 1, True),
        row("notin-denies-listed-value", db_from(peer(pods=sel(expr("tier", "NotIn", "front")))), "prod/web", "prod/db", 1, False),
        row("exists-matches-any-value", db_from(peer(pods=sel(expr("tier", "Exists")), namespaces=sel())), "dev/tool", "prod/db", 1, True),
        row("exists-denies-missing-key", db_from(peer(pods=sel(expr("tier", "Exists")), namespaces=sel())), "other/x", "prod/db", 1, False),
        row("does-not-exist-matches-missing-key", db_from(peer(pods=sel(expr("tier", "DoesNotExist")), namespaces=sel())), "other/x", "prod/db", 1, True),
        row("does-not-exist-denies-present-key", db_from(peer(pods=sel(expr("tier", "DoesNotExist")), namespaces=sel())), "dev/tool", "prod/db", 1, False),
        row("namespace-notin-matches-namespace-without-key", db_from(peer(namespaces=sel(expr("env", "NotIn", "prod")))), "other/x", "prod/db", 1, True),
        row("namespace-notin-matches-other-value", db_from(peer(namespaces=sel(expr("env", "NotIn", "prod")))), "dev/web", "prod/db", 1, True),
        row("namespace-notin-denies-listed-value", db_from(peer(namespaces=sel(expr("env", "NotIn", "prod")))), "prod/web", "prod/db", 1, False),
        row("namespace-does-not-exist-matches-unlabelled", db_from(peer(namespaces=sel(expr("env", "DoesNotExist")))), "other/x", "prod/db", 1, True),
        row("namespace-does-not-exist-denies-labelled", db_from(peer(namespaces=sel(expr("env", "DoesNotExist")))), "dev/web", "prod/db", 1, False),
        row("namespace-in-does-not-match-unlabelled", db_from(peer(namespaces=sel(expr("env", "In", "dev", "prod")))), "other/x", "prod/db", 1, False),
        row("namespace-name-label-is-always-present", db_from(peer(namespaces=sel_labels({NAMESPACE_NAME_LABEL: "other"}))), "other/x", "prod/db", 1, True),
        row("namespace-name-label-matches-only-that-namespace", db_from(peer(namespaces=sel_labels({NAMESPACE_NAME_LABEL: "other"}))), "dev/web", "prod/db", 1, False),
        # Egress: a podSelector-only `to` peer is also limited to the policy's namespace.
        row("egress-pod-selector-peer-admits-own-namespace", [policy("dev/out", sel(app="tool"), types=["Egress"], egress=[rule([peer(pods=WEB)])])], "dev/tool", "dev/web", 1, True),
        row("egress-pod-selector-peer-denies-other-namespace", [policy("dev/out", sel(app="tool"), types=["Egress"], egress=[rule([peer(pods=WEB)])])], "dev/tool", "prod/web", 1, False),
        row("egress-namespace-selector-peer-admits-that-namespace", [policy("dev/out", sel(app="tool"), types=["Egress"], egress=[rule([peer(namespaces=sel(team="a"))])])], "dev/tool", "prod/bare", 1, True),
        row("egress-namespace-selector-peer-denies-external", [policy("dev/out", sel(app="tool"), types=["Egress"], egress=[rule([peer(namespaces=sel())])])], "dev/tool", EXT, 1, False),
    ],
)  # fmt: skip
def test_peers_select_pods_by_namespace_and_labels(
    policies: list[NetworkPolicy],
    src: str,
    dst: str,
    port_number: int,
    protocol: str,
    allowed: bool,
) -> None:
    assert_row(policies, src, dst, port_number, protocol, allowed)


def test_namespace_known_only_from_its_pods_still_has_its_name_label() -> None:
    # No Namespace object for "ghost": Cluster.build adds kubernetes.io/metadata.name.
    eng = engine(
        pods=[pod("ghost/g", ip="10.0.9.1"), *WORLD_PODS],
        policies=[
            policy(
                "prod/db-in",
                DB,
                ingress=[
                    rule([peer(namespaces=sel_labels({NAMESPACE_NAME_LABEL: "ghost"}))], [port(1)]),
                    rule([peer(namespaces=sel(expr("env", "NotIn", "prod")))], [port(2)]),
                    rule([peer(namespaces=sel(env="dev"))], [port(3)]),
                ],
            )
        ],
        namespaces=NAMESPACES,
        nodes=NODES,
    )
    assert verdict(eng, "ghost/g", "prod/db", 1).allowed
    assert verdict(eng, "ghost/g", "prod/db", 2).allowed
    assert not verdict(eng, "ghost/g", "prod/db", 3).allowed
    assert eng.cluster.namespace_labels(NamespaceName("ghost")) == {NAMESPACE_NAME_LABEL: "ghost"}


# ======================================================================== §3.5


def all_from(*ports: PortSpec) -> list[NetworkPolicy]:
    """Every pod of prod admits ingress from anywhere on `ports`."""
    return [policy("prod/in", sel(), ingress=[rule(None, ports)])]


def web_to(peers: list[Peer] | None, *ports: PortSpec) -> list[NetworkPolicy]:
    return [policy("prod/out", WEB, types=["Egress"], egress=[rule(peers, ports)])]


@pytest.mark.parametrize(
    ROW_ARGS,
    [
        # prod/web: http=80/TCP, dns=53/UDP, metrics=9090/TCP; prod/db: pg=5432, http=8080.
        row("named-port-admits-resolved-number", all_from(port("http")), "dev/tool", "prod/web", 80, True),
        row("named-port-denies-other-number", all_from(port("http")), "dev/tool", "prod/web", 8080, False),
        row("named-port-denies-resolved-number-over-udp", all_from(port("http")), "dev/tool", "prod/web", 80, False, "UDP"),
        row("named-port-resolves-per-destination-pod", all_from(port("http")), "dev/tool", "prod/db", 8080, True),
        row("named-port-uses-destination-not-other-pods-number", all_from(port("http")), "dev/tool", "prod/db", 80, False),
        row("named-port-denies-pod-without-that-name", all_from(port("http")), "dev/tool", "prod/bare", 80, False),
        row("named-port-denies-pod-without-that-name-any-port", all_from(port("http")), "dev/tool", "prod/bare", 8080, False),
        row("named-port-tcp-does-not-match-udp-container-port", all_from(port("dns")), "dev/tool", "prod/web", 53, False),
        row("named-port-tcp-does-not-match-udp-container-port-over-udp", all_from(port("dns")), "dev/tool", "prod/web", 53, False, "UDP"),
        row("named-port-udp-matches-udp-container-port", all_from(port("dns", "UDP")), "dev/tool", "prod/web", 53, True, "UDP"),
        row("named-port-from-external-ip-resolves-on-destination", all_from(port("http")), EXT, "prod/web", 80, True),
        row("named-egress-port-resolves-on-destination", web_to(None, port("pg")), "prod/web", "prod/db", 5432, True),
        row("named-egress-port-denies-other-number", web_to(None, port("pg")), "prod/web", "prod/db", 5433, False),
        row("named-egress-port-ignores-client-ports", web_to(None, port("metrics")), "prod/web", "prod/db", 9090, False),
        row("named-egress-port-denies-destination-without-name", web_to(None, port("pg")), "prod/web", "dev/web", 5432, False),
        row("named-egress-port-never-matches-external-ip", web_to(None, port("http")), "prod/web", EXT, 80, False),
        row("named-egress-port-never-matches-ipblock-external", web_to([ip_peer("0.0.0.0/0")], port("http")), "prod/web", EXT, 80, False),
        row("named-egress-port-never-matches-hostnetwork-destination", web_to(None, port("http")), "prod/web", "prod/agent", 80, False),
        row("named-egress-port-never-matches-node-ip", web_to(None, port("http")), "prod/web", N2_IP, 80, False),
        row("numeric-egress-port-matches-external-ip", web_to([ip_peer("0.0.0.0/0")], port(80)), "prod/web", EXT, 80, True),
        # endPort: inclusive on both ends, protocol still applies.
        row("end-port-range-denies-port-minus-one", all_from(port(8000, end=8080)), EXT, "prod/web", 7999, False),
        row("end-port-range-admits-port", all_from(port(8000, end=8080)), EXT, "prod/web", 8000, True),
        row("end-port-range-admits-middle", all_from(port(8000, end=8080)), EXT, "prod/web", 8040, True),
        row("end-port-range-admits-end-port", all_from(port(8000, end=8080)), EXT, "prod/web", 8080, True),
        row("end-port-range-denies-end-port-plus-one", all_from(port(8000, end=8080)), EXT, "prod/web", 8081, False),
        row("end-port-range-denies-udp", all_from(port(8000, end=8080)), EXT, "prod/web", 8000, False, "UDP"),
        row("end-port-equal-to-port-is-single-port", all_from(port(53, "UDP", end=53)), EXT, "prod/web", 53, True, "UDP"),
        row("end-port-equal-to-port-excludes-next", all_from(port(53, "UDP", end=53)), EXT, "prod/web", 54, False, "UDP"),
        row("udp-end-port-range-denies-tcp", all_from(port(1000, "UDP", end=2000)), EXT, "prod/web", 1500, False),
        row("udp-end-port-range-admits-udp", all_from(port(1000, "UDP", end=2000)), EXT, "prod/web", 1500, True, "UDP"),
    ],
)  # fmt: skip
def test_ports_named_and_ranges(
    policies: list[NetworkPolicy],
    src: str,
    dst: str,
    port_number: int,
    protocol: str,
    allowed: bool,
) -> None:
    assert_row(policies, src, dst, port_number, protocol, allowed)


def test_named_port_does_not_match_external_ip() -> None:
    # Even an `ipBlock` peer covering everything plus a name the client itself declares.
    eng = world(*web_to([ip_peer("0.0.0.0/0")], port("http")))
    assert not verdict(eng, "prod/web", EXT, 80).allowed
    assert verdict(eng, "prod/web", "prod/db", 8080).allowed  # name resolved on prod/db


def test_named_port_declared_by_two_containers_admits_both_numbers() -> None:
    # Port names are unique per container, not per pod: both containers' "http" count,
    # in `evaluate` as in `matrix` (kube-network-policies checks every container port).
    pods = [
        pod("x/client", ip="10.0.0.1"),
        pod("x/srv", {"r": "s"}, ip="10.0.0.2", ports=[cport("http", 80), cport("http", 8080)]),
    ]
    eng = engine(
        pods=pods, policies=[policy("x/in", sel(r="s"), ingress=[rule(None, [port("http")])])]
    )
    for number in (80, 8080):
        assert verdict(eng, "x/client", "x/srv", number).allowed
        assert eng.matrix(number, Protocol.TCP).rows[0] == "11"
    assert not verdict(eng, "x/client", "x/srv", 81).allowed


# ======================================================================== §3.6


def db_from_ip(cidr: str, *excepts: str) -> list[NetworkPolicy]:
    return [policy("prod/db-in", DB, ingress=[rule([ip_peer(cidr, *excepts)])])]


@pytest.mark.parametrize(
    ROW_ARGS,
    [
        row("ipblock-admits-network-address", db_from_ip("203.0.113.0/24", "203.0.113.128/25"), "203.0.113.0", "prod/db", 1, True),
        row("ipblock-admits-last-before-except", db_from_ip("203.0.113.0/24", "203.0.113.128/25"), "203.0.113.127", "prod/db", 1, True),
        row("ipblock-denies-first-of-except", db_from_ip("203.0.113.0/24", "203.0.113.128/25"), "203.0.113.128", "prod/db", 1, False),
        row("ipblock-denies-last-of-except", db_from_ip("203.0.113.0/24", "203.0.113.128/25"), "203.0.113.255", "prod/db", 1, False),
        row("ipblock-denies-just-below-cidr", db_from_ip("203.0.113.0/24", "203.0.113.128/25"), "203.0.112.255", "prod/db", 1, False),
        row("ipblock-denies-just-above-cidr", db_from_ip("203.0.113.0/24", "203.0.113.128/25"), "203.0.114.0", "prod/db", 1, False),
        row("ipblock-except-in-the-middle", db_from_ip("203.0.113.0/24", "203.0.113.64/26"), "203.0.113.200", "prod/db", 1, True),
        row("ipblock-several-excepts", db_from_ip("203.0.113.0/24", "203.0.113.64/26", "203.0.113.200/32"), "203.0.113.200", "prod/db", 1, False),
        row("ipblock-host-bits-ignored-admits-whole-network", db_from_ip("203.0.113.77/24"), "203.0.113.200", "prod/db", 1, True),
        row("ipblock-host-bits-ignored-still-bounded", db_from_ip("203.0.113.77/24"), "203.0.114.1", "prod/db", 1, False),
        row("ipblock-except-host-bits-ignored", db_from_ip("203.0.113.0/24", "203.0.113.130/25"), "203.0.113.129", "prod/db", 1, False),
        row("ipblock-slash-32-admits-exact-address", db_from_ip("203.0.113.5/32"), "203.0.113.5", "prod/db", 1, True),
        row("ipblock-slash-32-denies-neighbour", db_from_ip("203.0.113.5/32"), "203.0.113.6", "prod/db", 1, False),
        row("ipv6-ipblock-does-not-match-ipv4", db_from_ip("::/0"), EXT, "prod/db", 1, False),
        row("ipv6-ipblock-matches-ipv6", db_from_ip("2001:db8::/32"), "2001:db8::1", "prod/db", 1, True),
        row("ipblock-everything-except-pod-range-admits-world", db_from_ip("0.0.0.0/0", "10.0.0.0/16"), EXT, "prod/db", 1, True),
        row("ipblock-everything-except-pod-range-denies-pods", db_from_ip("0.0.0.0/0", "10.0.0.0/16"), "dev/web", "prod/db", 1, False),
        row("ipblock-matches-pod-ip-by-default", db_from_ip("10.0.2.0/24"), "dev/tool", "prod/db", 1, True),
        row("ipblock-does-not-match-pod-outside-it", db_from_ip("10.0.2.0/24"), "prod/web", "prod/db", 1, False),
    ],
)  # fmt: skip
def test_ipblock_is_cidr_minus_excepts(
    policies: list[NetworkPolicy],
    src: str,
    dst: str,
    port_number: int,
    protocol: str,
    allowed: bool,
) -> None:
    assert_row(policies, src, dst, port_number, protocol, allowed)


WEB_TO_PODS = [policy("prod/out", WEB, types=["Egress"], egress=[rule([ip_peer("10.0.0.0/16")])])]
WEB_TO_NODES = [
    policy("prod/out", WEB, types=["Egress"], egress=[rule([ip_peer("192.168.0.0/24")])])
]


@pytest.mark.parametrize(
    "mode,policies,src,dst,allowed",
    [
        pytest.param(MATCH, db_from_ip("10.0.0.0/16"), "dev/web", "prod/db", True, id="match-ingress-pod-ip"),
        pytest.param(IGNORE, db_from_ip("10.0.0.0/16"), "dev/web", "prod/db", False, id="ignore-ingress-pod-ip"),
        pytest.param(MATCH, db_from_ip("10.0.0.0/16"), "10.0.2.10", "prod/db", True, id="match-ingress-pod-by-address"),
        pytest.param(IGNORE, db_from_ip("10.0.0.0/16"), "10.0.2.10", "prod/db", False, id="ignore-ingress-pod-by-address"),
        pytest.param(IGNORE, db_from_ip("10.0.0.0/16"), "10.0.9.9", "prod/db", True, id="ignore-ingress-unowned-address-in-range"),
        pytest.param(MATCH, WEB_TO_PODS, "prod/web", "prod/db", True, id="match-egress-pod-ip"),
        pytest.param(IGNORE, WEB_TO_PODS, "prod/web", "prod/db", False, id="ignore-egress-pod-ip"),
        pytest.param(IGNORE, WEB_TO_PODS, "prod/web", "10.0.9.9", True, id="ignore-egress-unowned-address"),
        pytest.param(MATCH, db_from_ip("0.0.0.0/0"), EXT, "prod/db", True, id="match-ingress-external"),
        pytest.param(IGNORE, db_from_ip("0.0.0.0/0"), EXT, "prod/db", True, id="ignore-ingress-external"),
        pytest.param(MATCH, db_from_ip("192.168.0.0/24"), "prod/agent", "prod/db", True, id="match-ingress-hostnetwork"),
        pytest.param(IGNORE, db_from_ip("192.168.0.0/24"), "prod/agent", "prod/db", True, id="ignore-ingress-hostnetwork"),
        pytest.param(IGNORE, db_from_ip("192.168.0.0/24"), N1_IP, "prod/db", True, id="ignore-ingress-node-ip"),
        pytest.param(MATCH, WEB_TO_NODES, "prod/web", N2_IP, True, id="match-egress-node-ip"),
        pytest.param(IGNORE, WEB_TO_NODES, "prod/web", N2_IP, True, id="ignore-egress-node-ip"),
        pytest.param(IGNORE, WEB_TO_NODES, "prod/web", "prod/agent", True, id="ignore-egress-hostnetwork"),
    ],
)  # fmt: skip
def test_ipblock_pod_ips_switch(
    mode: IPBlockPodIPs, policies: list[NetworkPolicy], src: str, dst: str, allowed: bool
) -> None:
    assert_row(policies, src, dst, 443, "TCP", allowed, mode=mode)


# ======================================================================== §3.7

DENY_PROD = [deny_all("prod/deny", sel())]


@pytest.mark.parametrize(
    ROW_ARGS,
    [
        row("pod-to-itself-allowed-under-deny-all", DENY_PROD, "prod/web", "prod/web", 80, True),
        row("pod-to-itself-allowed-over-udp", DENY_PROD, "prod/web", "prod/web", 53, True, "UDP"),
        row("pod-to-itself-by-ip-allowed", DENY_PROD, "10.0.1.10", "prod/web", 80, True),
        row("pod-to-other-pod-denied", DENY_PROD, "prod/web", "prod/db", 80, False),
        row("pod-on-same-node-is-not-node-traffic", DENY_PROD, "prod/bare", "prod/web", 80, False),
        row("own-node-ip-to-pod-allowed", DENY_PROD, N1_IP, "prod/web", 80, True),
        row("own-node-ip-to-other-pod-allowed", DENY_PROD, N2_IP, "prod/db", 80, True),
        row("other-node-ip-to-pod-denied", DENY_PROD, N2_IP, "prod/web", 80, False),
        row("hostnetwork-pod-to-pod-on-same-node-allowed", DENY_PROD, "prod/agent", "prod/web", 80, True),
        row("hostnetwork-pod-to-pod-on-other-node-denied", DENY_PROD, "prod/agent", "prod/db", 80, False),
        row("pod-to-own-node-is-not-exempt-from-egress", DENY_PROD, "prod/web", N1_IP, 80, False),
        row("hostnetwork-pod-is-not-isolated-for-ingress", [deny_all("prod/deny", WEB)], EXT, "prod/agent", 80, True),
        row("hostnetwork-pod-is-not-isolated-for-egress", [deny_all("prod/deny", WEB)], "prod/agent", EXT, 80, True),
        row("hostnetwork-pod-is-not-selected-by-empty-selector", DENY_PROD, "prod/agent", EXT, 80, True),
        row("hostnetwork-client-not-matched-by-pod-selector", db_from(peer(pods=WEB)), "prod/agent", "prod/db", 80, False),
        row("hostnetwork-client-not-matched-by-namespace-selector", db_from(peer(namespaces=sel())), "prod/agent", "prod/db", 80, False),
        row("hostnetwork-client-matched-by-ipblock-of-node-ip", db_from_ip("192.168.0.1/32"), "prod/agent", "prod/db", 80, True),
        row("hostnetwork-client-not-matched-by-ipblock-of-other-node", db_from_ip("192.168.0.2/32"), "prod/agent", "prod/db", 80, False),
    ],
)  # fmt: skip
def test_self_node_and_hostnetwork_traffic(
    policies: list[NetworkPolicy],
    src: str,
    dst: str,
    port_number: int,
    protocol: str,
    allowed: bool,
) -> None:
    assert_row(policies, src, dst, port_number, protocol, allowed)


def test_self_traffic_is_reported_as_loopback_exemption() -> None:
    v = verdict(world(*DENY_PROD), "prod/web", "prod/web", 80)
    assert v.allowed
    assert v.egress.exempt is Exemption.LOOPBACK
    assert v.ingress.exempt is Exemption.LOOPBACK
    # The reasons still say the pod is isolated and no rule admitted it.
    assert v.ingress.isolated
    assert v.ingress.allowed_by == ()
    assert v.ingress.isolated_by == (PolicyKey("prod/deny"),)


def test_node_local_traffic_is_reported_as_node_local_exemption() -> None:
    eng = world(*DENY_PROD)
    same = verdict(eng, N1_IP, "prod/web", 80)
    assert same.ingress.exempt is Exemption.NODE_LOCAL
    assert same.ingress.isolated
    other = verdict(eng, N2_IP, "prod/web", 80)
    assert other.ingress.exempt is None
    assert not other.allowed


def test_node_target_without_node_object_is_exempt_only_when_node_is_known() -> None:
    eng = world(*DENY_PROD)
    web = target(eng, "prod/web")
    assert eng.evaluate(
        Target(ip=ipaddress.ip_address("10.9.9.9"), node="n1"), web, 80, Protocol.TCP
    ).allowed
    assert not eng.evaluate(
        Target(ip=ipaddress.ip_address("10.9.9.9")), web, 80, Protocol.TCP
    ).allowed


def test_hostnetwork_pod_is_not_isolated_by_a_policy_selecting_its_labels() -> None:
    eng = world(deny_all("prod/deny-web", WEB))
    assert "prod/agent" not in eng.index
    v = verdict(eng, "prod/db", "prod/agent", 80)
    assert not v.ingress.isolated
    assert v.allowed
    # Its namesake non-hostNetwork pod is isolated.
    assert not verdict(eng, "prod/db", "prod/web", 80).allowed


def test_hostnetwork_pod_resolves_to_its_node() -> None:
    eng = world()
    t = target(eng, "prod/agent")
    assert t.pod is None
    assert t.ip == ipaddress.ip_address(N1_IP)
    assert t.node == "n1"


# ======================================================================== §3.8


def test_later_policy_with_same_key_replaces_earlier() -> None:
    deny = policy("prod/p", DB)
    allow = policy("prod/p", DB, ingress=[rule()])
    assert verdict(world(deny, allow), "prod/web", "prod/db", 80).allowed
    assert not verdict(world(allow, deny), "prod/web", "prod/db", 80).allowed


def test_replaced_policy_leaves_no_trace_in_reasons() -> None:
    first = policy("prod/p", DB, ingress=[rule([peer(pods=WEB)])])
    second = policy("prod/p", DB, ingress=[rule([peer(pods=sel(app="none"))]), rule()])
    eng = world(first, second)
    assert eng.cluster.policies == (second,)
    v = verdict(eng, "prod/web", "prod/db", 80)
    assert v.ingress.allowed_by == (RuleRef(PolicyKey("prod/p"), Direction.INGRESS, 1),)


def test_same_name_in_other_namespace_is_a_different_policy() -> None:
    eng = world(policy("prod/p", DB), policy("dev/p", sel(), ingress=[rule()]))
    assert len(eng.cluster.policies) == 2
    assert not verdict(eng, "dev/web", "prod/db", 80).allowed
    assert verdict(eng, "prod/db", "dev/web", 80).allowed


def test_policy_replacement_keeps_sorted_order() -> None:
    cluster = Cluster.build(
        policies=[
            policy("prod/b", DB),
            policy("dev/z", DB),
            policy("prod/a", DB),
            policy("prod/b", DB, ingress=[rule()]),
        ]
    )
    assert [p.key for p in cluster.policies] == ["dev/z", "prod/a", "prod/b"]
    assert cluster.policies[2].ingress == (rule(),)


# ======================================================================== reasons


def test_allowed_by_lists_every_admitting_rule_with_yaml_positions() -> None:
    a = policy(
        "prod/a",
        DB,
        ingress=[
            rule([peer(pods=sel(app="nobody"))]),  # 0: wrong peer
            rule([peer(pods=WEB)], [port(5432)]),  # 1: admits
            rule([peer(pods=WEB)], [port(80)]),  # 2: wrong port
            rule(),  # 3: admits
        ],
    )
    b = policy(
        "prod/b",
        sel(),
        ingress=[rule(None, [port(5432, "UDP")]), rule([peer(namespaces=sel(team="a"))])],
    )
    c = policy("prod/c", WEB, ingress=[rule()])  # does not select prod/db
    eng = world(c, b, a)
    v = verdict(eng, "prod/web", "prod/db", 5432)
    assert v.allowed
    assert v.ingress.isolated
    assert v.ingress.isolated_by == (PolicyKey("prod/a"), PolicyKey("prod/b"))
    assert v.ingress.allowed_by == (
        RuleRef(PolicyKey("prod/a"), Direction.INGRESS, 1),
        RuleRef(PolicyKey("prod/a"), Direction.INGRESS, 3),
        RuleRef(PolicyKey("prod/b"), Direction.INGRESS, 1),
    )
    assert not v.egress.isolated
    assert v.egress.allowed_by == ()


def test_allowed_by_for_egress_names_egress_rules() -> None:
    p = policy(
        "prod/out",
        WEB,
        types=["Egress", "Ingress"],
        ingress=[rule()],
        egress=[rule([peer(pods=sel(app="x"))]), rule([peer(pods=DB)], [port("pg")])],
    )
    v = verdict(world(p), "prod/web", "prod/db", 5432)
    assert v.egress.isolated
    assert v.egress.allowed_by == (RuleRef(PolicyKey("prod/out"), Direction.EGRESS, 1),)
    assert str(v.egress.allowed_by[0]) == "prod/out egress[1]"


def test_rules_of_a_direction_not_in_policy_types_are_never_reported() -> None:
    p = policy("prod/p", DB, types=["Ingress"], ingress=[rule()], egress=[rule()])
    v = verdict(world(p), "prod/db", "prod/web", 80)
    assert not v.egress.isolated
    assert v.egress.allowed_by == ()


def test_denied_isolated_side_names_its_policies_but_no_rules() -> None:
    v = verdict(world(policy("prod/p", DB, ingress=[FROM_DB])), "prod/web", "prod/db", 80)
    assert not v.allowed
    assert v.ingress.isolated
    assert v.ingress.isolated_by == (PolicyKey("prod/p"),)
    assert v.ingress.allowed_by == ()


# ======================================================================== terminal pods


def terminal_world(phase: PodPhase) -> PolicyEngine:
    pods = (
        *WORLD_PODS,
        pod("prod/job", {"app": "web"}, ip="10.0.1.99", node="n1", phase=phase),
    )
    policies = [
        policy("prod/db-in", DB, ingress=[rule([peer(pods=WEB)])]),
        deny_all("prod/j", sel(app="web")),
    ]
    return engine(pods=pods, policies=policies, namespaces=NAMESPACES, nodes=NODES)


@pytest.mark.parametrize("phase", [PodPhase.SUCCEEDED, PodPhase.FAILED])
def test_terminal_pod_is_not_selected_and_owns_no_ip(phase: PodPhase) -> None:
    eng = terminal_world(phase)
    assert "prod/job" not in eng.index
    # Its old IP is just an address now: a podSelector peer does not admit it.
    t = target(eng, "10.0.1.99")
    assert t.pod is None
    assert not eng.evaluate(t, target(eng, "prod/db"), 80, Protocol.TCP).allowed
    # It is not isolated by the deny-all that selects its labels.
    v = verdict(eng, EXT, "prod/job", 80)
    assert not v.ingress.isolated


@pytest.mark.parametrize("phase", [PodPhase.SUCCEEDED, PodPhase.FAILED])
def test_running_pod_reusing_a_terminal_pods_ip_owns_it(phase: PodPhase) -> None:
    pods = (
        pod("prod/old", {"app": "x"}, ip="10.0.1.50", phase=phase),
        pod("prod/new", {"app": "web"}, ip="10.0.1.50"),
        pod("prod/db", {"app": "db"}, ip="10.0.1.20", node="n2"),
    )
    eng = engine(pods=pods, policies=db_from(peer(pods=WEB)), nodes=NODES)
    t = target(eng, "10.0.1.50")
    assert t.pod is not None
    assert t.pod.key == "prod/new"
    assert eng.evaluate(t, target(eng, "prod/db"), 80, Protocol.TCP).allowed


@pytest.mark.parametrize("phase", [PodPhase.PENDING, PodPhase.RUNNING, PodPhase.UNKNOWN])
def test_non_terminal_pod_is_selected(phase: PodPhase) -> None:
    eng = engine(
        pods=[
            pod("prod/a", {"app": "web"}, ip="10.0.1.1", phase=phase),
            pod("prod/db", {"app": "db"}, ip="10.0.1.2"),
        ],
        policies=db_from(peer(pods=WEB)),
    )
    assert "prod/a" in eng.index
    assert verdict(eng, "prod/a", "prod/db", 80).allowed


def test_icmp_is_never_policy_evaluated() -> None:
    eng = world()
    with pytest.raises(ValueError, match="ICMP"):
        eng.evaluate(target(eng, "prod/web"), target(eng, "prod/db"), 0, Protocol.ICMP)
