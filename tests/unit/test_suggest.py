"""`netwatch.core.suggest`: least-privilege policies from attributed connections.

The helpers at the top (`shop`, `conn`, `run`, `verify`) are shared with the property
and what-if tests.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest

from netwatch.core.attribution import Attributor
from netwatch.core.cluster import NAMESPACE_NAME_LABEL, Cluster
from netwatch.core.flow import Connection, Orientation
from netwatch.core.model import (
    ContainerPort,
    Direction,
    Labels,
    Namespace,
    NamespaceName,
    Node,
    NodeName,
    OwnerRef,
    Pod,
    PodName,
    Protocol,
    Service,
    ServicePort,
    Uid,
    WorkloadKind,
    WorkloadObject,
)
from netwatch.core.observed import Observations
from netwatch.core.policy import NetworkPolicy, Peer, PortSpec, Rule
from netwatch.core.rulebits import dense_runs, merge_ports, stable_labels
from netwatch.core.selectors import LabelSelector
from netwatch.core.suggest import (
    PeerKind,
    Stability,
    SuggestedPolicy,
    Suggestion,
    SuggestMode,
    SuggestOptions,
    suggest,
)
from netwatch.core.verify import Verification, check_policies
from tests.builders import policy, port, rule, sel

T0 = 1_764_000_000.0
DAY = 86_400.0

# ----------------------------------------------------------------- helpers


def wpod(
    key: str,
    labels: Mapping[str, str],
    *,
    ip: str,
    owner: tuple[str, str] | None = None,
    node: str = "n1",
    ports: Iterable[ContainerPort] = (),
) -> Pod:
    """A pod `ns/name` owned by `(kind, name)` (a ReplicaSet name implies a Deployment)."""
    namespace, _, name = key.partition("/")
    owners = (OwnerRef(owner[0], owner[1], controller=True),) if owner else ()
    return Pod(
        namespace=NamespaceName(namespace),
        name=PodName(name),
        uid=Uid(f"uid-{namespace}-{name}"),
        labels=Labels(labels),
        node_name=NodeName(node),
        ips=(ip,),
        host_ip="10.1.0.1" if node == "n1" else "10.1.0.2",
        container_ports=tuple(ports),
        owners=owners,
    )


def owner(kind: WorkloadKind, key: str, selector: Mapping[str, str] | None) -> WorkloadObject:
    namespace, _, name = key.partition("/")
    return WorkloadObject(
        kind=kind,
        namespace=NamespaceName(namespace),
        name=name,
        selector_labels=None if selector is None else Labels(selector),
    )


def tcp(name: str, number: int) -> ContainerPort:
    return ContainerPort(number, Protocol.TCP, name)


def udp(name: str, number: int) -> ContainerPort:
    return ContainerPort(number, Protocol.UDP, name)


NODES = (
    Node(NodeName("n1"), ("10.1.0.1",), ("10.0.1.0/24",)),
    Node(NodeName("n2"), ("10.1.0.2",), ("10.0.2.0/24",)),
)
WEB_A, WEB_B, API, DB, CLIENT, DNS, JOB = (
    "10.0.1.10",
    "10.0.2.10",
    "10.0.1.20",
    "10.0.2.30",
    "10.0.1.40",
    "10.0.1.2",
    "10.0.2.50",
)
API_SVC, DNS_SVC = "10.96.1.1", "10.96.0.10"


def shop_pods() -> list[Pod]:
    hashed = {"pod-template-hash": "h1"}
    return [
        wpod(
            "a/web-h1-x",
            {"app": "web", "tier": "front", **hashed, "helm.sh/chart": "web-1.0"},
            ip=WEB_A,
            owner=("ReplicaSet", "web-h1"),
            ports=[tcp("http", 8080)],
        ),
        wpod(
            "a/web-h1-y",
            {"app": "web", "tier": "front", **hashed, "helm.sh/chart": "web-1.0"},
            ip=WEB_B,
            owner=("ReplicaSet", "web-h1"),
            node="n2",
            ports=[tcp("http", 8080)],
        ),
        wpod(
            "a/api-h2-x",
            {"app": "api", "pod-template-hash": "h2"},
            ip=API,
            owner=("ReplicaSet", "api-h2"),
            ports=[tcp("http", 8080), tcp("metrics", 9090)],
        ),
        wpod(
            "a/db-0",
            {
                "app": "db",
                "statefulset.kubernetes.io/pod-name": "db-0",
                "controller-revision-hash": "db-1",
                "topology.kubernetes.io/zone": "z1",
            },
            ip=DB,
            owner=("StatefulSet", "db"),
            node="n2",
            ports=[ContainerPort(5432)],
        ),
        wpod(
            "b/client-h3-x",
            {"app": "client", "pod-template-hash": "h3"},
            ip=CLIENT,
            owner=("ReplicaSet", "client-h3"),
        ),
        wpod(
            "kube-system/coredns-h4-x",
            {"k8s-app": "kube-dns", "pod-template-hash": "h4"},
            ip=DNS,
            owner=("ReplicaSet", "coredns-h4"),
            ports=[udp("dns", 53), tcp("dns-tcp", 53)],
        ),
        wpod(
            "c/report-123-x",
            {
                "app": "report",
                "job-name": "report-123",
                "controller-uid": "u1",
                "batch.kubernetes.io/job-name": "report-123",
            },
            ip=JOB,
            owner=("Job", "report-123"),
            node="n2",
        ),
    ]


def shop(
    policies: Sequence[NetworkPolicy] = (),
    *,
    pods: Sequence[Pod] | None = None,
    extra_pods: Sequence[Pod] = (),
) -> Cluster:
    """Namespaces a, b, c, kube-system; web (2 pods) and api Deployments, db StatefulSet,
    a client in b, a CronJob pod in c, CoreDNS; Services a/api (80 → http) and kube-dns."""
    cron = owner(WorkloadKind.CRON_JOB, "c/report", None)
    job = WorkloadObject(
        kind=WorkloadKind.JOB,
        namespace=NamespaceName("c"),
        name="report-123",
        owners=(OwnerRef("CronJob", "report", controller=True),),
        selector_labels=Labels({"controller-uid": "u1"}),
    )
    return Cluster.build(
        namespaces=[Namespace(NamespaceName(n)) for n in ("a", "b", "c", "kube-system")],
        pods=[*(shop_pods() if pods is None else pods), *extra_pods],
        policies=policies,
        services=[
            Service(
                NamespaceName("a"),
                "api",
                (API_SVC,),
                Labels({"app": "api"}),
                (ServicePort(80, "http"),),
            ),
            Service(
                NamespaceName("kube-system"),
                "kube-dns",
                (DNS_SVC,),
                Labels({"k8s-app": "kube-dns"}),
                (
                    ServicePort(53, 53, Protocol.UDP, "dns"),
                    ServicePort(53, 53, Protocol.TCP, "dns-tcp"),
                ),
            ),
        ],
        nodes=NODES,
        workload_objects=[
            owner(WorkloadKind.DEPLOYMENT, "a/web", {"app": "web"}),
            owner(WorkloadKind.STATEFUL_SET, "a/db", {"app": "db"}),
            owner(WorkloadKind.DEPLOYMENT, "kube-system/coredns", {"k8s-app": "kube-dns"}),
            cron,
            job,
        ],
    )


_ports = iter(range(40_000, 60_000))


def conn(
    client: str,
    server: str,
    server_port: int,
    protocol: str = "TCP",
    *,
    at: float = T0,
    duration: float = 1.0,
) -> Connection:
    return Connection(
        client_ip=client,
        client_port=next(_ports),
        server_ip=server,
        server_port=server_port,
        protocol=Protocol(protocol),
        first_seen=at,
        last_seen=at + duration,
    )


def attribute(cluster: Cluster, conns: Iterable[Connection]) -> tuple[Attributor, Observations]:
    attributor = Attributor.from_cluster(cluster)
    return attributor, Observations(attributor.attribute(c) for c in conns)


def run(cluster: Cluster, conns: Iterable[Connection], **options: Any) -> Suggestion:
    attributor, observed = attribute(cluster, conns)
    return suggest(observed, engine=attributor.engine, options=SuggestOptions(**options))


def verify(
    cluster: Cluster, conns: Iterable[Connection], result: Suggestion, **kw: bool
) -> Verification:
    attributor, observed = attribute(cluster, conns)
    return check_policies(
        observed,
        attributor=attributor,
        policies=[p.policy for p in result.policies],
        replace=result.mode is SuggestMode.REPLACE,
        include_denied=kw.get("include_denied", False),
        measure=kw.get("measure", False),
    )


def by_name(result: Suggestion) -> dict[str, SuggestedPolicy]:
    return {p.policy.key: p for p in result.policies}


def labels_sel(**labels: str) -> LabelSelector:
    return LabelSelector(tuple(sorted(labels.items())))


def ns_peer(namespace: str, **pod_labels: str) -> Peer:
    return Peer(
        pod_selector=labels_sel(**pod_labels),
        namespace_selector=LabelSelector(((NAMESPACE_NAME_LABEL, namespace),)),
    )


def dns_rule() -> Rule:
    return Rule(
        peers=(ns_peer("kube-system", **{"k8s-app": "kube-dns"}),),
        ports=(PortSpec(Protocol.TCP, 53), PortSpec(Protocol.UDP, 53)),
    )


# ----------------------------------------------------------------- replace


def test_replace_covers_every_seen_workload_in_both_directions() -> None:
    result = run(shop(), [conn(WEB_A, DB, 5432)])
    assert sorted(by_name(result)) == ["a/db-netwatch", "a/web-netwatch"]
    web, db = by_name(result)["a/web-netwatch"].policy, by_name(result)["a/db-netwatch"].policy
    for p in (web, db):
        assert p.policy_types == frozenset(Direction)
    assert web.ingress == ()  # nothing came in: deny-all
    assert web.egress == (
        Rule(
            peers=(Peer(pod_selector=labels_sel(app="db")),), ports=(PortSpec(Protocol.TCP, 5432),)
        ),
        dns_rule(),
    )
    assert db.ingress == (
        Rule(
            peers=(Peer(pod_selector=labels_sel(app="web")),), ports=(PortSpec(Protocol.TCP, 5432),)
        ),
    )
    assert db.egress == ()  # no egress observed: deny-all, no DNS either
    assert verify(shop(), [conn(WEB_A, DB, 5432)], result).ok


def test_selectors_use_the_owner_spec_selector() -> None:
    result = run(shop(), [conn(WEB_A, DB, 5432)])
    assert by_name(result)["a/web-netwatch"].policy.pod_selector == labels_sel(app="web")
    assert by_name(result)["a/db-netwatch"].policy.pod_selector == labels_sel(app="db")


def test_without_an_owner_selector_the_stable_labels_its_pods_share_are_used() -> None:
    # api has no Deployment object in the dump: pod-template-hash must not leak in.
    result = run(shop(), [conn(CLIENT, API, 8080)])
    assert by_name(result)["a/api-netwatch"].policy.pod_selector == labels_sel(app="api")
    assert by_name(result)["b/client-netwatch"].policy.pod_selector == labels_sel(app="client")


def test_cronjob_pods_are_selected_without_per_run_job_labels() -> None:
    result = run(shop(), [conn(JOB, DB, 5432)])
    report = by_name(result)["c/report-netwatch"]
    assert report.workload.kind is WorkloadKind.CRON_JOB
    assert report.policy.pod_selector == labels_sel(app="report")


@pytest.mark.parametrize(
    ("labels", "kind", "kept"),
    [
        ({"app": "x", "pod-template-hash": "h"}, WorkloadKind.DEPLOYMENT, {"app": "x"}),
        ({"app": "x", "controller-revision-hash": "r"}, WorkloadKind.STATEFUL_SET, {"app": "x"}),
        (
            {"statefulset.kubernetes.io/pod-name": "x-0", "app": "x"},
            WorkloadKind.STATEFUL_SET,
            {"app": "x"},
        ),
        (
            {"helm.sh/chart": "x-1", "app.kubernetes.io/name": "x"},
            WorkloadKind.DEPLOYMENT,
            {"app.kubernetes.io/name": "x"},
        ),
        ({"topology.kubernetes.io/zone": "z", "app": "x"}, WorkloadKind.DAEMON_SET, {"app": "x"}),
        ({"pod-template-generation": "3", "app": "x"}, WorkloadKind.DAEMON_SET, {"app": "x"}),
        (
            {"job-name": "r-1", "controller-uid": "u", "app": "r"},
            WorkloadKind.CRON_JOB,
            {"app": "r"},
        ),
        ({"batch.kubernetes.io/job-name": "r-1", "app": "r"}, WorkloadKind.CRON_JOB, {"app": "r"}),
        ({"job-name": "once", "controller-uid": "u"}, WorkloadKind.JOB, {"job-name": "once"}),
    ],
)
def test_unstable_labels_never_make_a_selector(
    labels: dict[str, str], kind: WorkloadKind, kept: dict[str, str]
) -> None:
    assert stable_labels(labels, kind) == kept


def test_same_namespace_peers_use_pod_selector_only_others_the_namespace_name() -> None:
    result = run(shop(), [conn(CLIENT, API, 8080), conn(WEB_A, API, 8080)])
    api = by_name(result)["a/api-netwatch"].policy
    assert [r.peers for r in api.ingress] == [
        (Peer(pod_selector=labels_sel(app="web")),),
        (ns_peer("b", app="client"),),
    ]
    assert by_name(result)["b/client-netwatch"].policy.egress[0].peers == (ns_peer("a", app="api"),)


def test_service_traffic_uses_the_backend_and_its_named_target_port() -> None:
    # Addressed to the Service (port 80): the rules name the pod's port `http` (8080).
    result = run(shop(), [conn(WEB_A, API_SVC, 80)])
    expected = (PortSpec(Protocol.TCP, "http"),)
    assert by_name(result)["a/api-netwatch"].policy.ingress[0].ports == expected
    assert by_name(result)["a/web-netwatch"].policy.egress[0].ports == expected


def test_unnamed_target_ports_stay_numbers() -> None:
    result = run(shop(), [conn(API, DB, 5432)])
    assert by_name(result)["a/db-netwatch"].policy.ingress[0].ports == (
        PortSpec(Protocol.TCP, 5432),
    )


def test_ports_are_merged_per_peer_with_dense_runs_as_ranges() -> None:
    conns = [conn(WEB_A, DB, p) for p in (7000, 7001, 7003, 9000)]
    conns += [conn(WEB_A, DB, 53, "UDP"), conn(WEB_A, API, 8080), conn(WEB_A, API, 9090)]
    result = run(shop(), conns)
    web = by_name(result)["a/web-netwatch"].policy
    assert web.egress[0].ports == (
        PortSpec(Protocol.TCP, "http"),
        PortSpec(Protocol.TCP, "metrics"),
    )
    assert web.egress[1].ports == (
        PortSpec(Protocol.TCP, 7000, 7003),
        PortSpec(Protocol.TCP, 9000),
        PortSpec(Protocol.UDP, 53),
    )
    assert verify(shop(), conns, result).ok


@pytest.mark.parametrize(
    ("numbers", "runs"),
    [
        ([80], [(80, 80)]),
        ([80, 443], [(80, 80), (443, 443)]),
        ([80, 81], [(80, 80), (81, 81)]),  # two ports are not a range
        ([80, 81, 82], [(80, 82)]),
        ([30000, 30001, 30003], [(30000, 30003)]),
        ([30000, 30002, 30004], [(30000, 30004)]),  # 3 of 5: dense
        ([30000, 30003, 30006], [(30000, 30000), (30003, 30003), (30006, 30006)]),
        ([1, 2, 3, 100, 101, 102, 103], [(1, 3), (100, 103)]),
    ],
)
def test_dense_runs(numbers: list[int], runs: list[tuple[int, int]]) -> None:
    assert dense_runs(numbers) == runs


def test_merge_ports_orders_protocols_and_puts_names_after_numbers() -> None:
    merged = merge_ports([(Protocol.UDP, 53), (Protocol.TCP, "http"), (Protocol.TCP, 80)])
    assert merged == (
        PortSpec(Protocol.TCP, 80),
        PortSpec(Protocol.TCP, "http"),
        PortSpec(Protocol.UDP, 53),
    )


def test_dns_lookups_fold_into_the_dns_rule_and_coredns_admits_its_clients() -> None:
    conns = [conn(WEB_A, DNS_SVC, 53, "UDP"), conn(WEB_B, DNS_SVC, 53, "TCP")]
    result = run(shop(), conns)
    web = by_name(result)["a/web-netwatch"]
    assert web.policy.egress == (dns_rule(),)
    assert web.rules[0].kind is PeerKind.DNS and web.rules[0].evidence.connections == 2
    coredns = by_name(result)["kube-system/coredns-netwatch"].policy
    assert coredns.ingress == (
        Rule(
            peers=(ns_peer("a", app="web"),),
            ports=(PortSpec(Protocol.TCP, "dns-tcp"), PortSpec(Protocol.UDP, "dns")),
        ),
    )
    assert coredns.egress == ()  # the DNS pods get no DNS rule to themselves
    assert verify(shop(), conns, result).ok


def test_dns_egress_is_added_even_when_no_lookup_was_seen() -> None:
    result = run(shop(), [conn(CLIENT, API, 8080)])
    assert by_name(result)["b/client-netwatch"].policy.egress[-1] == dns_rule()
    rule_evidence = by_name(result)["b/client-netwatch"].rules[-1]
    assert rule_evidence.kind is PeerKind.DNS and rule_evidence.evidence.connections == 0


def test_without_dns_pods_no_dns_rule_is_invented() -> None:
    pods = [p for p in shop_pods() if p.namespace != "kube-system"]
    result = run(shop(pods=pods), [conn(CLIENT, API, 8080)])
    client = by_name(result)["b/client-netwatch"].policy
    assert len(client.egress) == 1


def test_external_peers_are_aggregated_ip_blocks_grouped_by_their_ports() -> None:
    externals = [f"52.95.{i}.1" for i in range(12)]
    conns = [conn(WEB_A, ip, 443) for ip in externals] + [conn(WEB_A, "8.8.8.8", 853)]
    result = run(shop(), conns, max_cidrs=4)
    web = by_name(result)["a/web-netwatch"]
    ip_rules = [r for r in web.rules if r.kind is PeerKind.ADDRESSES]
    assert [len(web.policy.egress[r.rule].peers or ()) for r in ip_rules] == [1, 4]
    assert [web.policy.egress[r.rule].ports for r in ip_rules] == [
        (PortSpec(Protocol.TCP, 853),),
        (PortSpec(Protocol.TCP, 443),),
    ]
    wide = ip_rules[1].addresses
    assert wide is not None and wide.observed == 12 and wide.admitted > 12
    assert verify(shop(), conns, result).ok


def test_a_wide_aggregate_is_warned_about() -> None:
    result = run(shop(), [conn(WEB_A, "1.1.1.1", 443), conn(WEB_A, "200.1.1.1", 443)], max_cidrs=1)
    (rule_evidence,) = [r for r in by_name(result)["a/web-netwatch"].rules if r.addresses]
    assert rule_evidence.addresses is not None and rule_evidence.addresses.widest_prefix == 0
    assert any("a/web egress to world" in w and "raise --max-cidrs" in w for w in result.warnings)


def test_node_and_world_clients_are_ip_blocks_and_own_node_traffic_needs_nothing() -> None:
    conns = [
        conn("203.0.113.9", WEB_A, 8080),
        conn("10.1.0.2", WEB_A, 8080),  # the other node
        conn("10.1.0.1", WEB_A, 8080),  # WEB_A's own node: always allowed (§3.7)
    ]
    result = run(shop(), conns)
    web = by_name(result)["a/web-netwatch"]
    (ingress,) = web.policy.ingress
    assert [p.ip_block.describe() for p in ingress.peers or () if p.ip_block] == [
        "10.1.0.2/32",
        "203.0.113.9/32",
    ]
    assert web.rules[0].peers == ("node:n2", "world")
    assert verify(shop(), conns, result).ok


def test_a_pod_talking_to_itself_needs_no_rule() -> None:
    result = run(shop(), [conn(API, API, 9090)])
    api = by_name(result)["a/api-netwatch"].policy
    assert api.ingress == () and api.egress == ()


def test_unknown_and_icmp_records_are_skipped_and_counted() -> None:
    conns = [conn("10.0.1.250", API, 8080), conn(WEB_A, "8.8.8.8", 0, "ICMP")]
    result = run(shop(), conns)
    assert result.skipped == {"not-policy-evaluated": 1, "unknown": 1}
    assert result.used == 0


# ----------------------------------------------------------------- denied connections

ONLY_API = policy(
    "a/db-from-api",
    sel(app="db"),
    ingress=[rule([Peer(pod_selector=labels_sel(app="api"))], [port(5432)])],
)


def test_denied_connections_are_reported_and_not_legalized() -> None:
    cluster = shop([ONLY_API])
    conns = [conn(API, DB, 5432), conn(WEB_A, DB, 5432)]
    result = run(cluster, conns)
    assert [o.sample.client.key for o in result.unexpected] == ["a/web-h1-x"]
    db = by_name(result)["a/db-netwatch"].policy
    assert [r.peers for r in db.ingress] == [(Peer(pod_selector=labels_sel(app="api")),)]
    assert verify(cluster, conns, result).ok


def test_include_denied_legalizes_them() -> None:
    cluster = shop([ONLY_API])
    conns = [conn(API, DB, 5432), conn(WEB_A, DB, 5432)]
    result = run(cluster, conns, include_denied=True)
    assert result.unexpected == ()
    db = by_name(result)["a/db-netwatch"].policy
    assert len(db.ingress) == 2
    assert verify(cluster, conns, result, include_denied=True).ok


# ----------------------------------------------------------------- add mode


def test_add_needs_nothing_for_allowed_connections() -> None:
    cluster = shop([ONLY_API])
    result = run(cluster, [conn(API, DB, 5432), conn(CLIENT, WEB_A, 8080)], mode=SuggestMode.ADD)
    assert result.policies == ()


def test_add_without_include_denied_only_reports() -> None:
    cluster = shop([ONLY_API])
    result = run(cluster, [conn(WEB_A, DB, 5432)], mode=SuggestMode.ADD)
    assert result.policies == () and len(result.unexpected) == 1


def test_add_with_include_denied_fixes_only_the_isolated_denying_side() -> None:
    cluster = shop([ONLY_API])
    conns = [conn(WEB_A, DB, 5432)]
    result = run(cluster, conns, mode=SuggestMode.ADD, include_denied=True)
    (added,) = result.policies
    assert added.policy.key == "a/db-netwatch-ingress"
    assert added.policy.policy_types == frozenset({Direction.INGRESS})  # web is not isolated
    assert added.policy.ingress == (
        Rule(
            peers=(Peer(pod_selector=labels_sel(app="web")),), ports=(PortSpec(Protocol.TCP, 5432),)
        ),
    )
    assert verify(cluster, conns, result, include_denied=True).ok


def test_add_selects_only_pods_already_isolated() -> None:
    # Only db pods labelled tier=hot are isolated; the workload selector (app=db) would
    # newly isolate db-1 as well, so the added policy ANDs the isolating policy's selector.
    hot = policy("a/hot-db", sel(tier="hot"), ingress=[])
    db1 = wpod("a/db-1", {"app": "db"}, ip="10.0.2.31", owner=("StatefulSet", "db"))
    pods = [
        wpod("a/db-0", {"app": "db", "tier": "hot"}, ip=DB, owner=("StatefulSet", "db")),
        db1,
        *(p for p in shop_pods() if not p.name.startswith("db-")),
    ]
    cluster = shop([hot], pods=pods)
    conns = [conn(WEB_A, DB, 5432)]
    result = run(cluster, conns, mode=SuggestMode.ADD, include_denied=True)
    (added,) = result.policies
    assert added.policy.pod_selector == labels_sel(app="db", tier="hot")
    assert verify(cluster, conns, result, include_denied=True).ok


def test_add_names_never_replace_an_existing_policy() -> None:
    taken = policy("a/db-netwatch-ingress", sel(app="db"), ingress=[])
    result = run(shop([taken]), [conn(WEB_A, DB, 5432)], mode=SuggestMode.ADD, include_denied=True)
    assert [p.policy.name for p in result.policies] == ["db-netwatch-ingress-2"]


# ----------------------------------------------------------------- evidence and output


def test_evidence_counts_times_and_stability_after_the_quiet_period() -> None:
    conns = [
        conn(WEB_A, DB, 5432, at=T0),
        conn(WEB_A, DB, 5432, at=T0 + DAY, duration=10),
        conn(API, DB, 5432, at=T0 + 2 * DAY - 600),  # new peer: db is still learning
    ]
    result = run(shop(), conns, quiet_period=3600.0)
    db, web = by_name(result)["a/db-netwatch"], by_name(result)["a/web-netwatch"]
    assert db.evidence.connections == 3
    assert (db.evidence.first_seen, db.evidence.last_seen) == (T0, T0 + 2 * DAY - 599)
    assert db.stability is Stability.LEARNING
    assert web.stability is Stability.STABLE
    web_rule = web.rules[0]
    assert (web_rule.direction, web_rule.rule, web_rule.evidence.connections) == (
        Direction.EGRESS,
        0,
        2,
    )
    assert result.window == (T0, T0 + 2 * DAY - 599)


def test_a_rule_less_policy_carries_when_its_workload_was_seen() -> None:
    cluster = shop([ONLY_API])
    result = run(cluster, [conn(WEB_A, DB, 5432, at=T0 + 5)])  # denied, not legalized
    web = by_name(result)["a/web-netwatch"]
    assert web.policy.ingress == () and web.policy.egress == ()
    assert (web.evidence.connections, web.evidence.first_seen) == (0, T0 + 5)


def test_output_does_not_depend_on_input_order() -> None:
    conns = [
        conn(WEB_A, DB, 5432),
        conn(CLIENT, API_SVC, 80),
        conn(WEB_B, "1.1.1.1", 443),
        conn(WEB_A, "1.1.1.2", 443),
        conn(WEB_A, DNS_SVC, 53, "UDP"),
        conn(JOB, DB, 5432),
    ]
    first = run(shop(), conns)
    shuffled = list(conns)
    random.Random(7).shuffle(shuffled)
    again = run(shop(), shuffled)
    assert [p.policy for p in first.policies] == [p.policy for p in again.policies]
    assert [p.rules for p in first.policies] == [p.rules for p in again.policies]
    keys = [p.policy.key for p in first.policies]
    assert keys == sorted(keys)


def test_a_workload_without_stable_labels_gets_no_policy_and_a_warning() -> None:
    bare = wpod("a/scratch", {"pod-template-hash": "zz"}, ip="10.0.1.77")
    cluster = shop(extra_pods=[bare])
    conns = [conn("10.0.1.77", DB, 5432)]
    result = run(cluster, conns)
    assert "a/scratch-netwatch" not in by_name(result)
    assert any("a/scratch" in w for w in result.warnings)
    # As a peer it is admitted namespace-wide, and the set still verifies.
    db = by_name(result)["a/db-netwatch"].policy
    assert db.ingress[0].peers == (Peer(pod_selector=LabelSelector()),)
    assert verify(cluster, conns, result).ok


def test_overlapping_selectors_are_warned_about() -> None:
    canary = wpod("a/web-canary", {"app": "web"}, ip="10.0.1.88")
    result = run(shop(extra_pods=[canary]), [conn(WEB_A, DB, 5432)])
    assert any("also selects pods of a/web-canary" in w for w in result.warnings)


def test_same_named_workloads_of_different_kinds_get_distinct_names() -> None:
    sts = wpod("a/web-0", {"app": "web-sts"}, ip="10.0.1.66", owner=("StatefulSet", "web"))
    result = run(shop(extra_pods=[sts]), [conn(WEB_A, "10.0.1.66", 80)])
    assert {"a/web-deployment-netwatch", "a/web-statefulset-netwatch"} <= set(by_name(result))


def test_admitted_pairs_count_what_the_set_allows_beyond_observation() -> None:
    conns = [conn(WEB_A, API, 8080)]
    result = run(shop(), conns)
    v = verify(shop(), conns, result, measure=True)
    assert v.ok and v.admitted is not None
    # web has two pods; only web-h1-x was seen talking to api: web-h1-y → api is admitted.
    assert (v.admitted.pod_pairs, v.admitted.workload_pairs) == (1, 0)


def test_flow_rows_fold_like_attributed_connections() -> None:
    conns = [
        conn(WEB_A, API_SVC, 80, at=T0 + 5),
        conn(WEB_A, API_SVC, 80, at=T0),
        conn(WEB_B, DB, 5432),
        conn("10.0.1.250", API, 8080),
    ]
    attributor, by_record = attribute(shop(), conns)
    rows = [
        (
            c.client_ip,
            c.server_ip,
            c.server_port,
            c.protocol,
            c.first_seen,
            c.last_seen,
            c.bytes_out + c.bytes_in,
            c.packets_out + c.packets_in,
            c.service_ip,
            c.client_port,
            c.orientation is Orientation.HEURISTIC,
        )
        for c in conns
    ]
    by_row = Observations()
    by_row.add_rows(rows, attributor)
    assert by_row.records == by_record.records == 4
    assert len(by_row) == len(by_record) == 3
    for a, b in zip(by_row, by_record, strict=True):
        assert (a.count, a.first_seen, a.last_seen, a.verdict) == (
            b.count,
            b.first_seen,
            b.last_seen,
            b.verdict,
        )
        assert a.sample.connection.client_port == b.sample.connection.client_port
        assert a.sample.server.key == b.sample.server.key and a.sample.port == b.sample.port
    assert by_row.window == by_record.window == (T0, T0 + 6)
