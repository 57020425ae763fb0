"""Aggregates of attributed traffic: tallies, rule hits and workload-level groups.

The building blocks `analysis` and `flowfindings` share. A `Tally` counts the records
that resolved to one shared `attribution.Resolution`; `group_tallies` merges tallies
into `ConnectionGroup`s by (client workload, server workload, Service, port, protocol,
verdict), the rows of `netwatch analyze` and the edges' raw material for `graph`.

**Rule hits.** A rule is *hit* by a record when it appears in `allowed_by` of either side
of the record's evaluation, whatever the other side decided: the rule matched the
connection. `RuleHits` keeps count, first and last hit per rule; it is a plain
accumulator so the agent can feed it per drained connection and export it as
`netwatch_policy_rule_hits_total` / `..._last_hit_timestamp_seconds`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from netwatch.core.attribution import Resolution, VerdictKind
from netwatch.core.engine import RuleRef, SideVerdict, Verdict
from netwatch.core.identity import Identity, IdentityKind
from netwatch.core.model import Protocol

# ------------------------------------------------------------------ rule hits


@dataclass(slots=True)
class RuleHit:
    count: int = 0
    """Connection records the rule matched."""
    first: float = float("inf")
    """Earliest `first_seen` of those records (epoch seconds)."""
    last: float = float("-inf")
    """Latest `last_seen` of those records."""


class RuleHits:
    """Per-rule hit accounting (see the module doc); rules never hit are absent."""

    def __init__(self) -> None:
        self._hits: dict[RuleRef, RuleHit] = {}

    def add(
        self, decision: Verdict, *, count: int = 1, first_seen: float, last_seen: float
    ) -> None:
        """Count `count` records evaluated to `decision` against every rule that admitted them."""
        for side in (decision.egress, decision.ingress):
            for ref in side.allowed_by:
                hit = self._hits.get(ref)
                if hit is None:
                    hit = self._hits[ref] = RuleHit()
                hit.count += count
                hit.first = min(hit.first, first_seen)
                hit.last = max(hit.last, last_seen)

    def put(self, ref: RuleRef, hit: RuleHit) -> None:
        """Set one rule's accounting outright (a restored checkpoint, a filtered copy)."""
        self._hits[ref] = RuleHit(hit.count, hit.first, hit.last)

    def get(self, ref: RuleRef) -> RuleHit | None:
        return self._hits.get(ref)

    def items(self) -> list[tuple[RuleRef, RuleHit]]:
        """Every hit rule, sorted by policy, direction and rule index."""
        return sorted(self._hits.items(), key=lambda kv: _ref_key(kv[0]))

    def __len__(self) -> int:
        return len(self._hits)


def _ref_key(ref: RuleRef) -> tuple[str, str, int]:
    return (ref.policy, ref.direction.value, ref.rule)


# ------------------------------------------------------------------ tallies and groups


class Tally:
    """Records that resolved to one `Resolution`: how many, bytes, packets, when."""

    __slots__ = ("bytes", "count", "first", "last", "packets", "res")

    def __init__(self, res: Resolution) -> None:
        self.res = res
        self.count = 0
        self.bytes = 0
        self.packets = 0
        self.first = float("inf")
        self.last = float("-inf")


@dataclass(frozen=True, slots=True)
class EndpointView:
    """One side of a connection group, as written in output (DESIGN §5 enriched keys)."""

    key: str
    """`namespace/workload`, `world`/CIDR name, `node:NAME`, `service:ns/name`, `unknown:IP`."""
    kind: str
    """`pod`, `service`, `node`, `external` or `unknown`."""
    namespace: str | None
    name: str | None
    """The pod when every record of the group had the same one (else None), the node, the
    external range name, the unresolved address or Service."""
    workload: str | None
    workload_kind: str | None
    service: str | None
    """`namespace/name` of the Service the client addressed (server side only)."""


@dataclass(frozen=True, slots=True)
class ConnectionGroup:
    client: EndpointView
    server: EndpointView
    port: int
    protocol: Protocol
    verdict: VerdictKind
    egress: SideVerdict | None
    """Reasons merged over the group (union of rules and isolating policies)."""
    ingress: SideVerdict | None
    count: int
    bytes: int
    packets: int
    first_seen: float
    last_seen: float


def _view(who: Identity, *, key: str, known: bool, ip: str, service: str) -> EndpointView:
    svc = service or None
    if not known and who.kind is not IdentityKind.SERVICE:
        return EndpointView(key, "unknown", None, ip, None, None, svc)
    wl = who.workload
    return EndpointView(
        key=key,
        kind=who.kind.value,
        namespace=who.namespace,
        name=who.name,
        workload=wl.name if wl else None,
        workload_kind=wl.kind.value if wl else None,
        service=svc,
    )


def _merge_sides(all_sides: list[SideVerdict]) -> SideVerdict:
    sides = list({id(s): s for s in all_sides}.values())  # decisions are shared objects
    if len(sides) == 1:
        return sides[0]
    exempt = next((s.exempt for s in sides if s.exempt is not None), None)
    return SideVerdict(
        isolated=any(s.isolated for s in sides),
        allowed_by=tuple(sorted({r for s in sides for r in s.allowed_by}, key=_ref_key)),
        isolated_by=tuple(sorted({p for s in sides for p in s.isolated_by})),
        exempt=exempt if all(s.exempt is not None for s in sides) else None,
    )


def group_tallies(tallies: Iterable[Tally]) -> list[ConnectionGroup]:
    """Tallies grouped by (client, server, protocol, port, verdict, Service), sorted."""
    buckets: dict[tuple[str, str, str, int, str, str], list[Tally]] = defaultdict(list)
    for t in tallies:
        r = t.res
        key = (r.client_key, r.server_key, r.protocol.value, r.port, r.verdict.value, r.service_key)
        buckets[key].append(t)
    groups = []
    for key in sorted(buckets):
        members = buckets[key]
        first = members[0].res
        client = _view(
            first.client,
            key=first.client_key,
            known=first.client_known,
            ip=first.client_ip,
            service="",
        )
        server = _view(
            first.server,
            key=first.server_key,
            known=first.server_known,
            ip=first.server_ip,
            service=first.service_key,
        )
        if client.kind == "pod" and any(m.res.client.uid != first.client.uid for m in members):
            client = _replace_name(client)
        if server.kind == "pod" and any(m.res.server.uid != first.server.uid for m in members):
            server = _replace_name(server)
        decisions = [m.res.decision for m in members if m.res.decision is not None]
        groups.append(
            ConnectionGroup(
                client=client,
                server=server,
                port=first.port,
                protocol=first.protocol,
                verdict=first.verdict,
                egress=_merge_sides([d.egress for d in decisions]) if decisions else None,
                ingress=_merge_sides([d.ingress for d in decisions]) if decisions else None,
                count=sum(m.count for m in members),
                bytes=sum(m.bytes for m in members),
                packets=sum(m.packets for m in members),
                first_seen=min(m.first for m in members),
                last_seen=max(m.last for m in members),
            )
        )
    return groups


def _replace_name(view: EndpointView) -> EndpointView:
    return EndpointView(
        view.key, view.kind, view.namespace, None, view.workload, view.workload_kind, view.service
    )
