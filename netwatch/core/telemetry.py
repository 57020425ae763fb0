"""Telemetry: the immutable snapshot the agent publishes, and the accumulator that builds it.

The agent drains capture deltas, attributes them (`attribution.Attributor.attribute`) and
folds each `Attributed` record into a `TelemetryAccumulator`; after every drain it takes
a `snapshot()` and publishes it. Scrapes (`netwatch.metrics`) and the HTTP API
(`netwatch.server`) read only published snapshots — frozen values, safe to share
between threads without locks (DESIGN §8, STYLE 7). Pure: time is always passed in.

**What is counted.** Per flow series — labels `src_namespace, src_workload,
dst_namespace, dst_workload, dst_port, protocol, verdict` (`FLOW_LABELS`) — connections
(`flows`), bytes and packets (both directions, whole IP packets, DESIGN §5). Capture
delivers *deltas*: a long conversation arrives in many drains. Bytes and packets add up
every delta; a conversation (its 5-tuple, either orientation) counts as one flow the
first time it is seen, and again only after it was idle for `conversation_idle`
seconds (a reused 5-tuple is a new connection). Rule hits count the same way, via
`analysis.RuleHits` (hit = the rule is in `allowed_by` of either side); their last-hit
time is the latest `last_seen`.

**Labels.** A peer is `(namespace, workload)`: pods as their namespace and top-owner
workload name (DESIGN §2); external addresses as `("", "world")` or `("", NAME)` of a
configured CIDR (the identity index does the collapsing); nodes and hostNetwork pods as
`("", "node:NAME")`; a Service ClusterIP without a backend as `(ns, "service:NAME")`;
any other unresolved address as `("", "unknown")`. `dst_port` is the server port as the
backend sees it. Client ports never become labels.

**Cardinality — the formula.** With `P` = live workloads (plus deleted ones inside the
grace period) + nodes + Services + configured CIDR names + 2 (`world`, `unknown`),
`max_ports` the per-destination port cap, 4 protocols and 4 verdicts, each flow family
holds at most

    series <= P^2 * (max_ports + 1) * 4 * 4          (`flow_series_bound`)

and in practice `sum over observed (src, dst) edges of distinct (port, protocol,
verdict)`. The `+ 1` is the `other` port: once a destination peer has `max_ports`
distinct port labels, further ports (a mis-oriented UDP conversation with a random
"server" port, a scan) are counted under `dst_port="other"`. Independent of traffic:
neither ephemeral ports nor distinct external IPs add series. Rule series are bounded
by the rules of the current policies (plus deleted ones inside the grace period); the
detail series by the flow series.

**Deletion.** `observe_inventory(live=..., policies=..., at=...)` says which peers and
policy rules exist now; a workload, node or Service peer absent from it since `at` has
its series dropped by `expire(now)` once `now - at >= grace` (externals and `unknown` are
bounded by configuration and never expire). Rules of deleted or shrunk policies go the
same way. A peer that comes back before then keeps its counters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from hashlib import blake2b
from typing import NamedTuple

from netwatch.core.analysis import FlowFindingKind, RuleHits
from netwatch.core.attribution import Attributed, VerdictKind
from netwatch.core.cluster import Cluster
from netwatch.core.engine import RuleRef
from netwatch.core.flow import Connection
from netwatch.core.identity import Identity, IdentityKind
from netwatch.core.model import Direction, Protocol
from netwatch.core.policy import NetworkPolicy
from netwatch.core.traffic import RuleHit

DEFAULT_GRACE = 300.0
"""Seconds a deleted workload's (or rule's) series survive, so its last increments are
scraped and late-drained connections still land on them."""
DEFAULT_MAX_PORTS = 32
"""Distinct `dst_port` labels per destination peer before `other` takes the rest."""
DEFAULT_CONVERSATION_IDLE = 120.0
"""Seconds without a delta after which a 5-tuple's next delta is a new connection."""
OTHER_PORT = "other"
UNKNOWN_PEER = "unknown"
NODE_PREFIX = "node:"
SERVICE_PREFIX = "service:"

FLOW_LABELS = (
    "src_namespace",
    "src_workload",
    "dst_namespace",
    "dst_workload",
    "dst_port",
    "protocol",
    "verdict",
)
RULE_LABELS = ("namespace", "policy", "direction", "rule")
UNEXPECTED_LABELS = FLOW_LABELS[:-1]
"""The unexpected-flow detail series: a flow key without the verdict (always denied)."""

