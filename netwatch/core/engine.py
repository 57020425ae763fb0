"""The NetworkPolicy engine: exact networking.k8s.io/v1 verdicts, with reasons.

Set-based: every selector's pod set is computed once per cluster (as a bitset over a
pod index) and rules are combined as set operations, so a full matrix is a handful of
big-int operations per policy rather than a rescan of all policies per pair. Single
evaluations (`evaluate`) return which policy/direction/rule admitted each side, which is
what unused-rule, redundancy and hit accounting are built on (cyclonus' matcher idea).

The numbered rules of DESIGN §3 are cited at the decision points.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import defaultdict
from dataclasses import dataclass

from netwatch.core.bitset import Bits, bit_string, has, iter_bits
from netwatch.core.cluster import Cluster
from netwatch.core.model import POLICY_PROTOCOLS, Direction, NamespaceName, Pod, Protocol
from netwatch.core.policy import IPAddress, NetworkPolicy, Peer, PolicyKey, PortSpec, Rule
from netwatch.core.selectors import LabelSelector, Operator


class IPBlockPodIPs(enum.Enum):
    """§3.6: whether ipBlock peers also match pod IPs (CNI-defined)."""

    MATCH = "match"
    """Upstream e2e and Calico: an ipBlock covering a pod IP admits that pod."""
    IGNORE = "ignore"
    """Cilium: ipBlocks only ever match traffic from outside the cluster's pods."""


class Exemption(enum.Enum):
    """Traffic that no policy can block (§3.7)."""

    LOOPBACK = "loopback"
    NODE_LOCAL = "node-local"


@dataclass(frozen=True, slots=True, order=True)
class RuleRef:
    """A rule by position: `spec.ingress[2]` of `shop/api` is (shop/api, ingress, 2)."""

    policy: PolicyKey
    direction: Direction
    rule: int

    def __str__(self) -> str:
        return f"{self.policy} {self.direction.value}[{self.rule}]"


@dataclass(frozen=True, slots=True)
class SideVerdict:
    """One side's decision: is the pod isolated, and which rules admit the connection."""

    isolated: bool
    allowed_by: tuple[RuleRef, ...] = ()
    isolated_by: tuple[PolicyKey, ...] = ()
    exempt: Exemption | None = None

    @property
    def allowed(self) -> bool:
        return self.exempt is not None or not self.isolated or bool(self.allowed_by)


@dataclass(frozen=True, slots=True)
class Verdict:
    egress: SideVerdict
    ingress: SideVerdict

    @property
    def allowed(self) -> bool:
        # §3.2: allowed iff the client side allows egress AND the server side ingress.
        return self.egress.allowed and self.ingress.allowed


@dataclass(frozen=True, slots=True)
class Target:
    """One end of a connection: a selectable pod, or an IP (node, hostNetwork pod, world)."""

    pod: Pod | None = None
    ip: IPAddress | None = None
    node: str | None = None
    """The node this end runs on or is (for the node-local exemption, §3.7)."""

    def describe(self) -> str:
        if self.pod is not None:
            return self.pod.key
        return str(self.ip) if self.ip is not None else "?"


@dataclass(frozen=True)
class Matrix:
    """Allowed pairs for one port/protocol; `rows[i][j] == '1'` means pods[i] → pods[j]."""

    port: int
    protocol: Protocol
    pods: tuple[Pod, ...]
    rows: tuple[str, ...]

    def allowed(self, src: int, dst: int) -> bool:
        return self.rows[src][dst] == "1"


