"""NetworkPolicy (networking.k8s.io/v1) as validated, normalized values.

Conversion from YAML/API objects (and the validation that names the offending field)
lives in `netwatch.k8s.convert`; what arrives here is already valid. Normalization that
the API server does by defaulting is applied at construction: effective policyTypes,
`protocol` defaulting to TCP (§3.1, §3.3).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import NewType

from netwatch.core.model import Direction, NamespaceName, Protocol
from netwatch.core.selectors import LabelSelector

PolicyKey = NewType("PolicyKey", str)
"""`namespace/name` of a NetworkPolicy."""

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class IPBlock:
    """`cidr` minus `except` (§3.6). Host bits in the CIDR were dropped at parse time."""

    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, ip: IPAddress) -> bool:
        if ip.version != self.cidr.version or ip not in self.cidr:
            return False
        return not any(ip in ex for ex in self.excepts)

    def describe(self) -> str:
        if not self.excepts:
            return str(self.cidr)
        return f"{self.cidr} except {', '.join(str(e) for e in self.excepts)}"


@dataclass(frozen=True, slots=True)
class Peer:
    """One entry of `from`/`to`. Exactly one of: selectors (AND-ed when both), or ipBlock."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    def describe(self, policy_namespace: str) -> str:
        if self.ip_block is not None:
            return f"ipBlock {self.ip_block.describe()}"
        pods = self.pod_selector.describe() if self.pod_selector else "<all>"
        if self.namespace_selector is None:
            return f"pods {pods} in {policy_namespace}"
        return f"pods {pods} in namespaces {self.namespace_selector.describe()}"


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One `ports` entry: a number (optionally a range to `end_port`) or a name, or any."""

    protocol: Protocol = Protocol.TCP
    port: int | str | None = None
    """None means every port of `protocol` (`ports: [{}]` is all TCP ports, §3.3)."""
    end_port: int | None = None

    def describe(self) -> str:
        if self.port is None:
            return f"{self.protocol.value}/*"
        if self.end_port is not None:
            return f"{self.protocol.value}/{self.port}-{self.end_port}"
        return f"{self.protocol.value}/{self.port}"


@dataclass(frozen=True, slots=True)
class Rule:
    """An ingress or egress rule.

    `peers is None` means `from`/`to` was absent or empty: every peer, IPs included.
    `ports == ()` means every port and protocol (§3.3).
    """

    peers: tuple[Peer, ...] | None = None
    ports: tuple[PortSpec, ...] = ()

    def __post_init__(self) -> None:
        # §3.3: an empty `from`/`to` list means every peer, exactly like an absent one;
        # normalizing here keeps `()` from ever meaning "no peer".
        if self.peers is not None and not self.peers:
            object.__setattr__(self, "peers", None)

    @property
    def all_peers(self) -> bool:
        return self.peers is None

    @property
    def all_ports(self) -> bool:
        return not self.ports


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    namespace: NamespaceName
    name: str
    pod_selector: LabelSelector
    policy_types: frozenset[Direction]
    """Effective policyTypes after API defaulting (§3.1)."""
    ingress: tuple[Rule, ...] = ()
    """Rules as declared (indexes are YAML positions); ignored unless Ingress is a type."""
    egress: tuple[Rule, ...] = ()

    @property
    def key(self) -> PolicyKey:
        return PolicyKey(f"{self.namespace}/{self.name}")

    def rules(self, direction: Direction) -> tuple[Rule, ...]:
        """The declared rules of a direction (effective only if `isolates(direction)`)."""
        return self.ingress if direction is Direction.INGRESS else self.egress

    def isolates(self, direction: Direction) -> bool:
        return direction in self.policy_types


def effective_policy_types(
    declared: list[str] | None, *, has_egress_rules: bool
) -> frozenset[Direction]:
    """§3.1: policyTypes as the API server defaults them.

    When omitted: Ingress always; Egress iff the spec has at least one egress rule. This
    is upstream's `SetDefaults_NetworkPolicySpec` (`len(spec.Egress) != 0`), so an
    explicitly empty `egress: []` without policyTypes does not isolate for egress.
    """
    if declared:
        return frozenset(Direction(t.lower()) for t in declared)
    types = {Direction.INGRESS}
    if has_egress_rules:
        types.add(Direction.EGRESS)
    return frozenset(types)