UNEXPECTED_FLOW = FlowFindingKind.UNEXPECTED_FLOW.value
UNUSED_RULE = FlowFindingKind.UNUSED_RULE.value
UNPROTECTED_WORKLOAD = FlowFindingKind.UNPROTECTED_WORKLOAD.value

Peer = tuple[str, str]
"""`(namespace, workload)` label values of one end of a flow (see the module doc)."""


# ------------------------------------------------------------------ snapshot values


class FlowKey(NamedTuple):
    """One flow series; field order is `FLOW_LABELS` (a tuple, so it is the label list)."""

    src_namespace: str
    src_workload: str
    dst_namespace: str
    dst_workload: str
    dst_port: str
    protocol: str
    verdict: str


class FlowCounts(NamedTuple):
    flows: int
    bytes: int
    packets: int
    last_seen: float
    """Latest `last_seen` of the connections counted (epoch seconds)."""


@dataclass(frozen=True, slots=True)
class RuleHitRow:
    """One rule of a current (or recently deleted) policy; `hits == 0` rules are included."""

    namespace: str
    policy: str
    """The policy name, without namespace."""
    direction: str
    rule: int
    hits: int
    last_hit: float | None
    """Latest `last_seen` of a connection the rule admitted; None while never hit."""

    @property
    def labels(self) -> tuple[str, str, str, str]:
        return (self.namespace, self.policy, self.direction, str(self.rule))


@dataclass(frozen=True, slots=True)
class UnexpectedFlow:
    """Denied yet observed (DESIGN §6), per workload pair, port and protocol."""

    key: tuple[str, str, str, str, str, str]
    """Values of `UNEXPECTED_LABELS`."""
    flows: int
    bytes: int
    packets: int
    last_seen: float


@dataclass(frozen=True, slots=True)
class Health:
    """The agent's own state, as the metrics report it (all cumulative values as totals)."""

    capture_lost: int = 0
    """Packets the kernel counted but that were never drained (evictions, failures)."""
    bpf_map_entries: tuple[tuple[str, int], ...] = ()
    """(map name, entries at the last drain)."""
    inventory_objects: tuple[tuple[str, int], ...] = ()
    """(kind, objects held), e.g. ("Pod", 212)."""
    watch_restarts: int = 0
    inventory_stale_seconds: float = 0.0
    """0 while every watch is current (`LiveSource.stale_seconds`)."""


@dataclass(frozen=True, slots=True)
class BuildInfo:
    version: str
    python: str = ""
    node: str = ""


@dataclass(frozen=True, slots=True)
class TelemetrySnapshot:
    """Everything one scrape or API call shows; built once per drain, never mutated."""

    generated_at: float
    build: BuildInfo
    flows: tuple[tuple[FlowKey, FlowCounts], ...] = ()
    """Sorted by key."""
    rule_hits: tuple[RuleHitRow, ...] = ()
    """Sorted by namespace, policy, direction, rule."""
    findings: tuple[tuple[str, int], ...] = ()
    """(kind, count), sorted by kind; the traffic-derived kinds are always present."""
    unused_rules: tuple[RuleHitRow, ...] = ()
    """Rules of current policies no connection has matched since the agent started."""
    unexpected_flows: tuple[UnexpectedFlow, ...] = ()
    health: Health = Health()

    @classmethod
    def empty(cls, *, build: BuildInfo, at: float) -> TelemetrySnapshot:
        """What is published before the first drain."""
        return cls(generated_at=at, build=build, findings=_derived_findings(0, 0, 0))


# ------------------------------------------------------------------ labels


def peer_of(identity: Identity, *, known: bool) -> Peer:
    """The label values of one end of a connection (see the module doc)."""
    if not known and identity.kind is not IdentityKind.SERVICE:
        return ("", UNKNOWN_PEER)
    match identity.kind:
        case IdentityKind.POD:
            workload = identity.workload
            return (identity.namespace or "", workload.name if workload else identity.name)
        case IdentityKind.NODE:
            return ("", NODE_PREFIX + identity.name)
        case IdentityKind.SERVICE:
            return (identity.namespace or "", SERVICE_PREFIX + identity.name)
    return ("", identity.name)  # external: `world` or a configured CIDR name


def expires(peer: Peer) -> bool:
    """Whether a peer is a cluster object (expires when deleted) rather than a fixed name."""
    return bool(peer[0]) or peer[1].startswith(NODE_PREFIX)