def parse_ip(text: str | None) -> IPAddress | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class PolicyEngine:
    """Evaluates connections against one immutable `Cluster`.

    Construction indexes pods and labels; selector results are memoized, so repeated
    evaluations (a matrix, a million flows) only pay for set operations.
    """

    def __init__(
        self, cluster: Cluster, *, ipblock_pod_ips: IPBlockPodIPs = IPBlockPodIPs.MATCH
    ) -> None:
        self.cluster = cluster
        self.ipblock_pod_ips = ipblock_pod_ips
        # §3.7: hostNetwork pods are never selected; terminal pods own nothing any more.
        self.pods: tuple[Pod, ...] = tuple(
            p for p in cluster.pods if p.policy_target and not p.phase.terminal
        )
        self.index: dict[str, int] = {p.key: i for i, p in enumerate(self.pods)}
        self.all: Bits = (1 << len(self.pods)) - 1
        self._ns_bits: dict[NamespaceName, Bits] = defaultdict(int)
        self._kv_bits: dict[tuple[str, str], Bits] = defaultdict(int)
        self._key_bits: dict[str, Bits] = defaultdict(int)
        self._named: dict[tuple[str, Protocol, int], Bits] = defaultdict(int)
        self._primary: list[IPAddress | None] = []
        for i, pod in enumerate(self.pods):
            bit = 1 << i
            self._ns_bits[pod.namespace] |= bit
            for k, v in pod.labels.items():
                self._kv_bits[(k, v)] |= bit
                self._key_bits[k] |= bit
            for cp in pod.container_ports:
                if cp.name:
                    self._named[(cp.name, cp.protocol, cp.port)] |= bit
            self._primary.append(parse_ip(pod.primary_ip))
        self._node_ips: dict[IPAddress, str] = {}
        for node in cluster.nodes:
            for addr in node.addresses:
                ip = parse_ip(addr)
                if ip is not None:
                    self._node_ips[ip] = node.name
        self._pod_by_ip: dict[IPAddress, Pod] = {}
        for pod in cluster.pods:
            if pod.phase.terminal:
                continue
            for addr in pod.ips:
                ip = parse_ip(addr)
                if ip is not None and ip not in self._node_ips:
                    self._pod_by_ip.setdefault(ip, pod)
        self._sel_cache: dict[tuple[LabelSelector, NamespaceName | None], Bits] = {}
        self._nssel_cache: dict[LabelSelector, Bits] = {}
        self._peer_cache: dict[tuple[Peer, NamespaceName], Bits] = {}
        self._policy_sel: dict[PolicyKey, Bits] = {}
        self._selecting: dict[tuple[int, Direction], tuple[NetworkPolicy, ...]] = {}

    # ----------------------------------------------------------------- selection

    def select_pods(self, selector: LabelSelector, namespace: NamespaceName | None) -> Bits:
        """Pods matching `selector`, within `namespace` (None: in every namespace)."""
        key = (selector, namespace)
        cached = self._sel_cache.get(key)
        if cached is not None:
            return cached
        bits = self.all if namespace is None else self._ns_bits.get(namespace, 0)
        # §3.4: matchLabels and matchExpressions are AND-ed; {} matches everything.
        for k, v in selector.match_labels:
            bits &= self._kv_bits.get((k, v), 0)
        for req in selector.match_expressions:
            in_any = 0
            for v in req.values:
                in_any |= self._kv_bits.get((req.key, v), 0)
            match req.operator:
                case Operator.IN:
                    bits &= in_any
                case Operator.NOT_IN:  # matches pods lacking the key too
                    bits &= ~in_any
                case Operator.EXISTS:
                    bits &= self._key_bits.get(req.key, 0)
                case Operator.DOES_NOT_EXIST:
                    bits &= ~self._key_bits.get(req.key, 0)
        bits &= self.all
        self._sel_cache[key] = bits
        return bits

    def select_namespaces(self, selector: LabelSelector) -> Bits:
        """All pods in the namespaces whose labels match `selector`."""
        cached = self._nssel_cache.get(selector)
        if cached is not None:
            return cached
        bits = 0
        for name in self._ns_bits:
            if selector.matches(self.cluster.namespace_labels(name)):
                bits |= self._ns_bits[name]
        self._nssel_cache[selector] = bits
        return bits

    def policy_pods(self, policy: NetworkPolicy) -> Bits:
        """Pods the policy's `spec.podSelector` selects (in its own namespace)."""
        bits = self._policy_sel.get(policy.key)
        if bits is None:
            bits = self.select_pods(policy.pod_selector, policy.namespace)
            self._policy_sel[policy.key] = bits
        return bits

    def peer_pods(self, peer: Peer, policy_namespace: NamespaceName) -> Bits:
        """Pods a peer admits by selector, or by ipBlock on their primary IP (§3.4, §3.6)."""
        key = (peer, policy_namespace)
        cached = self._peer_cache.get(key)
        if cached is not None:
            return cached
        if peer.ip_block is not None:
            bits = 0
            if self.ipblock_pod_ips is IPBlockPodIPs.MATCH:
                block = peer.ip_block
                for i, ip in enumerate(self._primary):
                    if ip is not None and block.contains(ip):
                        bits |= 1 << i
        elif peer.namespace_selector is None:
            # §3.4: podSelector alone → pods in the policy's namespace.
            bits = self.select_pods(peer.pod_selector or LabelSelector(), policy_namespace)
        else:
            # §3.4: namespaceSelector (AND podSelector when both are in one peer).
            bits = self.select_namespaces(peer.namespace_selector)
            if peer.pod_selector is not None:
                bits &= self.select_pods(peer.pod_selector, None)
        self._peer_cache[key] = bits
        return bits

    def rule_peer_pods(self, rule: Rule, policy_namespace: NamespaceName) -> Bits:
        """Pods a rule's peer list admits (§3.3: absent/empty → all; §3.4: peers OR-ed)."""
        if rule.peers is None:
            return self.all
        bits = 0
        for peer in rule.peers:
            bits |= self.peer_pods(peer, policy_namespace)
        return bits

    def policies_selecting(self, pod_index: int, direction: Direction) -> tuple[NetworkPolicy, ...]:
        """Policies that isolate pod `pod_index` for `direction` (§3.1), memoized."""
        key = (pod_index, direction)
        found = self._selecting.get(key)
        if found is None:
            found = tuple(
                p
                for p in self.cluster.policies
                if p.isolates(direction) and has(self.policy_pods(p), pod_index)
            )
            self._selecting[key] = found
        return found

    # ----------------------------------------------------------------- targets

    def target_for_pod(self, pod: Pod) -> Target:
        ip = parse_ip(pod.primary_ip)
        if not pod.policy_target:
            # §3.7: a hostNetwork pod's traffic is its node's traffic.
            return Target(pod=None, ip=parse_ip(pod.host_ip) or ip, node=pod.node_name)
        return Target(pod=pod, ip=ip, node=pod.node_name)

    def target_for_ip(self, ip: IPAddress) -> Target:
        """Resolve an address: a pod's IP is that pod; a node address is that node."""
        node = self._node_ips.get(ip)
        if node is not None:
            return Target(ip=ip, node=node)
        pod = self._pod_by_ip.get(ip)
        if pod is not None:
            target = self.target_for_pod(pod)
            return Target(pod=target.pod, ip=ip, node=target.node)
        return Target(ip=ip)

    # ----------------------------------------------------------------- matching

    def _peer_matches(self, peer: Peer, namespace: NamespaceName, other: Target) -> bool:
        pod_index = self.index.get(other.pod.key) if other.pod is not None else None
        if peer.ip_block is not None:
            if other.ip is None:
                return False
            if pod_index is not None and self.ipblock_pod_ips is IPBlockPodIPs.IGNORE:
                return False  # §3.6 Cilium mode: ipBlocks never match pods
            return peer.ip_block.contains(other.ip)
        # §3.7/§3.4: selectors only ever match (non-hostNetwork) pods, never IPs.
        return pod_index is not None and has(self.peer_pods(peer, namespace), pod_index)

    def rule_admits_peer(self, rule: Rule, namespace: NamespaceName, other: Target) -> bool:
        if rule.peers is None:
            return True  # §3.3: empty/absent from/to → every peer, IPs included
        return any(self._peer_matches(p, namespace, other) for p in rule.peers)

    @staticmethod
    def port_matches(spec: PortSpec, port: int, protocol: Protocol, dst: Pod | None) -> bool:
        if spec.protocol is not protocol:
            return False  # §3.3: an entry without protocol was defaulted to TCP
        if spec.port is None:
            return True
        if isinstance(spec.port, str):
            # §3.5: named ports resolve against the destination pod, protocol included;
            # never against an IP peer. Names are unique per container, not per pod: any
            # container port with the name counts (as in the matrix and upstream's
            # kube-network-policies), not just the first.
            return dst is not None and any(
                cp.name == spec.port and cp.protocol is protocol and cp.port == port
                for cp in dst.container_ports
            )
        if spec.end_port is not None:
            return spec.port <= port <= spec.end_port  # §3.5: inclusive range
        return spec.port == port

    def rule_admits_port(self, rule: Rule, port: int, protocol: Protocol, dst: Pod | None) -> bool:
        if rule.all_ports:
            return True  # §3.3: empty/absent ports → all ports and protocols
        return any(self.port_matches(s, port, protocol, dst) for s in rule.ports)

    # ----------------------------------------------------------------- evaluation

    def _side(
        self,
        *,
        direction: Direction,
        subject: Target,
        other: Target,
        port: int,
        protocol: Protocol,
        dst: Pod | None,
    ) -> SideVerdict:
        if subject.pod is None:
            return SideVerdict(isolated=False)
        i = self.index.get(subject.pod.key)
        if i is None:
            return SideVerdict(isolated=False)
        # §3.1: isolated iff some policy in its namespace selects it with this type.
        policies = self.policies_selecting(i, direction)
        if not policies:
            return SideVerdict(isolated=False)
        allowed: list[RuleRef] = []
        for policy in policies:
            # §3.2: policies are additive; every admitting rule is reported.
            for n, rule in enumerate(policy.rules(direction)):
                if self.rule_admits_port(rule, port, protocol, dst) and self.rule_admits_peer(
                    rule, policy.namespace, other
                ):
                    allowed.append(RuleRef(policy.key, direction, n))
        return SideVerdict(
            isolated=True,
            allowed_by=tuple(allowed),
            isolated_by=tuple(p.key for p in policies),
        )

    def evaluate(self, client: Target, server: Target, port: int, protocol: Protocol) -> Verdict:
        """Whether `client` may open a connection to `server` on port/protocol."""
        if protocol not in POLICY_PROTOCOLS:
            raise ValueError(f"NetworkPolicy does not evaluate {protocol.value}")
        egress = self._side(
            direction=Direction.EGRESS,
            subject=client,
            other=server,
            port=port,
            protocol=protocol,
            dst=server.pod,
        )
        ingress = self._side(
            direction=Direction.INGRESS,
            subject=server,
            other=client,
            port=port,
            protocol=protocol,
            dst=server.pod,
        )
        same_pod = (
            client.pod is not None and server.pod is not None and (client.pod.key == server.pod.key)
        )
        if same_pod:
            # §3.7: a pod cannot block itself.
            egress = _exempt(egress, Exemption.LOOPBACK)
            ingress = _exempt(ingress, Exemption.LOOPBACK)
        elif (
            server.pod is not None
            and client.pod is None
            and client.node is not None
            and client.node == server.pod.node_name
        ):
            # §3.7: traffic from the pod's own node (or a hostNetwork pod on it) is allowed.
            ingress = _exempt(ingress, Exemption.NODE_LOCAL)
        return Verdict(egress=egress, ingress=ingress)

    # ----------------------------------------------------------------- matrix

    def named_port_pods(self, name: str, protocol: Protocol, port: int) -> Bits:
        """Pods whose container port `name`/`protocol` is number `port` (§3.5)."""
        return self._named.get((name, protocol, port), 0)

    def _rule_port_pods(self, rule: Rule, port: int, protocol: Protocol) -> Bits:
        """Destination pods for which the rule's ports admit port/protocol (§3.3, §3.5)."""
        if rule.all_ports:
            return self.all
        bits = 0
        for spec in rule.ports:
            if isinstance(spec.port, str):
                if spec.protocol is protocol:
                    bits |= self.named_port_pods(spec.port, protocol, port)
            elif self.port_matches(spec, port, protocol, None):
                return self.all
        return bits

    def matrix(self, port: int, protocol: Protocol) -> Matrix:
        """Every ordered pair of pods that have an IP (hostNetwork pods excluded)."""
        if protocol not in POLICY_PROTOCOLS:
            raise ValueError(f"NetworkPolicy does not evaluate {protocol.value}")
        n = len(self.pods)
        ing_iso = eg_iso = 0
        ing_acc = [0] * n  # per destination: admitted sources
        eg_acc = [0] * n  # per source: admitted destinations
        for policy in self.cluster.policies:
            selected = self.policy_pods(policy)
            if not selected:
                continue
            if policy.isolates(Direction.INGRESS):
                ing_iso |= selected
                for rule in policy.ingress:
                    sources = self.rule_peer_pods(rule, policy.namespace)
                    if not sources:
                        continue
                    for j in iter_bits(selected & self._rule_port_pods(rule, port, protocol)):
                        ing_acc[j] |= sources
            if policy.isolates(Direction.EGRESS):
                eg_iso |= selected
                admitted = 0
                for rule in policy.egress:
                    admitted |= self.rule_peer_pods(rule, policy.namespace) & (
                        self._rule_port_pods(rule, port, protocol)
                    )
                if admitted:
                    for i in iter_bits(selected):
                        eg_acc[i] |= admitted
        # Transpose ingress (per destination: admitted sources) into per source: the
        # destinations admitting it. Destinations sharing one admitted-source set (pods
        # selected by the same policies) are handled together, so this costs
        # O(distinct sets x sources) big-int ORs rather than a test per pair.
        by_sources: dict[Bits, Bits] = defaultdict(int)
        for j in range(n):
            by_sources[ing_acc[j] if has(ing_iso, j) else self.all] |= 1 << j
        admits_me = [0] * n
        for sources, dsts in by_sources.items():
            for i in iter_bits(sources):
                admits_me[i] |= dsts
        out = [i for i, p in enumerate(self.pods) if p.ips]
        everyone = len(out) == n
        rows = []
        for i in out:
            eg = eg_acc[i] if has(eg_iso, i) else self.all
            row = bit_string((eg & admits_me[i]) | (1 << i), n)  # §3.7: self always allowed
            rows.append(row if everyone else "".join([row[j] for j in out]))
        return Matrix(port, protocol, tuple(self.pods[i] for i in out), tuple(rows))


def _exempt(side: SideVerdict, why: Exemption) -> SideVerdict:
    return SideVerdict(
        isolated=side.isolated,
        allowed_by=side.allowed_by,
        isolated_by=side.isolated_by,
        exempt=why,
    )
