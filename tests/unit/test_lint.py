"""Static lint: each finding kind, and the promise behind redundancy findings.

The property test at the end is the real specification: removing every rule and policy
that lint calls redundant (or empty) must leave every verdict unchanged, for every port
that matters and for external addresses too.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netwatch.core.engine import IPBlockPodIPs, PolicyEngine
from netwatch.core.lint import Finding, FindingKind, lint
from netwatch.core.model import POLICY_PROTOCOLS, Direction, LoadProblem, PodPhase, Protocol
from netwatch.core.policy import NetworkPolicy
from tests.builders import (
    cport,
    engine,
    expr,
    ip_peer,
    ns,
    peer,
    pod,
    policy,
    port,
    rule,
    sel,
    sel_labels,
)

DNS = pod(
    "kube-system/coredns",
    {"k8s-app": "kube-dns"},
    ip="10.0.9.2",
    ports=[cport("dns", 53, "UDP"), cport("dns-tcp", 53)],
)


def kinds(findings: list[Finding], kind: FindingKind) -> list[Finding]:
    return [f for f in findings if f.kind is kind]


def base_pods() -> list:
    return [
        pod("a/web", {"app": "web"}, ip="10.0.0.1", ports=[cport("http", 8080)]),
        pod("a/api", {"app": "api", "tier": "be"}, ip="10.0.0.2", ports=[cport("http", 9090)]),
        pod("a/db", {"app": "db", "tier": "be"}, ip="10.0.0.3"),
        pod("b/client", {"app": "client"}, ip="10.0.1.1"),
        DNS,
    ]


# ------------------------------------------------------------------ simple kinds


def test_policy_selecting_no_pod_is_empty_policy() -> None:
    eng = engine(pods=base_pods(), policies=[policy("a/ghost", sel(app="nope"), ingress=[])])
    found = kinds(lint(eng), FindingKind.EMPTY_POLICY)
    assert [f.policy for f in found] == ["a/ghost"]
    assert "app=nope" in found[0].message


def test_rule_whose_peers_match_nothing_is_empty_rule_not_redundant() -> None:
    pol = policy(
        "a/p",
        sel(app="db"),
        ingress=[rule([peer(pods=sel(app="api"))]), rule([peer(pods=sel(app="gone"))])],
    )
    found = lint(engine(pods=base_pods(), policies=[pol]))
    assert [(f.policy, f.rule) for f in kinds(found, FindingKind.EMPTY_RULE)] == [("a/p", 1)]
    assert not kinds(found, FindingKind.REDUNDANT_RULE)


def test_ipblock_rule_is_never_empty_even_without_pods() -> None:
    pol = policy("a/p", sel(app="db"), ingress=[rule([ip_peer("192.0.2.0/24")])])
    assert not kinds(lint(engine(pods=base_pods(), policies=[pol])), FindingKind.EMPTY_RULE)


def test_named_port_nobody_declares_is_empty_rule() -> None:
    pol = policy("a/p", sel(app="db"), ingress=[rule(None, [port("postgres")])])
    found = kinds(lint(engine(pods=base_pods(), policies=[pol])), FindingKind.EMPTY_RULE)
    assert [(f.policy, f.rule) for f in found] == [("a/p", 0)]


def test_rules_outside_policy_types_are_vacuous() -> None:
    pol = policy("a/p", sel(app="db"), ingress=[rule()], egress=[rule()], types=["Egress"])
    found = kinds(lint(engine(pods=base_pods(), policies=[pol])), FindingKind.VACUOUS_CONFIG)
    assert [(f.policy, f.direction) for f in found] == [
        ("a/p", Direction.EGRESS),  # egress: [{}] isolates yet admits everything
        ("a/p", Direction.INGRESS),  # ingress rules ignored: not in policyTypes
    ]


def test_invalid_objects_become_findings_with_location() -> None:
    problem = LoadProblem("c.yaml", "NetworkPolicy a/x", "spec.ingress[0].ports[0].endPort", "x")
    found = lint(engine(pods=base_pods()), problems=[problem])
    assert kinds(found, FindingKind.INVALID_OBJECT)[0].problem == problem


def test_unprotected_pods_per_direction_skip_host_network_and_completed() -> None:
    pods = [
        pod("a/web", {"app": "web"}, ip="10.0.0.1"),
        pod("a/agent", {"app": "web"}, ip="192.168.0.1", host_network=True),
        pod("a/job", {"app": "web"}, ip="10.0.0.9", phase=PodPhase.SUCCEEDED),
    ]
    pol = policy("a/p", sel(app="web"), ingress=[])
    found = kinds(lint(engine(pods=pods, policies=[pol])), FindingKind.UNPROTECTED_POD)
    assert [(f.pod, f.direction) for f in found] == [("a/web", Direction.EGRESS)]


# ------------------------------------------------------------------ DNS


def test_egress_isolated_pod_without_dns_rule_is_flagged() -> None:
    pol = policy("a/p", sel(app="web"), egress=[rule([peer(pods=sel(app="api"))])])
    found = kinds(lint(engine(pods=base_pods(), policies=[pol])), FindingKind.DNS_EGRESS_BLOCKED)
    assert [(f.pod, f.policy) for f in found] == [("a/web", "a/p")]


def test_dns_allowed_to_the_dns_pods_by_namespace_and_label_is_fine() -> None:
    to_dns = rule(
        [
            peer(
                namespaces=sel_labels({"kubernetes.io/metadata.name": "kube-system"}),
                pods=sel_labels({"k8s-app": "kube-dns"}),
            )
        ],
        [port(53, "UDP"), port(53)],
    )
    pol = policy("a/p", sel(app="web"), egress=[to_dns])
    assert not kinds(lint(engine(pods=base_pods(), policies=[pol])), FindingKind.DNS_EGRESS_BLOCKED)


def test_dns_allowed_to_wrong_port_or_protocol_is_flagged() -> None:
    pol = policy("a/p", sel(app="web"), egress=[rule(None, [port(53)])])  # TCP only
    found = kinds(lint(engine(pods=base_pods(), policies=[pol])), FindingKind.DNS_EGRESS_BLOCKED)
    assert [f.pod for f in found] == ["a/web"]


# ------------------------------------------------------------------ redundancy


def test_identical_rules_report_only_the_later_one() -> None:
    r = rule([peer(pods=sel(app="web"))], [port(9090)])
    pols = [
        policy("a/p1", sel(app="api"), ingress=[r, rule([peer(pods=sel(app="db"))])]),
        policy("a/p2", sel(app="api"), ingress=[r, rule([peer(pods=sel(app="web"))], [port(1)])]),
    ]
    found = lint(engine(pods=base_pods(), policies=pols))
    red = kinds(found, FindingKind.REDUNDANT_RULE)
    assert [(f.policy, f.rule) for f in red] == [("a/p2", 0)]
    assert red[0].contained_in is not None
    assert (red[0].contained_in.policy, red[0].contained_in.rule) == ("a/p1", 0)


def test_port_range_contains_single_port_and_named_port_resolving_into_it() -> None:
    pol = policy(
        "a/p",
        sel(app="api"),
        ingress=[
            rule([peer(pods=sel())], [port(9000, end=9100)]),
            rule([peer(pods=sel(app="web"))], [port("http")]),  # http is 9090 on a/api
        ],
    )
    red = kinds(lint(engine(pods=base_pods(), policies=[pol])), FindingKind.REDUNDANT_RULE)
    assert [(f.policy, f.rule) for f in red] == [("a/p", 1)]


def test_named_port_outside_range_is_not_redundant() -> None:
    pol = policy(
        "a/p",
        sel(app="api"),
        ingress=[
            rule([peer(pods=sel())], [port(8000, end=9000)]),
            rule([peer(pods=sel(app="web"))], [port("http")]),  # 9090: outside
        ],
    )
    assert not kinds(lint(engine(pods=base_pods(), policies=[pol])), FindingKind.REDUNDANT_RULE)


def test_rule_covered_only_by_a_union_has_no_single_container() -> None:
    pol = policy(
        "a/p",
        sel(app="db"),
        ingress=[
            rule([peer(pods=sel(app="web"))], [port(5432)]),
            rule([peer(pods=sel(app="api"))], [port(5432)]),
            rule([peer(pods=sel(expr("app", "In", "web", "api")))], [port(5432)]),
        ],
    )
    red = kinds(lint(engine(pods=base_pods(), policies=[pol])), FindingKind.REDUNDANT_RULE)
    assert [(f.rule, f.contained_in) for f in red] == [(2, None)]


def test_udp_rule_is_not_contained_in_tcp_rule() -> None:
    pol = policy(
        "a/p",
        sel(app="db"),
        ingress=[rule([peer(pods=sel())], [port(53)]), rule([peer(pods=sel())], [port(53, "UDP")])],
    )
    assert not kinds(lint(engine(pods=base_pods(), policies=[pol])), FindingKind.REDUNDANT_RULE)


def test_ipblock_over_all_pod_ips_contains_all_pods_only_when_ipblocks_match_pods() -> None:
    # The ipBlock is never contained in the selector rule: it also admits outside addresses.
    pol = policy(
        "a/p",
        sel(app="db"),
        ingress=[rule([peer(namespaces=sel())]), rule([ip_peer("10.0.0.0/8")])],
    )
    found = lint(engine(pods=base_pods(), policies=[pol], ipblock_pod_ips=IPBlockPodIPs.MATCH))
    red = kinds(found, FindingKind.REDUNDANT_RULE)
    assert [(f.rule, f.contained_in and f.contained_in.rule) for f in red] == [(0, 1)]
    found = lint(engine(pods=base_pods(), policies=[pol], ipblock_pod_ips=IPBlockPodIPs.IGNORE))
    assert not kinds(found, FindingKind.REDUNDANT_RULE)


def test_ipblock_covering_only_pod_ips_is_contained_in_all_pods_in_match_mode() -> None:
    # 10.0.0.0/30 holds 10.0.0.0-3: .1-.3 are pods; .0 is an address no pod has.
    pods = base_pods()
    blocks = [ip_peer("10.0.0.1/32"), ip_peer("10.0.0.2/31")]
    pol = policy("a/p", sel(app="db"), ingress=[rule([peer(namespaces=sel())]), rule(blocks)])
    red = kinds(lint(engine(pods=pods, policies=[pol])), FindingKind.REDUNDANT_RULE)
    assert [(f.policy, f.rule) for f in red] == [("a/p", 1)]


def test_deny_all_is_redundant_only_where_another_policy_isolates_every_pod() -> None:
    allow_api = policy("a/allow", sel(app="api"), ingress=[rule([peer(pods=sel(app="web"))])])
    narrow_deny = policy("a/deny", sel(app="api"), ingress=[])
    wide_deny = policy("a/zdeny", sel(), ingress=[])
    found = lint(engine(pods=base_pods(), policies=[allow_api, narrow_deny]))
    assert [f.policy for f in kinds(found, FindingKind.REDUNDANT_POLICY)] == ["a/deny"]
    found = lint(engine(pods=base_pods(), policies=[allow_api, wide_deny]))
    assert not kinds(found, FindingKind.REDUNDANT_POLICY)


def test_allow_all_policy_alone_is_redundant_since_unisolated_pods_allow_everything() -> None:
    pol = policy("a/open", sel(app="api"), ingress=[rule()])
    found = lint(engine(pods=base_pods(), policies=[pol]))
    assert [f.policy for f in kinds(found, FindingKind.REDUNDANT_POLICY)] == ["a/open"]


def test_redundant_policy_names_the_policy_that_contains_it() -> None:
    wide = policy("a/wide", sel(tier="be"), ingress=[rule([peer(pods=sel())])])
    narrow = policy(
        "a/narrow", sel(app="api"), ingress=[rule([peer(pods=sel(app="web"))], [port(80)])]
    )
    found = kinds(
        lint(engine(pods=base_pods(), policies=[wide, narrow])), FindingKind.REDUNDANT_POLICY
    )
    assert [(f.policy, f.contained_in_policy) for f in found] == [("a/narrow", "a/wide")]


# ------------------------------------------------------------------ the promise

LABELS = st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["x", "y"]), max_size=2)
SELECTORS = st.one_of(
    st.builds(lambda d: sel(**d), LABELS),
    st.builds(
        lambda k, op, v: sel(expr(k, op, *([v] if op in ("In", "NotIn") else []))),
        st.sampled_from(["app", "tier"]),
        st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]),
        st.sampled_from(["x", "y"]),
    ),
)
PEERS = st.one_of(
    st.builds(lambda s: peer(pods=s), SELECTORS),
    st.builds(
        lambda s: peer(namespaces=s),
        st.builds(
            lambda d: sel(**d),
            st.dictionaries(st.just("team"), st.sampled_from(["t1", "t2"]), max_size=1),
        ),
    ),
    st.builds(lambda s, n: peer(pods=s, namespaces=n), SELECTORS, st.just(sel())),
    st.sampled_from(
        [
            ip_peer("10.0.0.0/30"),
            ip_peer("10.0.0.0/24", "10.0.0.0/31"),
            ip_peer("0.0.0.0/0"),
            ip_peer("10.0.0.1/32"),
        ]
    ),
)
PORTS = st.one_of(
    st.builds(port, st.sampled_from([80, 81, 53]), st.sampled_from(["TCP", "UDP"])),
    st.builds(port, st.sampled_from(["http", "dns"])),
    st.builds(lambda a: port(a, end=a + 2), st.sampled_from([79, 80])),
    st.just(port()),
)
RULES = st.builds(
    rule,
    st.one_of(st.none(), st.lists(PEERS, min_size=1, max_size=2)),
    st.lists(PORTS, max_size=2),
)


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list, list[NetworkPolicy], list]:
    namespaces = [ns("a", team="t1"), ns("b", team="t2")]
    pods = []
    for i in range(draw(st.integers(2, 6))):
        ports = draw(
            st.lists(
                st.sampled_from([cport("http", 80), cport("http", 81), cport("dns", 53, "UDP")]),
                max_size=2,
                unique_by=lambda c: c.name,
            )
        )
        pods.append(
            pod(
                f"{draw(st.sampled_from(['a', 'b']))}/p{i}",
                draw(LABELS),
                ip=f"10.0.0.{i + 1}",
                ports=ports,
            )
        )
    policies = []
    for i in range(draw(st.integers(1, 4))):
        types = draw(st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
        policies.append(
            policy(
                f"{draw(st.sampled_from(['a', 'b']))}/pol{i}",
                draw(SELECTORS),
                ingress=draw(st.lists(RULES, max_size=3)),
                egress=draw(st.lists(RULES, max_size=3)),
                types=types,
            )
        )
    return namespaces, policies, pods


def _without_findings(
    policies: list[NetworkPolicy], findings: list[Finding]
) -> list[NetworkPolicy]:
    drop_rules = {
        (f.policy, f.direction, f.rule)
        for f in findings
        if f.kind in (FindingKind.REDUNDANT_RULE, FindingKind.EMPTY_RULE)
    }
    drop_dirs = {
        (f.policy, f.direction) for f in findings if f.kind is FindingKind.REDUNDANT_POLICY
    }
    drop_pols = {f.policy for f in findings if f.kind is FindingKind.EMPTY_POLICY}
    out = []
    for p in policies:
        if p.key in drop_pols:
            continue
        types = frozenset(d for d in p.policy_types if (p.key, d) not in drop_dirs)
        if not types:
            continue
        rules = {
            d: tuple(r for n, r in enumerate(p.rules(d)) if (p.key, d, n) not in drop_rules)
            for d in Direction
        }
        out.append(
            dataclasses.replace(
                p,
                policy_types=types,
                ingress=rules[Direction.INGRESS],
                egress=rules[Direction.EGRESS],
            )
        )
    return out


def _verdicts(eng: PolicyEngine) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    outside = [
        eng.target_for_ip(ipaddress.ip_address(a)) for a in ("10.0.0.0", "10.0.0.200", "192.0.2.1")
    ]
    for proto in POLICY_PROTOCOLS:
        for number in (52, 53, 54, 78, 79, 80, 81, 82, 83):
            m = eng.matrix(number, proto)
            out.append((number, proto, m.rows))
            for x in outside:
                for p in eng.pods:
                    t = eng.target_for_pod(p)
                    out.append(
                        (
                            number,
                            proto,
                            p.key,
                            str(x.ip),
                            eng.evaluate(x, t, number, proto).allowed,
                            eng.evaluate(t, x, number, proto).allowed,
                        )
                    )
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.sampled_from(list(IPBlockPodIPs)))
def test_removing_everything_lint_calls_redundant_changes_no_verdict(
    data: tuple[list, list[NetworkPolicy], list], mode: IPBlockPodIPs
) -> None:
    namespaces, policies, pods = data
    before = engine(pods=pods, policies=policies, namespaces=namespaces, ipblock_pod_ips=mode)
    findings = lint(before)
    pruned = _without_findings(policies, findings)
    after = engine(pods=pods, policies=pruned, namespaces=namespaces, ipblock_pod_ips=mode)
    assert _verdicts(before) == _verdicts(after)


def test_redundancy_property_is_not_vacuous() -> None:
    """Guard: the shop-like example above does produce redundancy findings to remove."""
    r = rule([peer(pods=sel(app="web"))], [port(80)])
    pols = [policy("a/p1", sel(app="api"), ingress=[r, r])]
    eng = engine(pods=base_pods(), policies=pols)
    assert kinds(lint(eng), FindingKind.REDUNDANT_RULE)
    assert Protocol.TCP in POLICY_PROTOCOLS