def live_peers(cluster: Cluster) -> frozenset[Peer]:
    """Every peer the cluster's current objects can produce, for `observe_inventory`."""
    peers: set[Peer] = {(p.namespace, cluster.workload_of(p).name) for p in cluster.pods}
    peers.update(("", NODE_PREFIX + n.name) for n in cluster.nodes)
    peers.update((s.namespace, SERVICE_PREFIX + s.name) for s in cluster.services)
    return frozenset(peers)


def policy_rules(policies: Iterable[NetworkPolicy]) -> frozenset[RuleRef]:
    """Every rule of a direction its policy isolates (only those can be hit or unused)."""
    return frozenset(
        RuleRef(p.key, d, i)
        for p in policies
        for d in Direction
        if p.isolates(d)
        for i in range(len(p.rules(d)))
    )


def flow_series_bound(
    *,
    peers: int,
    max_ports: int = DEFAULT_MAX_PORTS,
    protocols: int = len(Protocol),
    verdicts: int = len(VerdictKind),
) -> int:
    """The documented upper bound on the series of one flow family (see the module doc)."""
    return peers * peers * (max_ports + 1) * protocols * verdicts


# ------------------------------------------------------------------ the accumulator


class _Counts:
    __slots__ = ("bytes", "flows", "last_seen", "packets")

    def __init__(self) -> None:
        self.flows = self.bytes = self.packets = 0
        self.last_seen = -math.inf


def _conversation(conn: Connection) -> int:
    """The 5-tuple regardless of orientation (a later drain may orient it better), hashed:
    an int per active conversation instead of a tuple holding its strings (about a third
    of the memory at 100,000 connections; 64-bit collisions are negligible at that size).

    BLAKE2b rather than `hash()`: string hashes change with every interpreter start, and
    these ids outlive the process in the agent's checkpoint — a connection open across a
    restart must still be recognised (about 0.6 µs per record)."""
    a, b = (conn.client_ip, conn.client_port), (conn.server_ip, conn.server_port)
    low, high = (a, b) if a <= b else (b, a)
    text = f"{conn.protocol.value}|{low[0]}|{low[1]}|{high[0]}|{high[1]}".encode()
    return int.from_bytes(blake2b(text, digest_size=8).digest(), "little", signed=True)


def _rule_key(ref: RuleRef) -> tuple[str, str, int]:
    return (ref.policy, ref.direction.value, ref.rule)


def _derived_findings(
    unexpected: int, unused: int, unprotected: int
) -> tuple[tuple[str, int], ...]:
    return tuple(
        sorted(
            {
                UNEXPECTED_FLOW: unexpected,
                UNUSED_RULE: unused,
                UNPROTECTED_WORKLOAD: unprotected,
            }.items()
        )
    )


@dataclass(frozen=True, slots=True)
class AccumulatorState:
    """What a `TelemetryAccumulator` carries across an agent restart (its checkpoint): the
    counters, the `other`-port assignments, deletion clocks, and the conversation ids
    that keep a connection open across the restart from counting twice. Settings
    (grace, port cap, idle time) are configuration, not state."""

    flows: tuple[tuple[FlowKey, FlowCounts], ...] = ()
    ports: tuple[tuple[Peer, tuple[str, ...]], ...] = ()
    gone: tuple[tuple[Peer, float], ...] = ()
    unprotected: tuple[Peer, ...] = ()
    conversations: tuple[tuple[int, float], ...] = ()
    hits: tuple[tuple[RuleRef, RuleHit], ...] = ()
    gone_rules: tuple[tuple[RuleRef, float], ...] = ()


