"""Findings about observed traffic (DESIGN §6), from tallies and groups.

- `unexpected-flow`: denied by policy yet observed, one per (client, server, port,
  protocol) workload pair, with the side(s) that deny it;
- `unprotected-workload`: receives policy-evaluated traffic while no policy isolates it
  for ingress;
- `unused-rule`: a rule of a direction its policy isolates that no record hit;
- `overly-broad-rule`: a hit rule that admits far more than was used, dimension by
  dimension (`Breadth`): peer workloads and pods, external addresses, ports. "Far more"
  is `too_wide`: admitted >= BROAD_RATIO x max(used, 1) and admitted - used >=
  BROAD_MIN_EXCESS. Workloads are judged when the rule names selector peers (or has no
  peer list and pods used it); addresses only for ipBlocks narrower than a whole address
  family (`0.0.0.0/0` says "the internet" on purpose); ports always.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from netwatch.core import ipset
from netwatch.core.attribution import VerdictKind
from netwatch.core.bitset import iter_bits
from netwatch.core.engine import PolicyEngine, RuleRef
from netwatch.core.identity import Identity, IdentityKind
from netwatch.core.model import POLICY_PROTOCOLS, Direction, Protocol
from netwatch.core.policy import NetworkPolicy, PolicyKey, Rule
from netwatch.core.traffic import ConnectionGroup, RuleHits, Tally

BROAD_RATIO = 4
"""`overly-broad-rule`: a dimension is far too wide when it admits at least this many
times what was used ..."""
BROAD_MIN_EXCESS = 4
"""... and at least this many more (so 4 admitted ports with 1 used is not flagged
for a rule listing [80, 443, 8080, 8443], but 5 workloads with 1 used is)."""
ALL_PORTS = 65535 * len(POLICY_PROTOCOLS)
"""What "every port and protocol" counts as (TCP, UDP and SCTP, 1-65535 each)."""


@dataclass(frozen=True, slots=True)
class Breadth:
    """How much a rule admits, or how much of it was used."""

    workloads: int
    pods: int
    addresses: int | None
    """External addresses (ipBlocks; nodes included); None: every address."""
    ports: int
    """Port numbers over all protocols; a named port counts once."""


class FlowFindingKind(enum.Enum):
    UNEXPECTED_FLOW = "unexpected-flow"
    UNPROTECTED_WORKLOAD = "unprotected-workload"
    UNUSED_RULE = "unused-rule"
    OVERLY_BROAD_RULE = "overly-broad-rule"


@dataclass(frozen=True)
class FlowFinding:
    """A finding about observed traffic; fields that do not apply are None."""

    kind: FlowFindingKind
    message: str
    client: str | None = None
    server: str | None = None
    port: int | None = None
    protocol: Protocol | None = None
    policy: PolicyKey | None = None
    direction: Direction | None = None
    rule: int | None = None
    workload: str | None = None
    count: int | None = None
    """Records behind the finding (unexpected flows, unprotected workloads, broad rules)."""
    bytes: int | None = None
    first_seen: float | None = None
    last_seen: float | None = None
    denied_by: tuple[Direction, ...] = ()
    """unexpected-flow: the side(s) whose policy denies it."""
    isolated_by: tuple[PolicyKey, ...] = ()
    admitted: Breadth | None = None
    used: Breadth | None = None
    too_wide: tuple[str, ...] = ()
    """overly-broad-rule: the `Breadth` fields judged far too wide."""

    def sort_key(self) -> tuple[object, ...]:
        return (
            list(FlowFindingKind).index(self.kind),
            self.client or "",
            self.server or "",
            self.protocol.value if self.protocol else "",
            self.port or 0,
            self.workload or "",
            self.policy or "",
            self.direction.value if self.direction else "",
            -1 if self.rule is None else self.rule,
        )


def too_wide(admitted: int, used: int) -> bool:
    """The documented threshold: admitted >= BROAD_RATIO x used and >= used + BROAD_MIN_EXCESS."""
    return admitted >= BROAD_RATIO * max(used, 1) and admitted - used >= BROAD_MIN_EXCESS


def unexpected_flows(groups: list[ConnectionGroup]) -> list[FlowFinding]:
    """Denied groups, merged over Service and pod: one finding per workload pair and port."""
    merged: dict[tuple[str, str, str, int], list[ConnectionGroup]] = defaultdict(list)
    for g in groups:
        if g.verdict is VerdictKind.DENIED:
            merged[(g.client.key, g.server.key, g.protocol.value, g.port)].append(g)
    out = []
    for (client, server, _, port), members in merged.items():
        denied_by: list[Direction] = []
        isolated_by: set[PolicyKey] = set()
        for direction, sides in (
            (Direction.EGRESS, [g.egress for g in members]),
            (Direction.INGRESS, [g.ingress for g in members]),
        ):
            for side in sides:
                if side is not None and not side.allowed:
                    if direction not in denied_by:
                        denied_by.append(direction)
                    isolated_by.update(side.isolated_by)
        protocol = members[0].protocol
        count = sum(g.count for g in members)
        where = " and ".join(f"{d.value} ({_isolators(members, d)})" for d in denied_by)
        out.append(
            FlowFinding(
                FlowFindingKind.UNEXPECTED_FLOW,
                f"{count} connection(s) {client} -> {server} {protocol.value}/{port} were "
                f"observed although policy denies them: {where}",
                client=client,
                server=server,
                port=port,
                protocol=protocol,
                count=count,
                bytes=sum(g.bytes for g in members),
                first_seen=min(g.first_seen for g in members),
                last_seen=max(g.last_seen for g in members),
                denied_by=tuple(denied_by),
                isolated_by=tuple(sorted(isolated_by)),
            )
        )
    return out


def _isolators(members: list[ConnectionGroup], direction: Direction) -> str:
    keys: set[str] = set()
    for g in members:
        side = g.egress if direction is Direction.EGRESS else g.ingress
        if side is not None and not side.allowed:
            keys.update(side.isolated_by)
    return "isolated by " + ", ".join(sorted(keys))


def unprotected_workloads(tallies: Iterable[Tally]) -> list[FlowFinding]:
    """Server workloads receiving evaluated traffic while no policy isolates them for ingress."""
    seen: dict[str, list[Tally]] = defaultdict(list)
    for t in tallies:
        r = t.res
        if r.decision is None or r.server.kind is not IdentityKind.POD:
            continue
        if not r.decision.ingress.isolated and r.decision.ingress.exempt is None:
            seen[r.server_key].append(t)
    out = []
    for workload, members in seen.items():
        count = sum(m.count for m in members)
        clients = {m.res.client_key for m in members}
        ports = sorted({(m.res.protocol.value, m.res.port) for m in members})
        port_text = ", ".join(f"{p}/{n}" for p, n in ports[:5]) + (" ..." if len(ports) > 5 else "")
        out.append(
            FlowFinding(
                FlowFindingKind.UNPROTECTED_WORKLOAD,
                f"received {count} connection(s) from {len(clients)} peer(s) on {port_text} "
                "while no NetworkPolicy isolates it for ingress",
                workload=workload,
                count=count,
                bytes=sum(m.bytes for m in members),
                first_seen=min(m.first for m in members),
                last_seen=max(m.last for m in members),
            )
        )
    return out


def rule_findings(
    engine: PolicyEngine, tallies: Iterable[Tally], hits: RuleHits
) -> list[FlowFinding]:
    """`unused-rule` and `overly-broad-rule` for every rule of an isolated direction."""
    used: dict[RuleRef, _Usage] = defaultdict(_Usage)
    for t in tallies:
        d = t.res.decision
        if d is None:
            continue
        for ref in d.egress.allowed_by:
            used[ref].add(t, peer=t.res.server, key=t.res.server_key, ip=t.res.server_ip)
        for ref in d.ingress.allowed_by:
            used[ref].add(t, peer=t.res.client, key=t.res.client_key, ip=t.res.client_ip)
    workload_of = [engine.cluster.workload_of(p).key for p in engine.pods]
    out: list[FlowFinding] = []
    for policy in engine.cluster.policies:
        for direction in Direction:
            if not policy.isolates(direction):
                continue
            for n, rule in enumerate(policy.rules(direction)):
                ref = RuleRef(policy.key, direction, n)
                if hits.get(ref) is None:
                    out.append(_unused(policy, direction, n))
                    continue
                pods = list(iter_bits(engine.rule_peer_pods(rule, policy.namespace)))
                admitted = _admitted(pods, rule, workload_of)
                finding = _broad(policy, ref, rule, admitted, used[ref])
                if finding is not None:
                    out.append(finding)
    return out


def _unused(policy: NetworkPolicy, direction: Direction, n: int) -> FlowFinding:
    return FlowFinding(
        FlowFindingKind.UNUSED_RULE,
        "no observed connection matched this rule in the window",
        policy=policy.key,
        direction=direction,
        rule=n,
    )


class _Usage:
    """What one rule was used for: distinct peer workloads, pods, addresses and ports."""

    __slots__ = ("addresses", "count", "pods", "ports", "workloads")

    def __init__(self) -> None:
        self.workloads: set[str] = set()
        self.pods: set[str] = set()
        self.addresses: set[str] = set()
        self.ports: set[tuple[Protocol, int]] = set()
        self.count = 0

    def add(self, t: Tally, *, peer: Identity, key: str, ip: str) -> None:
        self.count += t.count
        self.ports.add((t.res.protocol, t.res.port))
        if peer.kind is IdentityKind.POD:
            self.workloads.add(key)
            self.pods.add(peer.uid or peer.key)
        else:
            self.addresses.add(ip)

    def breadth(self) -> Breadth:
        return Breadth(len(self.workloads), len(self.pods), len(self.addresses), len(self.ports))


def _admitted(pod_indexes: list[int], rule: Rule, workload_of: list[str]) -> Breadth:
    addresses: int | None
    if rule.peers is None:
        addresses = None
    else:
        blocks = [ipset.from_block(p.ip_block) for p in rule.peers if p.ip_block is not None]
        addresses = ipset.size(ipset.union(*blocks)) if blocks else 0
    return Breadth(
        workloads=len({workload_of[i] for i in pod_indexes}),
        pods=len(pod_indexes),
        addresses=addresses,
        ports=_port_count(rule),
    )


def _port_count(rule: Rule) -> int:
    if rule.all_ports:
        return ALL_PORTS
    intervals: dict[Protocol, list[tuple[int, int]]] = defaultdict(list)
    names: set[tuple[Protocol, str]] = set()
    for spec in rule.ports:
        if spec.port is None:
            intervals[spec.protocol].append((1, 65535))
        elif isinstance(spec.port, str):
            names.add((spec.protocol, spec.port))
        else:
            intervals[spec.protocol].append((spec.port, spec.end_port or spec.port))
    numbers = sum(ipset.size(ipset.normalize(iv)) for iv in intervals.values())
    return numbers + len(names)


def _broad(
    policy: NetworkPolicy, ref: RuleRef, rule: Rule, admitted: Breadth, usage: _Usage
) -> FlowFinding | None:
    """Judge each dimension the rule restricts (see `too_wide`).

    Workloads are judged when the rule names selector peers, or admits every peer and
    was used by pods; addresses when it names ipBlocks other than a whole address family
    (`0.0.0.0/0`, `::/0` say "the internet" on purpose); ports always.
    """
    used = usage.breadth()
    peers = rule.peers or ()
    selectors = any(p.ip_block is None for p in peers) or (rule.peers is None and used.pods > 0)
    blocks = [p.ip_block for p in peers if p.ip_block is not None]
    narrow_blocks = bool(blocks) and all(b.cidr.prefixlen > 0 for b in blocks)
    wide: list[str] = []
    if selectors and too_wide(admitted.workloads, used.workloads):
        wide.append("workloads")
    if (
        narrow_blocks
        and admitted.addresses is not None
        and used.addresses is not None
        and too_wide(admitted.addresses, used.addresses)
    ):
        wide.append("addresses")
    if too_wide(admitted.ports, used.ports):
        wide.append("ports")
    if not wide:
        return None
    parts = []
    if "workloads" in wide:
        parts.append(
            f"{admitted.workloads} workloads ({admitted.pods} pods) admitted, "
            f"{used.workloads} ({used.pods} pods) seen"
        )
    if "addresses" in wide:
        parts.append(f"{admitted.addresses:,} addresses admitted, {used.addresses} seen")
    if "ports" in wide:
        admitted_ports = "every port" if admitted.ports == ALL_PORTS else f"{admitted.ports} ports"
        parts.append(f"{admitted_ports} admitted, {used.ports} seen")
    return FlowFinding(
        FlowFindingKind.OVERLY_BROAD_RULE,
        "; ".join(parts),
        policy=policy.key,
        direction=ref.direction,
        rule=ref.rule,
        count=usage.count,
        admitted=admitted,
        used=used,
        too_wide=tuple(wide),
    )
