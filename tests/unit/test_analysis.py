"""Analysis: verdict counts, connection groups, rule hits and traffic findings."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from netwatch.core.analysis import (
    ALL_PORTS,
    AnalysisResult,
    FlowFinding,
    FlowFindingKind,
    FlowRow,
    RuleHits,
    TrafficAnalysis,
    too_wide,
)
from netwatch.core.attribution import Attributor, VerdictKind
from netwatch.core.cluster import Cluster
from netwatch.core.engine import RuleRef
from netwatch.core.lint import Finding, FindingKind
from netwatch.core.model import (
    Direction,
    Labels,
    NamespaceName,
    Node,
    NodeName,
    OwnerRef,
    Pod,
    Protocol,
)
from netwatch.core.policy import NetworkPolicy, PolicyKey
from tests.builders import deny_all, ip_peer, peer, policy, port, rule, sel
from tests.builders import pod as bpod

T0 = 1_764_237_600.0
NODE = Node(NodeName("n1"), ("10.0.0.1",), pod_cidrs=("10.42.0.0/24",))


def pod(key: str, ip: str, workload: str | None = None, **labels: str) -> Pod:
    """A pod; `workload` makes it a Deployment replica (ReplicaSet `<workload>-abc12`)."""
    p = bpod(key, {**labels, **({"pod-template-hash": "abc12"} if workload else {})}, ip=ip)
    if workload is None:
        return p
    return Pod(
        namespace=p.namespace,
        name=p.name,
        uid=p.uid,
        labels=p.labels,
        node_name=p.node_name,
        ips=p.ips,
        owners=(OwnerRef("ReplicaSet", f"{workload}-abc12", controller=True),),
    )


WEB1 = pod("shop/web-abc12-1", "10.42.0.10", "web", app="web")
WEB2 = pod("shop/web-abc12-2", "10.42.0.11", "web", app="web")
API = pod("shop/api-abc12-1", "10.42.0.20", "api", app="api")
DB = pod("shop/db-0", "10.42.0.30", app="db")
TOOL = pod("ops/toolbox", "10.42.0.50", app="toolbox")
PODS = [WEB1, WEB2, API, DB, TOOL]


def analyse(
    policies: Sequence[NetworkPolicy],
    rows: Sequence[tuple[str, str, int] | tuple[str, str, int, str]],
    *,
    pods: Sequence[Pod] = PODS,
    static: bool = False,
) -> AnalysisResult:
    cluster = Cluster.build(pods=pods, policies=policies, nodes=[NODE])
    analysis = TrafficAnalysis(Attributor.from_cluster(cluster))
    analysis.add_rows(_rows(rows))
    return analysis.result(static=static)


def _rows(specs: Sequence[tuple[str, str, int] | tuple[str, str, int, str]]) -> list[FlowRow]:
    out: list[FlowRow] = []
    for i, spec in enumerate(specs):
        client, server, sport = spec[0], spec[1], spec[2]
        protocol = Protocol(spec[3]) if len(spec) > 3 else Protocol.TCP  # type: ignore[misc]
        first = T0 + 10 * i
        out.append(
            (client, server, sport, protocol, first, first + 1, 100, 2, None, 40000 + i, False)
        )
    return out


def flow_findings(result: AnalysisResult, kind: FlowFindingKind) -> list[FlowFinding]:
    return [f for f in result.findings if isinstance(f, FlowFinding) and f.kind is kind]


API_FROM_WEB = policy(
    "shop/api-from-web", sel(app="api"), ingress=[rule([peer(pods=sel(app="web"))], [port(8080)])]
)
DB_FROM_API = policy(
    "shop/db-from-api",
    sel(app="db"),
    ingress=[
        rule([peer(pods=sel(app="api"))], [port(5432)]),
        rule([peer(pods=sel(app="cart"))], [port(5432)]),
    ],
)


# ------------------------------------------------------------------ counts and groups


def test_verdicts_count_records_and_groups_merge_pods_of_a_workload() -> None:
    result = analyse(
        [API_FROM_WEB, DB_FROM_API],
        [
            ("10.42.0.10", "10.42.0.20", 8080),
            ("10.42.0.11", "10.42.0.20", 8080),
            ("10.42.0.11", "10.42.0.20", 8080),
            ("10.42.0.50", "10.42.0.30", 5432),
            ("10.42.0.30", "10.42.0.50", 22),
            ("10.42.0.99", "10.42.0.20", 8080),
        ],
    )
    assert result.verdicts == {
        VerdictKind.ALLOWED: 3,
        VerdictKind.DENIED: 1,
        VerdictKind.UNRESTRICTED: 1,
        VerdictKind.UNKNOWN: 1,
    }
    assert result.records == 6
    web_api = next(g for g in result.groups if g.client.key == "shop/web")
    assert (web_api.count, web_api.bytes, web_api.packets) == (3, 300, 6)
    assert web_api.client.name is None  # two pods of the workload
    assert web_api.server.name == "api-abc12-1" and web_api.server.workload == "api"
    assert web_api.server.workload_kind == "Deployment"
    assert web_api.ingress is not None and web_api.ingress.allowed_by == (
        RuleRef(PolicyKey("shop/api-from-web"), Direction.INGRESS, 0),
    )
    unknown = next(g for g in result.groups if g.verdict is VerdictKind.UNKNOWN)
    assert (unknown.client.kind, unknown.client.name) == ("unknown", "10.42.0.99")
    assert unknown.egress is None and unknown.ingress is None
    keys = [(g.client.key, g.server.key, g.protocol.value, g.port) for g in result.groups]
    assert keys == sorted(keys)


def test_icmp_counts_as_unrestricted_without_reasons() -> None:
    result = analyse(
        [deny_all("shop/lock", sel(app="api"))], [("10.42.0.10", "10.42.0.20", 8, "ICMP")]
    )
    assert result.verdicts[VerdictKind.UNRESTRICTED] == 1
    (group,) = result.groups
    assert group.egress is None and group.protocol is Protocol.ICMP


# ------------------------------------------------------------------ rule hits


def test_rule_hits_count_first_and_last() -> None:
    hits = analyse(
        [API_FROM_WEB], [("10.42.0.10", "10.42.0.20", 8080), ("10.42.0.11", "10.42.0.20", 8080)]
    ).rule_hits
    hit = hits.get(RuleRef(PolicyKey("shop/api-from-web"), Direction.INGRESS, 0))
    assert hit is not None
    assert (hit.count, hit.first, hit.last) == (2, T0, T0 + 11)
    assert len(hits) == 1


def test_a_rule_is_hit_even_when_the_other_side_denies() -> None:
    web_egress = policy(
        "shop/web-egress", sel(app="web"), egress=[rule([peer(pods=sel(app="db"))])]
    )
    result = analyse([API_FROM_WEB, web_egress], [("10.42.0.10", "10.42.0.20", 8080)])
    assert result.verdicts[VerdictKind.DENIED] == 1
    assert result.rule_hits.get(RuleRef(PolicyKey("shop/api-from-web"), Direction.INGRESS, 0))


def test_rule_hits_accumulate_across_calls() -> None:
    cluster = Cluster.build(pods=PODS, policies=[API_FROM_WEB], nodes=[NODE])
    attributor = Attributor.from_cluster(cluster)
    decision = attributor.resolve(
        client_ip="10.42.0.10",
        server_ip="10.42.0.20",
        server_port=8080,
        protocol=Protocol.TCP,
        at=T0,
    ).decision
    assert decision is not None
    hits = RuleHits()
    hits.add(decision, count=3, first_seen=T0 + 5, last_seen=T0 + 6)
    hits.add(decision, first_seen=T0, last_seen=T0 + 1)
    ((ref, hit),) = hits.items()
    assert ref.policy == "shop/api-from-web"
    assert (hit.count, hit.first, hit.last) == (4, T0, T0 + 6)


# ------------------------------------------------------------------ findings


def test_denied_connections_become_unexpected_flows_per_workload_pair() -> None:
    result = analyse(
        [API_FROM_WEB, DB_FROM_API],
        [("10.42.0.50", "10.42.0.30", 5432), ("10.42.0.50", "10.42.0.30", 5432)],
    )
    (finding,) = flow_findings(result, FlowFindingKind.UNEXPECTED_FLOW)
    assert (finding.client, finding.server, finding.port, finding.protocol) == (
        "ops/toolbox",
        "shop/db-0",  # a bare pod is its own workload
        5432,
        Protocol.TCP,
    )
    assert finding.count == 2 and finding.denied_by == (Direction.INGRESS,)
    assert finding.isolated_by == ("shop/db-from-api",)


def test_unused_rules_are_the_isolating_rules_nothing_matched() -> None:
    ignored = policy(
        "shop/ignored",
        sel(app="web"),
        ingress=[rule()],
        egress=[rule([peer(pods=sel(app="api"))])],
        types=["Egress"],
    )
    result = analyse(
        [API_FROM_WEB, DB_FROM_API, ignored],
        [("10.42.0.10", "10.42.0.20", 8080), ("10.42.0.20", "10.42.0.30", 5432)],
    )
    unused = [
        (f.policy, f.direction, f.rule) for f in flow_findings(result, FlowFindingKind.UNUSED_RULE)
    ]
    assert unused == [("shop/db-from-api", Direction.INGRESS, 1)]


def test_unprotected_workload_receives_traffic_without_ingress_isolation() -> None:
    result = analyse(
        [API_FROM_WEB], [("10.42.0.10", "10.42.0.20", 8080), ("10.42.0.20", "10.42.0.30", 5432)]
    )
    (finding,) = flow_findings(result, FlowFindingKind.UNPROTECTED_WORKLOAD)
    assert finding.workload == "shop/db-0" and finding.count == 1


@pytest.mark.parametrize(
    ("admitted", "used", "wide"),
    [
        (1, 1, False),
        (4, 1, False),  # [80, 443, 8080, 8443] with one used: not "far" too wide
        (5, 1, True),
        (8, 2, True),
        (8, 3, False),
        (5, 0, True),
        (3, 0, False),
        (ALL_PORTS, 1, True),
    ],
)
def test_too_wide_threshold(admitted: int, used: int, wide: bool) -> None:
    assert too_wide(admitted, used) is wide


def test_a_rule_admitting_every_pod_but_used_by_one_workload_is_overly_broad() -> None:
    many = [pod(f"ns{i}/app-{i}", f"10.42.0.{100 + i}", app=f"a{i}") for i in range(6)]
    everyone = policy(
        "shop/api-from-all", sel(app="api"), ingress=[rule([peer(namespaces=sel())], [port(8080)])]
    )
    result = analyse([everyone], [("10.42.0.10", "10.42.0.20", 8080)], pods=[*PODS, *many])
    (finding,) = flow_findings(result, FlowFindingKind.OVERLY_BROAD_RULE)
    assert (finding.policy, finding.direction, finding.rule) == (
        "shop/api-from-all",
        Direction.INGRESS,
        0,
    )
    assert finding.too_wide == ("workloads",)
    assert finding.admitted is not None and finding.used is not None
    assert (finding.admitted.workloads, finding.used.workloads) == (10, 1)
    assert (finding.admitted.pods, finding.used.pods) == (11, 1)


@pytest.mark.parametrize(
    ("rule_ports", "wide"),
    [
        ([port(8080), port(8443)], False),
        ([port(8000, end=8100)], True),
        ([], True),  # every port of every protocol
    ],
)
def test_port_breadth(rule_ports: list[object], wide: bool) -> None:
    pol = policy(
        "shop/api-from-web",
        sel(app="api"),
        ingress=[rule([peer(pods=sel(app="web"))], rule_ports)],  # type: ignore[arg-type]
    )
    result = analyse([pol], [("10.42.0.10", "10.42.0.20", 8080)])
    found = flow_findings(result, FlowFindingKind.OVERLY_BROAD_RULE)
    assert bool(found) is wide
    if wide:
        assert found[0].too_wide == ("ports",)


@pytest.mark.parametrize(("cidr", "wide"), [("203.0.113.0/24", True), ("0.0.0.0/0", False)])
def test_ip_block_breadth_except_the_whole_internet(cidr: str, wide: bool) -> None:
    pol = policy("shop/api-from-net", sel(app="api"), ingress=[rule([ip_peer(cidr)], [port(8080)])])
    result = analyse([pol], [("203.0.113.5", "10.42.0.20", 8080)])
    found = flow_findings(result, FlowFindingKind.OVERLY_BROAD_RULE)
    assert [f.too_wide for f in found] == ([("addresses",)] if wide else [])


def test_findings_come_sorted_with_lint_after_traffic() -> None:
    result = analyse(
        [API_FROM_WEB, DB_FROM_API],
        [("10.42.0.50", "10.42.0.30", 5432), ("10.42.0.10", "10.42.0.20", 8080)],
        static=True,
    )
    kinds = [f.kind.value for f in result.findings]
    traffic = [k for k in kinds if k in {k.value for k in FlowFindingKind}]
    assert kinds[: len(traffic)] == traffic
    order = [k.value for k in FlowFindingKind]
    assert traffic == sorted(traffic, key=order.index)
    assert any(
        isinstance(f, Finding) and f.kind is FindingKind.UNPROTECTED_POD for f in result.findings
    )
    swapped = analyse(
        [API_FROM_WEB, DB_FROM_API],
        [("10.42.0.10", "10.42.0.20", 8080), ("10.42.0.50", "10.42.0.30", 5432)],
        static=True,
    )
    assert [(f.kind, f.message.split(":")[0]) for f in swapped.findings] == [
        (f.kind, f.message.split(":")[0]) for f in result.findings
    ]


def test_a_namespace_without_labels_is_fine() -> None:
    result = analyse([], [("10.42.0.10", "10.42.0.20", 8080)], pods=[WEB1, API])
    assert Labels() == Labels({})
    assert result.groups[0].client.namespace == NamespaceName("shop")
