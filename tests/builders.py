"""Terse constructors for core objects, so engine tests read like the YAML they stand for.

These build `netwatch.core` dataclasses directly (no YAML loader involved) and apply the
same normalization the loader does: policyTypes defaulting (DESIGN §3.1), `protocol`
defaulting to TCP (§3.3) and CIDRs parsed with host bits dropped (§3.6).

    policy("prod/api", sel(app="api"), ingress=[rule([peer(pods=sel(app="web"))], [port(80)])])
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from netwatch.core.cluster import Cluster
from netwatch.core.engine import IPBlockPodIPs, PolicyEngine, Target, Verdict
from netwatch.core.model import (
    ContainerPort,
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
    NetworkPolicy,
    Peer,
    PortSpec,
    Rule,
    effective_policy_types,
)
from netwatch.core.selectors import LabelSelector, Operator, Requirement

# ----------------------------------------------------------------- selectors


def expr(key: str, op: str, *values: str) -> Requirement:
    """A matchExpressions entry: `expr("tier", "NotIn", "db")`."""
    return Requirement(key, Operator(op), frozenset(values))


def sel(*exprs: Requirement, **match_labels: str) -> LabelSelector:
    """A label selector: `sel(app="web")`, `sel(expr("tier", "Exists"))`, `sel()` is `{}`."""
    return LabelSelector(tuple(sorted(match_labels.items())), tuple(exprs))


def sel_labels(match_labels: Mapping[str, str], *exprs: Requirement) -> LabelSelector:
    """Like `sel` for keys that are not Python identifiers (`kubernetes.io/metadata.name`)."""
    return LabelSelector(tuple(sorted(match_labels.items())), tuple(exprs))


# ----------------------------------------------------------------- objects


def ns(name: str, **labels: str) -> Namespace:
    return Namespace(NamespaceName(name), Labels(labels))


def cport(name: str, port: int, protocol: str = "TCP") -> ContainerPort:
    return ContainerPort(port=port, protocol=Protocol(protocol), name=name)


def pod(
    key: str,
    labels: Mapping[str, str] | None = None,
    *,
    ip: str | None = None,
    ips: Sequence[str] | None = None,
    node: str | None = "n1",
    host_network: bool = False,
    host_ip: str | None = None,
    ports: Iterable[ContainerPort] = (),
    phase: PodPhase = PodPhase.RUNNING,
) -> Pod:
    """A pod `namespace/name`; `ip=` sets a single pod IP, `ips=` several (primary first)."""
    namespace, _, name = key.partition("/")
    addresses = tuple(ips) if ips is not None else ((ip,) if ip else ())
    return Pod(
        namespace=NamespaceName(namespace),
        name=PodName(name),
        uid=Uid(f"uid-{namespace}-{name}"),
        labels=Labels(labels or {}),
        node_name=NodeName(node) if node else None,
        host_network=host_network,
        ips=addresses,
        host_ip=host_ip,
        phase=phase,
        container_ports=tuple(ports),
    )


def node(name: str, *addresses: str) -> Node:
    return Node(NodeName(name), tuple(addresses))


# ----------------------------------------------------------------- policies


def ipblock(cidr: str, *excepts: str) -> IPBlock:
    """Host bits are dropped as the loader does (`10.0.0.7/24` is `10.0.0.0/24`)."""
    return IPBlock(
        ipaddress.ip_network(cidr, strict=False),
        tuple(ipaddress.ip_network(e, strict=False) for e in excepts),
    )


def peer(*, pods: LabelSelector | None = None, namespaces: LabelSelector | None = None) -> Peer:
    """A selector peer: `pods=` only, `namespaces=` only, or both (AND-ed, §3.4)."""
    return Peer(pod_selector=pods, namespace_selector=namespaces)


def ip_peer(cidr: str, *excepts: str) -> Peer:
    return Peer(ip_block=ipblock(cidr, *excepts))


def port(
    number: int | str | None = None, protocol: str = "TCP", *, end: int | None = None
) -> PortSpec:
    """A `ports` entry; protocol defaults to TCP like the API server; `port()` is `{}`."""
    return PortSpec(protocol=Protocol(protocol), port=number, end_port=end)


def rule(peers: Sequence[Peer] | None = None, ports: Sequence[PortSpec] = ()) -> Rule:
    """`rule()` is `{}`: every peer (IPs included), every port and protocol.

    `rule([])` is `from: []`, which means every peer too (§3.3): it becomes `peers=None`
    as in the loader, because `Rule(peers=())` would admit no peer at all.
    """
    return Rule(peers=tuple(peers) if peers else None, ports=tuple(ports))


def policy(
    key: str,
    selector: LabelSelector | None = None,
    *,
    ingress: Sequence[Rule] | None = None,
    egress: Sequence[Rule] | None = None,
    types: Sequence[str] | None = None,
) -> NetworkPolicy:
    """A NetworkPolicy as the loader would produce it.

    `types=None` means `policyTypes` omitted: effective types are defaulted from the rule
    lists exactly like the API server (§3.1; `egress=[]` does not add Egress).
    """
    namespace, _, name = key.partition("/")
    return NetworkPolicy(
        namespace=NamespaceName(namespace),
        name=name,
        pod_selector=selector if selector is not None else sel(),
        policy_types=effective_policy_types(
            list(types) if types is not None else None, has_egress_rules=bool(egress)
        ),
        ingress=tuple(ingress or ()),
        egress=tuple(egress or ()),
    )


def deny_all(key: str, selector: LabelSelector | None = None) -> NetworkPolicy:
    """Both directions isolated, no rules."""
    return policy(key, selector, types=["Ingress", "Egress"])


# ----------------------------------------------------------------- evaluation


def engine(
    *,
    pods: Iterable[Pod] = (),
    policies: Iterable[NetworkPolicy] = (),
    namespaces: Iterable[Namespace] = (),
    nodes: Iterable[Node] = (),
    ipblock_pod_ips: IPBlockPodIPs = IPBlockPodIPs.MATCH,
) -> PolicyEngine:
    cluster = Cluster.build(namespaces=namespaces, pods=pods, policies=policies, nodes=nodes)
    return PolicyEngine(cluster, ipblock_pod_ips=ipblock_pod_ips)


def target(eng: PolicyEngine, ref: str) -> Target:
    """`ns/pod` → that pod (hostNetwork pods become node traffic); anything else is an IP."""
    if "/" in ref:
        found = eng.cluster.pod(ref)
        if found is None:
            raise KeyError(ref)
        return eng.target_for_pod(found)
    return eng.target_for_ip(ipaddress.ip_address(ref))


def verdict(eng: PolicyEngine, src: str, dst: str, port: int, protocol: str = "TCP") -> Verdict:
    return eng.evaluate(target(eng, src), target(eng, dst), port, Protocol(protocol))
