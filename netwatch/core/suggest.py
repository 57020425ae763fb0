"""Least-privilege NetworkPolicy suggestions from observed connections (DESIGN §7).

Input: attributed connections (`netwatch.core.attribution`) and the engine they were
judged with. Output: `Suggestion` — NetworkPolicies with evidence, never applied here.

**Which connections count.** `unknown` ones (an endpoint unresolved) and ICMP (never
policy-evaluated) are skipped and counted. `denied` ones are not legalized: they are
reported as unexpected, unless `include_denied`. Everything else is *used*. A pod's
connection to itself needs nothing (§3.7), nor does ingress from the pod's own node.

**`replace`** proposes the complete set for every workload seen in the window (as client
or server, in any connection): one policy `<workload>-netwatch` per workload with both
policyTypes. Its ingress rules admit the observed clients, its egress rules the observed
servers; a direction without used traffic has no rules, so it is deny-all. Every
workload with egress rules also gets DNS egress (UDP and TCP to the DNS pods' port 53),
observed or not: a capture window easily misses the lookups of a long-lived process
(the DNS workload itself excepted). A workload without any egress gets none: deny-all
means deny-all.

**`add`** proposes only what the existing policies lack: connections they allow need
nothing; for a denied connection (only with `include_denied`) a rule is added on each
side that denies it. A side that is not isolated gets nothing — adding a policy there
would newly isolate it and deny traffic that flows today. For the same reason every
added policy selects only pods already isolated in its direction: the workload selector
when that holds, else the workload selector AND-ed with the podSelector of a policy that
isolates the pod. So `add` never removes an allowed connection (policies only add, §3.2).
Added policies have one policyType each: `<workload>-netwatch-<direction>`.

Which selector means a workload is `selection`'s answer; peers, ports and names are
spelled by `rulebits`; external and node peers become
ipBlocks aggregated by `cidr` (IPs grouped by the exact set of ports they used, at most
`max_cidrs` CIDRs per rule). Rules are ordered: workload peers by namespace/name, DNS,
then ipBlock rules by address, then stand-in ranges.

**Stand-ins.** An external end known only by its label (`suggest --prometheus`: metrics
carry no addresses) reaches `suggest` at a representative address listed in
`stand_ins`; its rules admit the whole range the label stands for — a named CIDR, or for
`world` `0.0.0.0/0` (and `::/0` in a cluster with IPv6) — except the cluster's own
ranges (`Cluster.pod_ranges`, the same ones aggregation keeps out), and each such rule is
flagged: a warning, and a `review` note in its evidence. Pure: no I/O, no clock (the
window end is the newest `last_seen`).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from netwatch.core.attribution import Attributed, VerdictKind, peer_key
from netwatch.core.cidr import DEFAULT_BUDGET, Aggregate, aggregate
from netwatch.core.engine import PolicyEngine
from netwatch.core.identity import Identity, IdentityKind
from netwatch.core.model import POLICY_PROTOCOLS, Direction, Pod, Workload
from netwatch.core.observed import Observation, Observations
from netwatch.core.policy import IPBlock, IPNetwork, NetworkPolicy, Peer, PortSpec, Rule
from netwatch.core.rulebits import (
    NAME_SUFFIX,
    Evidence,
    PortKey,
    Tally,
    aggregate_sort_key,
    merge_ports,
    policy_names,
    unique_name,
    workload_peer,
    workload_sort_key,
)
from netwatch.core.selection import DNS_NAMESPACE, WorkloadSelectors, find_dns
from netwatch.core.selectors import LabelSelector

DEFAULT_QUIET_PERIOD = 24 * 3600.0
WIDE_AGGREGATE = 1 << 16
"""Unobserved addresses an aggregated ipBlock rule may admit before a warning says so."""
ANY_ADDRESS: tuple[IPNetwork, IPNetwork] = (
    ipaddress.ip_network("0.0.0.0/0"),
    ipaddress.ip_network("::/0"),
)
NARROW_HINT = "narrow it with the node agents' /api/suggestions or `netwatch suggest --flows`"


class SuggestMode(enum.Enum):
    REPLACE = "replace"
    ADD = "add"


class Stability(enum.Enum):
    """`stable` once the newest rule's first-seen is a quiet period before the window end."""

    LEARNING = "learning"
    STABLE = "stable"


class PeerKind(enum.Enum):
    WORKLOAD = "workload"
    DNS = "dns"
    ADDRESSES = "addresses"
    RANGE = "range"
    """A stand-in's whole range (module doc)."""


