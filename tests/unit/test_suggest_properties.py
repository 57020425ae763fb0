"""Properties of suggestions over random clusters and random observed flows (hypothesis).

Clusters: 2-3 namespaces plus kube-system (CoreDNS and its Service, sometimes), 2-6
Deployments of 1-2 pods with overlapping labels and named ports, a bare pod, a Service
with a named targetPort, two nodes; random existing policies with every peer and port
kind. Flows: pods, nodes, external addresses and Service IPs as clients and servers, on
a handful of ports and all three protocols.

- `replace` admits every observed connection it must (denied ones only with
  `include_denied`), by a fresh engine;
- the YAML it prints loads back with zero problems into the same policies, and `whatif`
  fed with it reports zero denials;
- `add` never removes anything: every connection allowed before is allowed after, and
  for every observed port no pod pair allowed before is denied after.
"""

from __future__ import annotations

import io
import ipaddress
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netwatch.core.attribution import Attributor, VerdictKind
from netwatch.core.cluster import Cluster
from netwatch.core.engine import PolicyEngine
from netwatch.core.flow import Connection
from netwatch.core.model import (
    POLICY_PROTOCOLS,
    ContainerPort,
    Labels,
    Namespace,
    NamespaceName,
    Node,
    NodeName,
    Protocol,
    Service,
    ServicePort,
    WorkloadKind,
    WorkloadObject,
)
from netwatch.core.observed import Observations
from netwatch.core.policy import (
    IPBlock,
    NetworkPolicy,
    Peer,
    PortSpec,
    Rule,
    effective_policy_types,
)
from netwatch.core.selectors import LabelSelector, Operator, Requirement
from netwatch.core.suggest import Suggestion, SuggestMode, SuggestOptions, suggest
from netwatch.core.verify import check_policies, with_policies
from netwatch.core.whatif import whatif
from netwatch.k8s.snapshot import load_cluster
from netwatch.render.policy_yaml import dump_manifests
from netwatch.render.suggest import manifest
from tests.unit.test_suggest import wpod

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NAMESPACES = ("ns0", "ns1", "ns2")
KEYS = ("app", "tier")
VALUES = ("w0", "w1", "w2", "a", "b")
PORTS = (53, 80, 443, 8080, 30000, 30001, 30002)
NODES = (
    Node(NodeName("n1"), ("10.1.0.1",), ("10.0.1.0/24",)),
    Node(NodeName("n2"), ("10.1.0.2",), ("10.0.2.0/24",)),
)
EXTERNAL = ("203.0.113.7", "203.0.113.9", "198.51.100.1", "8.8.8.8", "10.20.0.5")
T0 = 1_764_000_000.0


# ----------------------------------------------------------------- clusters


@st.composite
def clusters(draw: st.DrawFn) -> Cluster:
    namespaces = NAMESPACES[: draw(st.integers(2, 3))]
    pods = []
    objects = []
    services = []
    n = 0
    for w in range(draw(st.integers(2, 6))):
        ns = draw(st.sampled_from(namespaces))
        name = f"w{w}"
        labels = {"app": name, "pod-template-hash": "h"}
        if draw(st.booleans()):
            labels["tier"] = draw(st.sampled_from(["a", "b"]))
        ports = draw(
            st.lists(
                st.sampled_from(
                    [
                        ContainerPort(8080, Protocol.TCP, "http"),
                        ContainerPort(80, Protocol.TCP, "web"),
                        ContainerPort(53, Protocol.UDP, "dns"),
                        ContainerPort(443, Protocol.TCP, None),
                    ]
                ),
                max_size=3,
                unique=True,
            )
        )
        if draw(st.booleans()):
            objects.append(
                WorkloadObject(
                    WorkloadKind.DEPLOYMENT,
                    NamespaceName(ns),
                    name,
                    selector_labels=Labels({"app": name}),
                )
            )
        for i in range(draw(st.integers(1, 2))):
            n += 1
            pods.append(
                wpod(
                    f"{ns}/{name}-h-{i}",
                    labels,
                    ip=f"10.0.{1 + n % 2}.{10 + n}",
                    owner=("ReplicaSet", f"{name}-h"),
                    node="n1" if n % 2 else "n2",
                    ports=ports,
                )
            )
        if w == 0:
            services.append(
                Service(
                    NamespaceName(ns),
                    name,
                    ("10.96.0.50",),
                    Labels({"app": name}),
                    (ServicePort(80, "http"), ServicePort(81, 443)),
                )
            )
    pods.append(wpod("ns1/bare", {"run": "bare"}, ip="10.0.1.99"))
    if draw(st.booleans()):
        pods.append(
            wpod(
                "kube-system/coredns-h-0",
                {"k8s-app": "kube-dns", "pod-template-hash": "h"},
                ip="10.0.1.2",
                owner=("ReplicaSet", "coredns-h"),
                ports=[ContainerPort(53, Protocol.UDP, "dns"), ContainerPort(53, Protocol.TCP)],
            )
        )
        services.append(
            Service(
                NamespaceName("kube-system"),
                "kube-dns",
                ("10.96.0.10",),
                Labels({"k8s-app": "kube-dns"}),
                (ServicePort(53, 53, Protocol.UDP), ServicePort(53, 53, Protocol.TCP)),
            )
        )
    policies = [
        draw(existing_policies(namespaces, f"p{i}")) for i in range(draw(st.integers(0, 4)))
    ]
    return Cluster.build(
        namespaces=[Namespace(NamespaceName(x)) for x in (*namespaces, "kube-system")],
        pods=pods,
        policies=policies,
        services=services,
        nodes=NODES,
        workload_objects=objects,
    )


