"""Properties of the NetworkPolicy engine over random small clusters (hypothesis).

Clusters have 2-3 namespaces and 2-8 pods with random labels, named container ports and
IPs in 10.0.0.0/16 (a few dual-stack, hostNetwork, terminal or IP-less pods mixed in);
policies have random selectors (expressions included), peers of every kind (ipBlocks with
excepts), ports of every kind (named, ranges, protocol-only) and random policyTypes.

Besides the engine's own two paths (`matrix` vs `evaluate`), verdicts — reasons and
exemptions included — are compared to `reference_verdict`, a deliberately naive per-pair
transcription of DESIGN §3. The remaining properties are the algebra of policies:
additivity (a rule only adds), isolation (a rule-less policy only removes, and only for
the pods it selects), unselected pods are open, input order is irrelevant, and
`--ipblock-pod-ips ignore` never admits more pod pairs than `match`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netwatch.core.cluster import NAMESPACE_NAME_LABEL, Cluster
from netwatch.core.engine import (
    Exemption,
    IPBlockPodIPs,
    PolicyEngine,
    RuleRef,
    SideVerdict,
    Target,
    Verdict,
)
from netwatch.core.model import (
    POLICY_PROTOCOLS,
    ContainerPort,
    Direction,
    Labels,
    Namespace,
    NamespaceName,
    Node,
    NodeName,
    Pod,
    PodName,
    PodPhase,
    Protocol,
    Uid,
)
from netwatch.core.policy import (
    IPBlock,
    IPNetwork,
    NetworkPolicy,
    Peer,
    PortSpec,
    Rule,
    effective_policy_types,
)
from netwatch.core.selectors import LabelSelector, Operator, Requirement

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NS_NAMES = ("ns0", "ns1", "ns2")
POD_KEYS = ("app", "tier", "env")
NS_KEYS = ("team", "env")
VALUES = ("a", "b")
PORT_NAMES = ("http", "dns")
PORT_NUMBERS = (53, 80, 8080)
QUERY_PORTS = (*PORT_NUMBERS, 81, 443)
NODES = (
    Node(NodeName("n0"), ("10.1.0.1",)),
    Node(NodeName("n1"), ("10.1.0.2",)),
)
NODE_IP = {"n0": "10.1.0.1", "n1": "10.1.0.2"}
EXTRA_IPS = ("203.0.113.7", "10.1.0.1", "10.1.0.2", "10.0.3.250", "10.0.0.10")
"""External, both node IPs, an unowned address in the pod range, a maybe-owned one."""
CIDRS = (
    "0.0.0.0/0",
    "10.0.0.0/16",
    "10.0.0.0/22",
    "10.0.0.0/24",
    "10.0.1.0/24",
    "10.0.2.0/23",
    "10.1.0.0/24",
    "203.0.113.0/24",
)


# ----------------------------------------------------------------- strategies


def requirements(keys: Sequence[str], values: Sequence[str]) -> st.SearchStrategy[Requirement]:
    with_values = st.builds(
        Requirement,
        st.sampled_from(keys),
        st.sampled_from([Operator.IN, Operator.NOT_IN]),
        st.frozensets(st.sampled_from(values), min_size=1, max_size=2),
    )
    without_values = st.builds(
        Requirement,
        st.sampled_from(keys),
        st.sampled_from([Operator.EXISTS, Operator.DOES_NOT_EXIST]),
        st.just(frozenset()),
    )
    return st.one_of(with_values, without_values)


def selectors(keys: Sequence[str], values: Sequence[str]) -> st.SearchStrategy[LabelSelector]:
    return st.builds(
        lambda ml, ex: LabelSelector(tuple(sorted(ml.items())), tuple(ex)),
        st.dictionaries(st.sampled_from(keys), st.sampled_from(values), max_size=1),
        st.lists(requirements(keys, values), max_size=2),
    )


POD_SELECTORS = selectors(POD_KEYS, VALUES)
NS_SELECTORS = st.one_of(
    selectors(NS_KEYS, VALUES),
    st.sampled_from(NS_NAMES).map(
        lambda n: LabelSelector(((NAMESPACE_NAME_LABEL, n),))
    ),  # the label Cluster.build adds
)


@st.composite
def ip_blocks(draw: st.DrawFn) -> IPBlock:
    cidr = ipaddress.IPv4Network(draw(st.sampled_from(CIDRS)))
    excepts: list[IPNetwork] = []
    for _ in range(draw(st.integers(0, 2))):
        extra = draw(st.integers(1, min(10, 32 - cidr.prefixlen)))
        index = draw(st.integers(0, 2**extra - 1))
        size = 2 ** (32 - cidr.prefixlen - extra)
        base = int(cidr.network_address) + index * size
        excepts.append(ipaddress.IPv4Network((base, cidr.prefixlen + extra)))
    return IPBlock(cidr, tuple(excepts))


PEERS = st.one_of(
    st.builds(Peer, pod_selector=POD_SELECTORS),
    st.builds(Peer, namespace_selector=NS_SELECTORS),
    st.builds(Peer, pod_selector=POD_SELECTORS, namespace_selector=NS_SELECTORS),
    st.builds(Peer, ip_block=ip_blocks()),
)

PROTOCOLS = st.sampled_from(POLICY_PROTOCOLS)


@st.composite
def port_specs(draw: st.DrawFn) -> PortSpec:
    protocol = draw(st.sampled_from([Protocol.TCP, Protocol.TCP, Protocol.UDP, Protocol.SCTP]))
    kind = draw(st.sampled_from(["any", "number", "name", "name", "range"]))
    if kind == "any":
        return PortSpec(protocol)
    if kind == "name":
        return PortSpec(protocol, draw(st.sampled_from(PORT_NAMES)))
    number = draw(st.sampled_from(PORT_NUMBERS))
    if kind == "number":
        return PortSpec(protocol, number)
    # Range ends on query ports, so both inclusive bounds are exercised.
    ends = sorted({q for q in QUERY_PORTS if q >= number} | {number + 1000})
    return PortSpec(protocol, number, draw(st.sampled_from(ends)))


RULES = st.builds(
    Rule,
    peers=st.one_of(st.none(), st.lists(PEERS, min_size=1, max_size=3).map(tuple)),
    ports=st.lists(port_specs(), max_size=3).map(tuple),
)
DECLARED_TYPES = st.sampled_from(
    [None, ["Ingress"], ["Egress"], ["Ingress", "Egress"], ["Egress", "Ingress"]]
)


@st.composite
def policies(draw: st.DrawFn, namespaces: Sequence[str], name: str) -> NetworkPolicy:
    ingress = draw(st.lists(RULES, max_size=2))
    egress = draw(st.lists(RULES, max_size=2))
    declared = draw(DECLARED_TYPES)
    return NetworkPolicy(
        namespace=NamespaceName(draw(st.sampled_from(namespaces))),
        name=name,
        pod_selector=draw(st.one_of(st.just(LabelSelector()), POD_SELECTORS)),
        policy_types=effective_policy_types(declared, has_egress_rules=bool(egress)),
        ingress=tuple(ingress),
        egress=tuple(egress),
    )


@st.composite
def pods(draw: st.DrawFn, namespaces: Sequence[str], index: int) -> Pod:
    namespace = draw(st.sampled_from(namespaces))
    node = draw(st.sampled_from(["n0", "n1"]))
    kind = draw(st.sampled_from(["normal"] * 7 + ["dual-stack", "hostnet", "terminal", "no-ip"]))
    ips: tuple[str, ...] = (f"10.0.{draw(st.integers(0, 3))}.{10 + index}",)
    host_ip = NODE_IP[node]
    if kind == "dual-stack":  # ipBlocks are IPv4 here: only the primary address can match
        ips = (*ips, f"fd00::{10 + index:x}")
    elif kind == "hostnet":
        ips = (host_ip,)
    elif kind == "no-ip":
        ips = ()
    ports = draw(
        st.lists(
            st.builds(
                ContainerPort,
                port=st.sampled_from(PORT_NUMBERS),
                protocol=st.sampled_from([Protocol.TCP, Protocol.UDP]),
                name=st.sampled_from(PORT_NAMES),
            ),
            max_size=3,
        )
    )
    return Pod(
        namespace=NamespaceName(namespace),
        name=PodName(f"p{index}"),
        uid=Uid(f"uid-{index}"),
        labels=Labels(
            draw(st.dictionaries(st.sampled_from(POD_KEYS), st.sampled_from(VALUES), min_size=1))
        ),
        node_name=NodeName(node),
        host_network=kind == "hostnet",
        ips=ips,
        host_ip=host_ip,
        phase=PodPhase.SUCCEEDED if kind == "terminal" else PodPhase.RUNNING,
        container_ports=tuple(ports),
    )


@dataclasses.dataclass(frozen=True)
class World:
    namespaces: tuple[Namespace, ...]
    pods: tuple[Pod, ...]
    policies: tuple[NetworkPolicy, ...]

    def engine(
        self,
        policies: Sequence[NetworkPolicy] | None = None,
        mode: IPBlockPodIPs = IPBlockPodIPs.MATCH,
    ) -> PolicyEngine:
        cluster = Cluster.build(
            namespaces=self.namespaces,
            pods=self.pods,
            policies=self.policies if policies is None else policies,
            nodes=NODES,
        )
        return PolicyEngine(cluster, ipblock_pod_ips=mode)


@st.composite
def worlds(draw: st.DrawFn, min_policies: int = 0, max_policies: int = 4) -> World:
    names = NS_NAMES[: draw(st.integers(2, 3))]
    namespaces = tuple(
        Namespace(
            NamespaceName(n),
            Labels(draw(st.dictionaries(st.sampled_from(NS_KEYS), st.sampled_from(VALUES)))),
        )
        for n in names
    )
    pod_list = tuple(draw(pods(names, i)) for i in range(draw(st.integers(2, 8))))
    count = draw(st.integers(min_policies, max_policies))
    pol_list = tuple(draw(policies(names, f"pol{i}")) for i in range(count))
    return World(namespaces, pod_list, pol_list)


QUERIES = st.tuples(st.sampled_from(QUERY_PORTS), PROTOCOLS)


# ----------------------------------------------------------------- helpers


def targets(eng: PolicyEngine) -> list[Target]:
    """Every live pod (hostNetwork ones as node traffic) plus a few bare addresses."""
    found = [eng.target_for_pod(p) for p in eng.cluster.pods if not p.phase.terminal]
    found += [eng.target_for_ip(ipaddress.ip_address(a)) for a in EXTRA_IPS]
    return found


def selectable(pod: Pod) -> bool:
    """§3.7: hostNetwork pods are node traffic; terminal pods are gone (DESIGN §2)."""
    return not pod.host_network and not pod.phase.terminal


def selects(policy: NetworkPolicy, pod: Pod) -> bool:
    """§3.1, written out independently of the engine."""
    return (
        selectable(pod)
        and pod.namespace == policy.namespace
        and policy.pod_selector.matches(pod.labels)
    )


def reference_side(
    *,
    cluster: Cluster,
    direction: Direction,
    subject: Pod | None,
    other: Target,
    dst: Pod | None,
    port: int,
    protocol: Protocol,
    mode: IPBlockPodIPs,
) -> SideVerdict:
    """One side of §3.2, by the letter of §3.1-§3.6, one policy and rule at a time."""
    if subject is None or subject.host_network or subject.phase.terminal:
        return SideVerdict(isolated=False)
    isolating = sorted(
        (p for p in cluster.policies if selects(p, subject) and direction in p.policy_types),
        key=lambda p: (p.namespace, p.name),
    )
    if not isolating:
        return SideVerdict(isolated=False)
    other_pod = other.pod if other.pod is not None and selectable(other.pod) else None

    def peer_ok(policy: NetworkPolicy, peer: Peer) -> bool:
        if peer.ip_block is not None:
            if other.ip is None or (other_pod is not None and mode is IPBlockPodIPs.IGNORE):
                return False
            block = peer.ip_block
            return (
                other.ip.version == block.cidr.version
                and other.ip in block.cidr
                and not any(other.ip in ex for ex in block.excepts)
            )
        if other_pod is None:
            return False
        if peer.namespace_selector is None:
            in_ns = other_pod.namespace == policy.namespace
        else:
            in_ns = peer.namespace_selector.matches(cluster.namespace_labels(other_pod.namespace))
        return in_ns and (peer.pod_selector is None or peer.pod_selector.matches(other_pod.labels))

    def port_ok(spec: PortSpec) -> bool:
        if spec.protocol is not protocol:
            return False
        if spec.port is None:
            return True
        if isinstance(spec.port, str):
            return dst is not None and any(
                cp.name == spec.port and cp.protocol is protocol and cp.port == port
                for cp in dst.container_ports
            )
        return spec.port <= port <= (spec.end_port or spec.port)

    allowed_by = tuple(
        RuleRef(policy.key, direction, n)
        for policy in isolating
        for n, r in enumerate(policy.rules(direction))
        if (r.peers is None or any(peer_ok(policy, p) for p in r.peers))
        and (not r.ports or any(port_ok(s) for s in r.ports))
    )
    return SideVerdict(
        isolated=True, allowed_by=allowed_by, isolated_by=tuple(p.key for p in isolating)
    )


def reference_verdict(
    eng: PolicyEngine, client: Target, server: Target, port: int, protocol: Protocol
) -> Verdict:
    """The verdict `evaluate` must return, reasons and exemptions included."""
    egress = reference_side(
        cluster=eng.cluster,
        direction=Direction.EGRESS,
        subject=client.pod,
        other=server,
        dst=server.pod,
        port=port,
        protocol=protocol,
        mode=eng.ipblock_pod_ips,
    )
    ingress = reference_side(
        cluster=eng.cluster,
        direction=Direction.INGRESS,
        subject=server.pod,
        other=client,
        dst=server.pod,
        port=port,
        protocol=protocol,
        mode=eng.ipblock_pod_ips,
    )
    if client.pod is not None and server.pod is not None and client.pod.key == server.pod.key:
        # §3.7: a pod cannot block itself.
        egress = dataclasses.replace(egress, exempt=Exemption.LOOPBACK)
        ingress = dataclasses.replace(ingress, exempt=Exemption.LOOPBACK)
    elif (
        server.pod is not None
        and client.pod is None
        and client.node is not None
        and client.node == server.pod.node_name
    ):
        # §3.7: traffic from the server's own node.
        ingress = dataclasses.replace(ingress, exempt=Exemption.NODE_LOCAL)
    return Verdict(egress=egress, ingress=ingress)


# ----------------------------------------------------------------- properties


@PROPERTY_SETTINGS
@given(world=worlds(), query=QUERIES, mode=st.sampled_from(IPBlockPodIPs))
def test_matrix_agrees_with_evaluate_pair_by_pair(
    world: World, query: tuple[int, Protocol], mode: IPBlockPodIPs
) -> None:
    port, protocol = query
    eng = world.engine(mode=mode)
    m = eng.matrix(port, protocol)
    listed = [p for p in world.pods if selectable(p) and p.ips]
    assert [p.key for p in m.pods] == [
        p.key for p in sorted(listed, key=lambda p: (p.namespace, p.name))
    ]
    for i, a in enumerate(m.pods):
        for j, b in enumerate(m.pods):
            v = eng.evaluate(eng.target_for_pod(a), eng.target_for_pod(b), port, protocol)
            assert m.allowed(i, j) is v.allowed, (a.key, b.key, v)


@settings(PROPERTY_SETTINGS, max_examples=300)  # the strongest oracle: worth more examples
@given(world=worlds(), query=QUERIES, mode=st.sampled_from(IPBlockPodIPs))
def test_evaluate_agrees_with_a_naive_reading_of_the_rules(
    world: World, query: tuple[int, Protocol], mode: IPBlockPodIPs
) -> None:
    """Verdict, isolation, every admitting rule (in order) and exemptions all agree."""
    port, protocol = query
    eng = world.engine(mode=mode)
    everyone = targets(eng)
    for client in everyone:
        for server in everyone:
            v = eng.evaluate(client, server, port, protocol)
            expected = reference_verdict(eng, client, server, port, protocol)
            assert v == expected, (client.describe(), server.describe())


@PROPERTY_SETTINGS
@given(world=worlds(max_policies=0))
def test_addresses_resolve_to_nodes_then_live_pods(world: World) -> None:
    eng = world.engine()
    live = sorted(
        (p for p in world.pods if not p.phase.terminal), key=lambda p: (p.namespace, p.name)
    )
    for pod in world.pods:
        for address in pod.ips:
            t = eng.target_for_ip(ipaddress.ip_address(address))
            assert t.ip == ipaddress.ip_address(address)
            owner = next((p for p in live if address in p.ips), None)
            if address in NODE_IP.values():
                assert t.pod is None
                assert t.node == next(n for n, a in NODE_IP.items() if a == address)
            elif owner is None:  # only a terminal pod had it: just an address now
                assert t == Target(ip=ipaddress.ip_address(address))
            elif owner.host_network:
                assert t.pod is None
                assert t.node == owner.node_name
            else:
                assert t.pod == owner
                assert t.node == owner.node_name


@PROPERTY_SETTINGS
@given(
    world=worlds(min_policies=1),
    extra=RULES,
    which=st.integers(0, 3),
    direction=st.sampled_from(Direction),
    query=QUERIES,
)
def test_adding_a_rule_never_removes_an_allowed_connection(
    world: World, extra: Rule, which: int, direction: Direction, query: tuple[int, Protocol]
) -> None:
    # The policy's effective policyTypes stay fixed: appending an egress rule to a policy
    # whose omitted policyTypes were defaulted without Egress would isolate it (§3.1).
    port, protocol = query
    index = which % len(world.policies)
    old = world.policies[index]
    field = "ingress" if direction is Direction.INGRESS else "egress"
    new = dataclasses.replace(old, **{field: (*old.rules(direction), extra)})
    before = world.engine()
    after = world.engine([*world.policies[:index], new, *world.policies[index + 1 :]])
    everyone = targets(before)
    for client in everyone:
        for server in everyone:
            b = before.evaluate(client, server, port, protocol)
            a = after.evaluate(client, server, port, protocol)
            if b.allowed:
                assert a.allowed, (client.describe(), server.describe(), b, a)
            # Reasons only grow, and existing rule indexes keep their meaning.
            assert set(b.ingress.allowed_by) <= set(a.ingress.allowed_by)
            assert set(b.egress.allowed_by) <= set(a.egress.allowed_by)
            assert a.ingress.isolated is b.ingress.isolated
            assert a.egress.isolated is b.egress.isolated


@PROPERTY_SETTINGS
@given(
    world=worlds(),
    selector=POD_SELECTORS,
    namespace=st.sampled_from(NS_NAMES[:2]),
    declared=DECLARED_TYPES,
    query=QUERIES,
    mode=st.sampled_from(IPBlockPodIPs),
)
def test_adding_a_policy_without_rules_only_isolates_the_pods_it_selects(
    world: World,
    selector: LabelSelector,
    namespace: str,
    declared: list[str] | None,
    query: tuple[int, Protocol],
    mode: IPBlockPodIPs,
) -> None:
    """A rule-less policy never adds a connection, and removes only connections whose
    client it selects (when it has Egress) or whose server it selects (Ingress), and
    only where that side was not isolated for that direction before."""
    port, protocol = query
    new = NetworkPolicy(
        namespace=NamespaceName(namespace),
        name="zz-new",
        pod_selector=selector,
        policy_types=effective_policy_types(declared, has_egress_rules=False),
    )
    before = world.engine(mode=mode)
    after = world.engine([*world.policies, new], mode=mode)
    everyone = targets(before)
    for client in everyone:
        for server in everyone:
            b = before.evaluate(client, server, port, protocol)
            a = after.evaluate(client, server, port, protocol)
            assert not (a.allowed and not b.allowed)
            newly_egress = (
                Direction.EGRESS in new.policy_types
                and client.pod is not None
                and selects(new, client.pod)
                and not b.egress.isolated
            )
            newly_ingress = (
                Direction.INGRESS in new.policy_types
                and server.pod is not None
                and selects(new, server.pod)
                and not b.ingress.isolated
            )
            if b.allowed and not a.allowed:
                assert newly_egress or newly_ingress, (client.describe(), server.describe())
            if not newly_egress and not newly_ingress:
                assert a.allowed is b.allowed
                assert a.egress.allowed_by == b.egress.allowed_by
                assert a.ingress.allowed_by == b.ingress.allowed_by


@PROPERTY_SETTINGS
@given(world=worlds(), query=QUERIES, mode=st.sampled_from(IPBlockPodIPs))
def test_pod_selected_by_no_policy_allows_everything_both_ways(
    world: World, query: tuple[int, Protocol], mode: IPBlockPodIPs
) -> None:
    port, protocol = query
    eng = world.engine(mode=mode)
    everyone = targets(eng)
    for pod in eng.cluster.pods:
        if pod.phase.terminal or any(selects(p, pod) for p in eng.cluster.policies):
            continue
        me = eng.target_for_pod(pod)
        for other in everyone:
            out = eng.evaluate(me, other, port, protocol)
            assert not out.egress.isolated
            assert out.egress.allowed
            assert out.egress.allowed_by == ()
            into = eng.evaluate(other, me, port, protocol)
            assert not into.ingress.isolated
            assert into.ingress.allowed
            assert into.ingress.allowed_by == ()


@PROPERTY_SETTINGS
@given(world=worlds(min_policies=2), data=st.data(), query=QUERIES)
def test_verdicts_do_not_depend_on_policy_order(
    world: World, data: st.DataObject, query: tuple[int, Protocol]
) -> None:
    port, protocol = query
    shuffled = data.draw(st.permutations(world.policies))
    first, second = world.engine(), world.engine(shuffled)
    assert first.matrix(port, protocol) == second.matrix(port, protocol)
    everyone = targets(first)
    for client in everyone:
        for server in everyone:
            assert first.evaluate(client, server, port, protocol) == second.evaluate(
                client, server, port, protocol
            )


@PROPERTY_SETTINGS
@given(world=worlds(), query=QUERIES)
def test_ignoring_pod_ips_in_ipblocks_never_allows_more_pod_pairs(
    world: World, query: tuple[int, Protocol]
) -> None:
    port, protocol = query
    match = world.engine(mode=IPBlockPodIPs.MATCH).matrix(port, protocol)
    ignore = world.engine(mode=IPBlockPodIPs.IGNORE).matrix(port, protocol)
    assert match.pods == ignore.pods
    for row_match, row_ignore in zip(match.rows, ignore.rows, strict=True):
        for m, i in zip(row_match, row_ignore, strict=True):
            assert not (i == "1" and m == "0")