@dataclass(frozen=True, slots=True)
class StandIn:
    """An external end known only by its label, at a representative address (module doc)."""

    label: str
    """`world` or a named CIDR's name."""
    cidr: IPNetwork | None = None
    """The named CIDR; None for `world`: any address outside the cluster."""


@dataclass(frozen=True, slots=True)
class SuggestOptions:
    mode: SuggestMode = SuggestMode.REPLACE
    include_denied: bool = False
    quiet_period: float = DEFAULT_QUIET_PERIOD
    max_cidrs: int = DEFAULT_BUDGET
    pod_cidrs: tuple[str, ...] = ()
    """Cluster pod ranges besides the nodes' podCIDRs (`--pod-cidr`: CNIs with their own
    IPAM): never aggregated into, and excepted from, external ipBlocks."""


@dataclass(frozen=True, slots=True)
class RuleEvidence:
    direction: Direction
    rule: int
    """Position in the policy's `ingress`/`egress` list."""
    kind: PeerKind
    peers: tuple[str, ...]
    """Who was seen: `namespace/workload`, `node:NAME`, `world` or a named CIDR."""
    evidence: Evidence
    addresses: Aggregate | None = None
    """For ipBlock rules: what the aggregation admits beyond the observed addresses."""
    review: str | None = None
    """Why a reviewer should narrow the rule (stand-in ranges: no address was observed)."""


@dataclass(frozen=True)
class SuggestedPolicy:
    policy: NetworkPolicy
    workload: Workload
    evidence: Evidence
    """Over all rules; a policy without rules carries when its workload was seen."""
    stability: Stability
    rules: tuple[RuleEvidence, ...]


@dataclass(frozen=True)
class Suggestion:
    mode: SuggestMode
    policies: tuple[SuggestedPolicy, ...]
    used: int
    """Connections the suggested set (with the existing one, in `add`) must allow."""
    unexpected: tuple[Observation, ...]
    """Denied today and not legalized (without `include_denied`)."""
    skipped: dict[str, int]
    """Records not used, by reason (`unknown`, `not-policy-evaluated`)."""
    warnings: tuple[str, ...]
    window: tuple[float, float] | None

    @property
    def unexpected_connections(self) -> int:
        return sum(o.count for o in self.unexpected)


@dataclass
class _Acc:
    ports: set[PortKey] = field(default_factory=set)
    tally: Tally = field(default_factory=Tally)
    labels: set[str] = field(default_factory=set)


@dataclass
class _Side:
    """What one subject (workload, direction, selector) must admit."""

    workloads: dict[Workload, _Acc] = field(default_factory=dict)
    addresses: dict[str, _Acc] = field(default_factory=dict)
    ranges: dict[StandIn, _Acc] = field(default_factory=dict)
    dns: Tally | None = None

    @property
    def empty(self) -> bool:
        return not self.workloads and not self.addresses and not self.ranges and self.dns is None


def suggest(
    observed: Observations,
    *,
    engine: PolicyEngine,
    options: SuggestOptions = SuggestOptions(),
    stand_ins: Mapping[str, StandIn] | None = None,
) -> Suggestion:
    """Suggest policies for `observed`, judged by `engine` (see the module doc);
    `stand_ins` maps representative addresses to the external ranges they stand for."""
    return _Builder(engine, options, stand_ins or {}).run(observed)


def strictly_inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    """Whether `inner` is a proper subnet of `outer` (an `except` entry must be)."""
    return (
        inner.version == outer.version
        and inner.prefixlen > outer.prefixlen
        and inner.network_address in outer
    )