def selectors() -> st.SearchStrategy[LabelSelector]:
    exprs = st.builds(
        Requirement,
        st.sampled_from(KEYS),
        st.sampled_from([Operator.IN, Operator.NOT_IN]),
        st.frozensets(st.sampled_from(VALUES), min_size=1, max_size=2),
    )
    return st.builds(
        lambda ml, ex: LabelSelector(tuple(sorted(ml.items())), tuple(ex)),
        st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=1),
        st.lists(exprs, max_size=1),
    )


PEERS = st.one_of(
    st.builds(Peer, pod_selector=selectors()),
    st.builds(Peer, namespace_selector=st.just(LabelSelector())),
    st.builds(Peer, pod_selector=selectors(), namespace_selector=st.just(LabelSelector())),
    st.sampled_from(["0.0.0.0/0", "10.0.0.0/16", "203.0.113.0/24", "10.1.0.0/24"]).map(
        lambda c: Peer(ip_block=IPBlock(ipaddress.ip_network(c)))
    ),
)
PORT_SPECS = st.one_of(
    st.builds(PortSpec, st.sampled_from(POLICY_PROTOCOLS)),
    st.builds(PortSpec, st.sampled_from(POLICY_PROTOCOLS), st.sampled_from(PORTS)),
    st.builds(PortSpec, st.just(Protocol.TCP), st.sampled_from(["http", "web"])),
    st.builds(PortSpec, st.just(Protocol.TCP), st.just(80), st.sampled_from([443, 8080])),
)
RULES = st.builds(
    Rule,
    peers=st.one_of(st.none(), st.lists(PEERS, min_size=1, max_size=2).map(tuple)),
    ports=st.lists(PORT_SPECS, max_size=2).map(tuple),
)


@st.composite
def existing_policies(draw: st.DrawFn, namespaces: Sequence[str], name: str) -> NetworkPolicy:
    egress = draw(st.lists(RULES, max_size=2))
    declared = draw(st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    return NetworkPolicy(
        namespace=NamespaceName(draw(st.sampled_from(namespaces))),
        name=name,
        pod_selector=draw(st.one_of(st.just(LabelSelector()), selectors())),
        policy_types=effective_policy_types(declared, has_egress_rules=bool(egress)),
        ingress=tuple(draw(st.lists(RULES, max_size=2))),
        egress=tuple(egress),
    )


@st.composite
def flows(draw: st.DrawFn, cluster: Cluster) -> list[Connection]:
    pod_ips = [p.ips[0] for p in cluster.pods]
    services = [ip for s in cluster.services for ip in s.cluster_ips]
    clients = [*pod_ips, "10.1.0.1", "10.1.0.2", *EXTERNAL]
    servers = [*pod_ips, *services, *EXTERNAL, "10.1.0.2"]
    out = []
    for i in range(draw(st.integers(1, 14))):
        protocol = draw(st.sampled_from([Protocol.TCP, Protocol.TCP, Protocol.UDP, Protocol.SCTP]))
        server = draw(st.sampled_from(servers))
        port = draw(st.sampled_from([*PORTS, 81] if server in services else PORTS))
        at = T0 + draw(st.integers(0, 3 * 86400))
        out.append(
            Connection(
                client_ip=draw(st.sampled_from(clients)),
                client_port=40000 + i,
                server_ip=server,
                server_port=port,
                protocol=protocol,
                first_seen=at,
                last_seen=at + 1,
            )
        )
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Cluster, list[Connection]]:
    cluster = draw(clusters())
    return cluster, draw(flows(cluster))