class TelemetryAccumulator:
    """Folds attributed connections into counters; `snapshot()` freezes them.

    Not thread-safe: one owner (the agent's drain loop) calls everything; other threads
    only ever see the snapshots.
    """

    def __init__(
        self,
        *,
        grace: float = DEFAULT_GRACE,
        max_ports: int = DEFAULT_MAX_PORTS,
        conversation_idle: float = DEFAULT_CONVERSATION_IDLE,
    ) -> None:
        if max_ports < 1:
            raise ValueError("max_ports must be at least 1")
        self.grace = grace
        self.max_ports = max_ports
        self.conversation_idle = conversation_idle
        self._flows: dict[FlowKey, _Counts] = {}
        self._ports: dict[Peer, set[str]] = {}
        """Port labels given out per destination peer (the `other` cap)."""
        self._peers: set[Peer] = set()
        """Expiring peers referenced by any series or state."""
        self._gone: dict[Peer, float] = {}
        """Peer → when the inventory stopped listing it."""
        self._unprotected: set[Peer] = set()
        self._conversations: dict[int, float] = {}
        """Conversation → latest `last_seen` (which deltas are new connections)."""
        self._hits = RuleHits()
        self._rules: frozenset[RuleRef] = frozenset()
        self._gone_rules: dict[RuleRef, float] = {}

    # ------------------------------------------------------------------ input

    def add(self, item: Attributed) -> None:
        """Count one drained record (a delta of a conversation, or a whole connection)."""
        conn = item.connection
        res = item.resolution
        src = peer_of(item.client, known=res.client_known)
        dst = peer_of(item.server, known=res.server_known)
        key = FlowKey(
            src[0],
            src[1],
            dst[0],
            dst[1],
            self._port_label(dst, item.port),
            item.protocol.value,
            item.verdict.value,
        )
        new = self._is_new(conn)
        counts = self._flows.get(key)
        if counts is None:
            counts = self._flows[key] = _Counts()
            for peer in (src, dst):
                if expires(peer):
                    self._peers.add(peer)
        counts.flows += int(new)
        counts.bytes += conn.bytes_out + conn.bytes_in
        counts.packets += conn.packets_out + conn.packets_in
        counts.last_seen = max(counts.last_seen, conn.last_seen)
        decision = item.decision
        if decision is None:
            return
        self._hits.add(
            decision, count=int(new), first_seen=conn.first_seen, last_seen=conn.last_seen
        )
        if item.server.kind is IdentityKind.POD:
            ingress = decision.ingress
            if not ingress.isolated and ingress.exempt is None:
                self._unprotected.add(dst)
            elif ingress.isolated:
                self._unprotected.discard(dst)  # the latest evaluation says it is isolated now

    def add_all(self, items: Iterable[Attributed]) -> int:
        added = 0
        for item in items:
            self.add(item)
            added += 1
        return added

    def _port_label(self, dst: Peer, port: int) -> str:
        label = str(port)
        given = self._ports.get(dst)
        if given is None:
            given = self._ports[dst] = set()
        if label in given:
            return label
        if len(given) >= self.max_ports:
            return OTHER_PORT
        given.add(label)
        return label

    def _is_new(self, conn: Connection) -> bool:
        key = _conversation(conn)
        last = self._conversations.get(key)
        self._conversations[key] = conn.last_seen if last is None else max(last, conn.last_seen)
        return last is None or conn.first_seen - last > self.conversation_idle

    # ------------------------------------------------------------------ inventory and expiry

    def observe_inventory(
        self, *, live: Iterable[Peer], policies: Iterable[NetworkPolicy], at: float
    ) -> None:
        """Which peers (`live_peers`) and policies exist at `at`; call after each change."""
        present = frozenset(live)
        for peer in self._peers:
            if peer in present:
                self._gone.pop(peer, None)
            else:
                self._gone.setdefault(peer, at)
        self._rules = policy_rules(policies)
        for ref, _ in self._hits.items():
            if ref in self._rules:
                self._gone_rules.pop(ref, None)
            else:
                self._gone_rules.setdefault(ref, at)

    def expire(self, now: float) -> int:
        """Drop what was deleted `grace` seconds ago and forget idle conversations.

        Returns the number of flow series dropped.
        """
        cutoff = now - self.grace
        dead = {peer for peer, since in self._gone.items() if since <= cutoff}
        dropped = 0
        if dead:
            for key in [k for k in self._flows if (k[0], k[1]) in dead or (k[2], k[3]) in dead]:
                del self._flows[key]
                dropped += 1
            for peer in dead:
                self._ports.pop(peer, None)
                self._unprotected.discard(peer)
                self._peers.discard(peer)
                del self._gone[peer]
        dead_rules = {ref for ref, since in self._gone_rules.items() if since <= cutoff}
        if dead_rules:
            self._hits = _without(self._hits, dead_rules)
            for ref in dead_rules:
                del self._gone_rules[ref]
        idle = now - self.conversation_idle
        self._conversations = {k: t for k, t in self._conversations.items() if t >= idle}
        return dropped

    # ------------------------------------------------------------------ checkpoint

    def state(self) -> AccumulatorState:
        """Everything needed to continue after a restart, as plain sorted values."""
        return AccumulatorState(
            flows=tuple(
                sorted(
                    (k, FlowCounts(c.flows, c.bytes, c.packets, c.last_seen))
                    for k, c in self._flows.items()
                )
            ),
            ports=tuple(sorted((peer, tuple(sorted(p))) for peer, p in self._ports.items())),
            gone=tuple(sorted(self._gone.items())),
            unprotected=tuple(sorted(self._unprotected)),
            conversations=tuple(self._conversations.items()),
            hits=tuple(self._hits.items()),
            gone_rules=tuple(sorted(self._gone_rules.items(), key=lambda kv: _rule_key(kv[0]))),
        )

    def restore(self, state: AccumulatorState) -> None:
        """Continue from `state` (a fresh accumulator only: restoring merges nothing)."""
        if self._flows or self._conversations or len(self._hits):
            raise RuntimeError("restore() needs a fresh accumulator")
        for key, c in state.flows:
            counts = self._flows[key] = _Counts()
            counts.flows, counts.bytes, counts.packets = c.flows, c.bytes, c.packets
            counts.last_seen = c.last_seen
            for peer in ((key[0], key[1]), (key[2], key[3])):
                if expires(peer):
                    self._peers.add(peer)
        self._ports = {peer: set(labels) for peer, labels in state.ports}
        self._gone = dict(state.gone)
        self._unprotected = set(state.unprotected)
        self._conversations = dict(state.conversations)
        for ref, hit in state.hits:
            self._hits.put(ref, hit)
        self._gone_rules = dict(state.gone_rules)

    # ------------------------------------------------------------------ output

    @property
    def series(self) -> int:
        """Flow series held (per flow family)."""
        return len(self._flows)

    @property
    def conversations(self) -> int:
        """Conversations remembered to count connections once (memory: one entry each)."""
        return len(self._conversations)

    def snapshot(
        self,
        *,
        now: float,
        build: BuildInfo,
        health: Health | None = None,
        static_findings: Mapping[str, int] | None = None,
    ) -> TelemetrySnapshot:
        """Freeze the counters. `static_findings` (lint kinds → count, e.g. from
        `lint.lint`) are merged in; the traffic-derived kinds are computed here."""
        flows = tuple(
            sorted(
                (
                    (k, FlowCounts(c.flows, c.bytes, c.packets, c.last_seen))
                    for k, c in self._flows.items()
                ),
                key=lambda kv: kv[0],
            )
        )
        rows, unused = self._rule_rows()
        unexpected = _unexpected(flows)
        findings = dict(static_findings or {})
        findings.update(_derived_findings(len(unexpected), len(unused), len(self._unprotected)))
        return TelemetrySnapshot(
            generated_at=now,
            build=build,
            flows=flows,
            rule_hits=rows,
            findings=tuple(sorted(findings.items())),
            unused_rules=unused,
            unexpected_flows=unexpected,
            health=health or Health(),
        )

    def _rule_rows(self) -> tuple[tuple[RuleHitRow, ...], tuple[RuleHitRow, ...]]:
        """Every current rule (hit or not) and every hit rule still inside its grace
        period; and the current rules never hit."""
        refs = set(self._rules)
        refs.update(ref for ref, _ in self._hits.items())
        rows: list[RuleHitRow] = []
        unused: list[RuleHitRow] = []
        for ref in sorted(refs, key=_rule_key):
            hit = self._hits.get(ref)
            namespace, _, name = ref.policy.partition("/")
            rows.append(
                RuleHitRow(
                    namespace=namespace,
                    policy=name,
                    direction=ref.direction.value,
                    rule=ref.rule,
                    hits=hit.count if hit else 0,
                    last_hit=hit.last if hit else None,
                )
            )
            if hit is None:
                unused.append(rows[-1])  # only current rules can lack a hit entry
        return tuple(rows), tuple(unused)


def _without(hits: RuleHits, drop: set[RuleRef]) -> RuleHits:
    """A copy of `hits` without the `drop` rules (RuleHits only accumulates)."""
    kept = RuleHits()
    for ref, hit in hits.items():
        if ref not in drop:
            kept.put(ref, hit)
    return kept


def _unexpected(flows: tuple[tuple[FlowKey, FlowCounts], ...]) -> tuple[UnexpectedFlow, ...]:
    denied = VerdictKind.DENIED.value
    merged: dict[tuple[str, str, str, str, str, str], list[float]] = {}
    for key, c in flows:
        if key.verdict != denied:
            continue
        acc = merged.setdefault(key[:6], [0, 0, 0, -math.inf])
        acc[0] += c.flows
        acc[1] += c.bytes
        acc[2] += c.packets
        acc[3] = max(acc[3], c.last_seen)
    return tuple(
        UnexpectedFlow(key=k, flows=int(a[0]), bytes=int(a[1]), packets=int(a[2]), last_seen=a[3])
        for k, a in sorted(merged.items())
    )