class _Builder:
    def __init__(
        self, engine: PolicyEngine, options: SuggestOptions, stand_ins: Mapping[str, StandIn]
    ) -> None:
        self.engine = engine
        self.cluster = cluster = engine.cluster
        self.options = options
        self.selectors = WorkloadSelectors(engine, warn=self._warn)
        self.pod_by_uid = {p.uid: p for p in cluster.pods}
        self.sides: dict[tuple[Workload, Direction, LabelSelector], _Side] = {}
        self.seen: dict[Workload, Tally] = {}
        self.warnings: dict[str, None] = {}
        self.skipped: dict[str, int] = {}
        self.dns = find_dns(engine)
        self.exclude = cluster.pod_ranges(options.pod_cidrs)
        self.stand_ins = stand_ins
        self.ipv6 = any(n.version == 6 for n in self.exclude) or any(
            ":" in ip for pod in cluster.pods for ip in pod.ips
        )

    # ------------------------------------------------------------------ intake

    def run(self, observed: Observations) -> Suggestion:
        replace = self.options.mode is SuggestMode.REPLACE
        unexpected: list[Observation] = []
        used = 0
        for obs in observed:
            a = obs.sample
            self._note_seen(obs)
            if a.verdict is VerdictKind.UNKNOWN:
                self._skip("unknown", obs.count)
                continue
            if a.protocol not in POLICY_PROTOCOLS:
                self._skip("not-policy-evaluated", obs.count)
                continue
            if a.verdict is VerdictKind.DENIED and not self.options.include_denied:
                unexpected.append(obs)
                continue
            used += obs.count
            if _same_pod(a.client, a.server):
                continue  # §3.7: a pod cannot block itself
            if replace:
                if a.client.kind is IdentityKind.POD:
                    self._record(obs, Direction.EGRESS)
                if a.server.kind is IdentityKind.POD and not _node_local(a):
                    self._record(obs, Direction.INGRESS)
            elif a.verdict is VerdictKind.DENIED and a.decision is not None:
                if a.decision.egress.isolated and not a.decision.egress.allowed:
                    self._record(obs, Direction.EGRESS)
                if a.decision.ingress.isolated and not a.decision.ingress.allowed:
                    self._record(obs, Direction.INGRESS)
        policies = self._replace_policies() if replace else self._add_policies()
        window = observed.window
        return Suggestion(
            mode=self.options.mode,
            policies=tuple(self._finish(policies, window)),
            used=used,
            unexpected=tuple(unexpected),
            skipped=dict(sorted(self.skipped.items())),
            warnings=tuple(self.warnings),
            window=window,
        )

    def _skip(self, why: str, count: int) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + count

    def _warn(self, text: str) -> None:
        self.warnings[text] = None

    def _note_seen(self, obs: Observation) -> None:
        for who in (obs.sample.client, obs.sample.server):
            if who.kind is IdentityKind.POD and who.workload is not None:
                tally = self.seen.get(who.workload)
                if tally is None:
                    tally = self.seen[who.workload] = Tally()
                tally.add(obs)
                self.selectors.seen_labels.setdefault(who.workload, dict(who.labels))

    def _record(self, obs: Observation, direction: Direction) -> None:
        a = obs.sample
        egress = direction is Direction.EGRESS
        subject, other = (a.client, a.server) if egress else (a.server, a.client)
        other_ip = a.resolution.server_ip if egress else a.resolution.client_ip
        workload = subject.workload
        assert workload is not None  # pods always have one
        if self.options.mode is SuggestMode.REPLACE:
            selector = self.selectors.subject(workload)
        else:  # add: only pods already isolated (module doc)
            selector = self.selectors.isolated_subject(workload, self._pod(subject), direction)
        if selector is None:
            return
        side = self.sides.setdefault((workload, direction, selector), _Side())
        if egress and self._is_dns(a):
            if side.dns is None:
                side.dns = Tally()
            side.dns.add(obs)
            return
        stand_in = self.stand_ins.get(other_ip)
        if other.kind is IdentityKind.POD and other.workload is not None:
            acc = side.workloads.setdefault(other.workload, _Acc())
        elif other.kind is IdentityKind.EXTERNAL and stand_in is not None:
            acc = side.ranges.setdefault(stand_in, _Acc())
        else:
            acc = side.addresses.setdefault(other_ip, _Acc())
        acc.ports.add(self._port_key(a))
        acc.tally.add(obs)
        acc.labels.add(peer_key(other))

    def _port_key(self, a: Attributed) -> PortKey:
        """The server port, by name when the server pod names it (§3.5)."""
        pod = self._pod(a.server)
        if pod is not None:
            for cp in pod.container_ports:
                if cp.port == a.port and cp.protocol is a.protocol and cp.name:
                    return (a.protocol, cp.name)
        return (a.protocol, a.port)

    def _pod(self, who: Identity) -> Pod | None:
        if who.kind is not IdentityKind.POD:
            return None
        by_uid = self.pod_by_uid.get(who.uid) if who.uid is not None else None
        return by_uid or self.cluster.pod(who.key)

    def _is_dns(self, a: Attributed) -> bool:
        dns = self.dns
        return dns is not None and a.server.key in dns.pods and dns.ports.get(a.protocol) == a.port

    def _needs_dns(self, workload: Workload) -> bool:
        """Whether DNS egress is added unobserved: not for the DNS pods themselves."""
        dns = self.dns
        return dns is not None and not any(
            p.key in dns.pods for p in self.selectors.pods_of.get(workload, ())
        )

    # ------------------------------------------------------------------ policies

    def _replace_policies(self) -> list[tuple[NetworkPolicy, Workload, list[RuleEvidence]]]:
        out = []
        names = policy_names(self.seen)
        for workload in sorted(self.seen, key=workload_sort_key):
            selector = self.selectors.subject(workload)
            if selector is None:
                continue
            others = self.selectors.overlaps(workload, selector)
            if others:
                self._warn(
                    f"{workload.key}: selector {selector.describe()} also selects pods of "
                    f"{', '.join(others)}"
                )
            ingress = self.sides.get((workload, Direction.INGRESS, selector), _Side())
            egress = self.sides.get((workload, Direction.EGRESS, selector), _Side())
            if not egress.empty and egress.dns is None and self._needs_dns(workload):
                egress.dns = Tally()  # always resolvable (module doc)
            in_rules, in_ev = self._rules(workload, Direction.INGRESS, ingress)
            out_rules, out_ev = self._rules(workload, Direction.EGRESS, egress)
            policy = NetworkPolicy(
                namespace=workload.namespace,
                name=names[workload],
                pod_selector=selector,
                policy_types=frozenset(Direction),
                ingress=in_rules,
                egress=out_rules,
            )
            out.append((policy, workload, in_ev + out_ev))
        return out

    def _add_policies(self) -> list[tuple[NetworkPolicy, Workload, list[RuleEvidence]]]:
        out = []
        taken: set[str] = {p.key for p in self.cluster.policies}
        ordered = sorted(
            self.sides.items(),
            key=lambda kv: (*workload_sort_key(kv[0][0]), kv[0][1].value, kv[0][2].describe()),
        )
        for (workload, direction, selector), side in ordered:
            name = unique_name(f"{workload.name}{NAME_SUFFIX}-{direction.value}", workload, taken)
            rules, evidence = self._rules(workload, direction, side)
            policy = NetworkPolicy(
                namespace=workload.namespace,
                name=name,
                pod_selector=selector,
                policy_types=frozenset({direction}),
                ingress=rules if direction is Direction.INGRESS else (),
                egress=rules if direction is Direction.EGRESS else (),
            )
            out.append((policy, workload, evidence))
        return out

    def _rules(
        self, workload: Workload, direction: Direction, side: _Side
    ) -> tuple[tuple[Rule, ...], list[RuleEvidence]]:
        rules: list[Rule] = []
        evidence: list[RuleEvidence] = []

        def add(
            rule: Rule,
            kind: PeerKind,
            acc: _Acc,
            agg: Aggregate | None = None,
            review: str | None = None,
        ) -> None:
            labels = tuple(sorted(acc.labels))
            evidence.append(
                RuleEvidence(direction, len(rules), kind, labels, acc.tally.evidence, agg, review)
            )
            rules.append(rule)

        for peer in sorted(side.workloads, key=workload_sort_key):
            acc = side.workloads[peer]
            selector = self.selectors.peer(peer)
            p = workload_peer(
                selector, peer_namespace=peer.namespace, policy_namespace=workload.namespace
            )
            add(Rule(peers=(p,), ports=merge_ports(acc.ports)), PeerKind.WORKLOAD, acc)
        if side.dns is not None and self.dns is not None:
            dns = self.dns
            p = workload_peer(
                dns.selector, peer_namespace=DNS_NAMESPACE, policy_namespace=workload.namespace
            )
            ports = tuple(
                PortSpec(proto, port)
                for proto, port in sorted(
                    dns.ports.items(), key=lambda kv: POLICY_PROTOCOLS.index(kv[0])
                )
            )
            add(Rule(peers=(p,), ports=ports), PeerKind.DNS, _Acc(tally=side.dns, labels={"dns"}))
        for acc, agg in self._address_groups(workload, direction, side):
            peers = tuple(Peer(ip_block=b) for b in agg.blocks)
            add(Rule(peers=peers, ports=merge_ports(acc.ports)), PeerKind.ADDRESSES, acc, agg)
        for stand_in in sorted(side.ranges, key=_stand_in_sort_key):
            acc = side.ranges[stand_in]
            ports = merge_ports(acc.ports)
            peers = tuple(Peer(ip_block=b) for b in self._range_blocks(stand_in))
            admits = _range_admits(stand_in)
            way = "to" if direction is Direction.EGRESS else "from"
            self._warn(
                f"{workload.key} {direction.value} {way} {stand_in.label} on "
                f"{', '.join(p.describe() for p in ports)}: metrics carry no addresses — "
                f"this admits {admits}; {NARROW_HINT}"
            )
            review = f"from metrics, which carry no addresses: admits {admits}"
            add(Rule(peers=peers, ports=ports), PeerKind.RANGE, acc, review=review)
        return tuple(rules), evidence

    def _range_blocks(self, stand_in: StandIn) -> list[IPBlock]:
        """The stand-in's range(s) minus the cluster ranges inside them (module doc)."""
        if stand_in.cidr is not None:
            nets: tuple[IPNetwork, ...] = (stand_in.cidr,)
        else:
            nets = ANY_ADDRESS if self.ipv6 else ANY_ADDRESS[:1]
        blocks = []
        for net in nets:
            inside = {ex for ex in self.exclude if strictly_inside(ex, net)}
            excepts = sorted(inside, key=lambda ex: (int(ex.network_address), ex.prefixlen))
            blocks.append(IPBlock(net, tuple(excepts)))
        return blocks

    def _address_groups(
        self, workload: Workload, direction: Direction, side: _Side
    ) -> list[tuple[_Acc, Aggregate]]:
        by_ports: dict[frozenset[PortKey], list[str]] = {}
        for ip, acc in side.addresses.items():
            by_ports.setdefault(frozenset(acc.ports), []).append(ip)
        out = []
        for ports, ips in by_ports.items():
            merged = _Acc(ports=set(ports))
            for ip in ips:
                acc = side.addresses[ip]
                merged.tally.merge(acc.tally)
                merged.labels |= acc.labels
            agg = aggregate(
                (ipaddress.ip_address(ip) for ip in ips),
                budget=self.options.max_cidrs,
                exclude=self.exclude,
            )
            way = "to" if direction is Direction.EGRESS else "from"
            where = f"{workload.key} {direction.value} {way} {', '.join(sorted(merged.labels))}"
            if agg.over_budget:
                self._warn(
                    f"{where}: {len(agg.blocks)} CIDRs for {len(ips)} addresses, over the "
                    f"budget of {self.options.max_cidrs}: private and public ranges are never "
                    "aggregated together"
                )
            if agg.extra > WIDE_AGGREGATE:
                self._warn(
                    f"{where}: {agg.admitted:,} addresses admitted for {agg.observed} observed "
                    f"(widest /{agg.widest_prefix}); raise --max-cidrs to tighten"
                )
            out.append((merged, agg))
        # Disjoint address sets may still aggregate to the same first CIDR: ports break ties.
        return sorted(
            out,
            key=lambda item: (
                aggregate_sort_key(item[1]),
                sorted((proto.value, str(port)) for proto, port in item[0].ports),
            ),
        )

    def _finish(
        self,
        built: list[tuple[NetworkPolicy, Workload, list[RuleEvidence]]],
        window: tuple[float, float] | None,
    ) -> list[SuggestedPolicy]:
        out = []
        for policy, workload, rules in built:
            evidence = Evidence()
            for r in rules:
                evidence = evidence.merge(r.evidence)
            firsts = [r.evidence.first_seen for r in rules if r.evidence.first_seen is not None]
            if evidence.connections == 0:
                seen = self.seen.get(workload, Tally()).evidence
                evidence = Evidence(0, seen.first_seen, seen.last_seen)
                firsts = [seen.first_seen] if seen.first_seen is not None else []
            stable = (
                window is not None
                and bool(firsts)
                and window[1] - max(firsts) >= self.options.quiet_period
            )
            stability = Stability.STABLE if stable else Stability.LEARNING
            out.append(SuggestedPolicy(policy, workload, evidence, stability, tuple(rules)))
        return sorted(out, key=lambda s: (s.policy.namespace, s.policy.name))


def _stand_in_sort_key(s: StandIn) -> tuple[bool, int, int, int, str]:
    """Named CIDRs by address, then `world`."""
    if s.cidr is None:
        return (True, 0, 0, 0, s.label)
    return (False, s.cidr.version, int(s.cidr.network_address), s.cidr.prefixlen, s.label)


def _range_admits(s: StandIn) -> str:
    if s.cidr is None:
        return "any external address"
    return f"any address in {s.label} ({s.cidr.compressed})"


def _same_pod(a: Identity, b: Identity) -> bool:
    return a.kind is IdentityKind.POD and b.kind is IdentityKind.POD and a.key == b.key


def _node_local(a: Attributed) -> bool:
    """§3.7: ingress from the server pod's own node is always allowed."""
    return a.client.kind is IdentityKind.NODE and a.client.name == a.server.node