def _run(
    cluster: Cluster, conns: Sequence[Connection], mode: SuggestMode, include_denied: bool
) -> tuple[Attributor, Observations, Suggestion]:
    attributor = Attributor.from_cluster(cluster)
    observed = Observations(attributor.attribute(c) for c in conns)
    options = SuggestOptions(mode=mode, include_denied=include_denied, max_cidrs=2)
    return attributor, observed, suggest(observed, engine=attributor.engine, options=options)


def _reloaded(result: Suggestion, tmp: Path) -> tuple[NetworkPolicy, ...]:
    out = io.StringIO()
    dump_manifests([manifest(p) for p in result.policies], out)
    path = tmp / "suggested.yaml"
    path.write_text(out.getvalue())
    loaded = load_cluster([path]) if result.policies else None
    if loaded is None:
        return ()
    assert loaded.problems == ()
    return loaded.cluster.policies


# ----------------------------------------------------------------- properties


@SETTINGS
@given(scenarios(), st.booleans())
def test_replace_admits_every_connection_it_must(
    scenario: tuple[Cluster, list[Connection]], include_denied: bool
) -> None:
    cluster, conns = scenario
    attributor, observed, result = _run(cluster, conns, SuggestMode.REPLACE, include_denied)
    verification = check_policies(
        observed,
        attributor=attributor,
        policies=[p.policy for p in result.policies],
        replace=True,
        include_denied=include_denied,
    )
    assert verification.ok, [
        (d.observed.sample.client.key, d.observed.sample.server.key, d.observed.sample.port)
        for d in verification.denials
    ]


@SETTINGS
@given(scenarios(), st.sampled_from(list(SuggestMode)), st.booleans())
def test_printed_yaml_loads_back_and_whatif_reports_no_denials(
    tmp_path_factory: pytest.TempPathFactory,
    scenario: tuple[Cluster, list[Connection]],
    mode: SuggestMode,
    include_denied: bool,
) -> None:
    cluster, conns = scenario
    attributor, observed, result = _run(cluster, conns, mode, include_denied)
    tmp = tmp_path_factory.mktemp("suggest")
    reloaded = _reloaded(result, tmp)
    assert sorted(reloaded, key=lambda p: p.key) == sorted(
        (p.policy for p in result.policies), key=lambda p: p.key
    )
    report = whatif(
        observed,
        attributor=attributor,
        policies=reloaded,
        replace=mode is SuggestMode.REPLACE,
        include_denied=include_denied,
    )
    assert report.ok, report.denied


@SETTINGS
@given(scenarios(), st.booleans())
def test_add_never_removes_anything(
    scenario: tuple[Cluster, list[Connection]], include_denied: bool
) -> None:
    cluster, conns = scenario
    _, observed, result = _run(cluster, conns, SuggestMode.ADD, include_denied)
    after_cluster = with_policies(
        cluster, [*cluster.policies, *(p.policy for p in result.policies)]
    )
    after = Attributor.from_cluster(after_cluster)
    for obs in observed:
        if obs.verdict in (VerdictKind.ALLOWED, VerdictKind.UNRESTRICTED):
            assert after.attribute(obs.sample.connection).verdict is not VerdictKind.DENIED
    before_engine, after_engine = PolicyEngine(cluster), PolicyEngine(after_cluster)
    for protocol, port in {
        (o.sample.protocol, o.sample.port)
        for o in observed
        if o.sample.protocol in POLICY_PROTOCOLS
    }:
        old, new = before_engine.matrix(port, protocol), after_engine.matrix(port, protocol)
        assert old.pods == new.pods
        for row_old, row_new in zip(old.rows, new.rows, strict=True):
            assert all(n == "1" for o, n in zip(row_old, row_new, strict=True) if o == "1")


@SETTINGS
@given(scenarios())
def test_add_with_include_denied_allows_every_evaluated_connection(
    scenario: tuple[Cluster, list[Connection]],
) -> None:
    cluster, conns = scenario
    attributor, observed, result = _run(cluster, conns, SuggestMode.ADD, True)
    verification = check_policies(
        observed,
        attributor=attributor,
        policies=[p.policy for p in result.policies],
        replace=False,
        include_denied=True,
    )
    assert verification.ok


@SETTINGS
@given(scenarios(), st.randoms(use_true_random=False))
def test_output_does_not_depend_on_record_order(
    scenario: tuple[Cluster, list[Connection]], rnd: random.Random
) -> None:
    cluster, conns = scenario
    shuffled = list(conns)
    rnd.shuffle(shuffled)
    _, _, first = _run(cluster, conns, SuggestMode.REPLACE, True)
    _, _, again = _run(cluster, shuffled, SuggestMode.REPLACE, True)
    assert [manifest(p) for p in first.policies] == [manifest(p) for p in again.policies]
