"""Attribution: who a connection was between, and what policy said about it at that time.

A `Connection` carries addresses; this module turns it into identities and a verdict
(DESIGN §2, §6):

- both addresses are resolved by the time-aware `IdentityIndex` at `first_seen` (a pod
  that held the IP then, a node, a Service ClusterIP, or an external range);
- a connection addressed to a Service ClusterIP is attributed to a backend pod and the
  port that pod sees (`Service.port` → `targetPort`, a named targetPort resolved on the
  backend pod), with the Service kept; `backends` finds the candidates (EndpointSlices
  when the snapshot has any, else the selector). A record whose capture already saw the
  DNAT (`service_ip` set) names the backend itself and only the Service is looked up;
- the pair is evaluated by the `PolicyEngine` and classified as a `VerdictKind`.

`attribute` first re-orients a record whose orientation was only guessed from port
numbers when the inventory's declared ports say otherwise (`orientation.reorient`); the
per-row hot loops do the same with `orient_row` before `resolve_fields`.

**Which backend.** A pre-DNAT record does not say which backend kube-proxy picked. When
the backends belong to several workloads (a canary next to its stable Deployment), the
connection is attributed to the workload with the most backends (ties: the smaller
`namespace/name`), and within it to the first backend pod by name that owned its address
at the connection's time; a backend that did not exist then is never chosen. With no
live backend the verdict is `unknown`.

**Unknown.** An endpoint is unresolved — verdict `unknown`, no policy evaluation — when
its address lies inside a node's pod CIDR (`Node.pod_cidrs`, plus `pod_cidrs` given to
the attributor) but no pod owned it at that time, when a Service ClusterIP has no such
port or no live backend, when a ClusterIP is the *client*, or when the index names a pod
the policy view does not hold. Every other address is a pod, a node or an external peer.

**ICMP** is never policy-evaluated (NetworkPolicy has no ICMP rules and CNIs differ):
an ICMP record between resolved endpoints is `unrestricted` with `decision=None`; one
with an unresolved endpoint is `unknown`.

**Caching.** A `Resolution` is cached per (client identity and address, server identity
and address, port, protocol, Service), so repeated records cost two or three index
lookups and a dict probe. Engine evaluations are shared more widely, per pair of policy
*classes*: pods alike in namespace, labels, container ports and the ipBlocks containing
their address, addresses alike in the ipBlocks containing them (and which node they are),
plus the loopback and node-local facts — everything the engine looks at. Pure: time is
the record's own `first_seen`.

Neighbours: `analysis` aggregates `Resolution`s into verdict counts, findings and rule
hits; `graph` into workload edges; suggestions and what-if reuse `Attributor` directly.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from netwatch.core.backends import Backend, ServiceBackends
from netwatch.core.cluster import Cluster
from netwatch.core.engine import IPBlockPodIPs, PolicyEngine, Target, Verdict, parse_ip
from netwatch.core.flow import Connection, FlowRow, Orientation
from netwatch.core.identity import Identity, IdentityIndex, IdentityKind
from netwatch.core.model import (
    POLICY_PROTOCOLS,
    Pod,
    Protocol,
)
from netwatch.core.orientation import DeclaredPorts, reorient, should_swap
from netwatch.core.policy import IPAddress, IPBlock
from netwatch.core.store import InventoryStore

_CACHE_MAX = 1 << 20
_POD, _SERVICE = IdentityKind.POD, IdentityKind.SERVICE  # module globals: cheaper per record
"""Cached resolutions before the cache starts over (bounds a long-running agent)."""


class VerdictKind(enum.Enum):
    """DESIGN §6; the value is how it is written in output."""

    ALLOWED = "allowed"
    """A policy isolates a side (or both) and rules (or an exemption) allow it."""
    UNRESTRICTED = "unrestricted"
    """No side is isolated (and every ICMP record between resolved endpoints)."""
    DENIED = "denied"
    """Policy denies it, yet it was seen: an enforcement gap."""
    UNKNOWN = "unknown"
    """An endpoint could not be resolved at the connection's time."""


VERDICT_ORDER: tuple[VerdictKind, ...] = (
    VerdictKind.ALLOWED,
    VerdictKind.DENIED,
    VerdictKind.UNRESTRICTED,
    VerdictKind.UNKNOWN,
)
"""The order verdict counts are written in (DESIGN §6's example)."""


def classify(decision: Verdict) -> VerdictKind:
    if not decision.allowed:
        return VerdictKind.DENIED
    if decision.egress.isolated or decision.ingress.isolated:
        return VerdictKind.ALLOWED
    return VerdictKind.UNRESTRICTED


@dataclass(frozen=True, slots=True, eq=False)
class Resolution:
    """Everything attribution says about a connection except the record itself.

    Shared: every record between the same identities on the same port gets the same
    object. Compared and hashed by identity (`eq=False`), so aggregations can use it as
    a dict key at the cost of a pointer hash.
    """

    client: Identity
    server: Identity
    """The backend when the connection was addressed to a Service ClusterIP."""
    port: int
    """Server port as the backend sees it (a Service port mapped to its targetPort)."""
    protocol: Protocol
    service: Identity | None
    verdict: VerdictKind
    decision: Verdict | None
    """Engine reasons; None for ICMP and unknown verdicts."""
    client_ip: str
    server_ip: str
    """The backend's address when a Service was addressed."""
    client_known: bool = True
    server_known: bool = True
    note: str | None = None
    """Why the verdict is `unknown` (or another caveat), for humans."""
    client_key: str = ""
    """`peer_key` of the client: `namespace/workload`, `world`, `node:NAME`, ..."""
    server_key: str = ""
    service_key: str = ""
    """`namespace/name` of the Service, or empty."""


@dataclass(frozen=True, slots=True)
class Attributed:
    """One connection with its identities and verdict (see the module doc)."""

    connection: Connection
    client: Identity
    """What the client address was at `connection.first_seen`."""
    server: Identity
    """The backend pod when the connection was addressed to a Service ClusterIP."""
    port: int
    """Server port as the backend sees it (Service port → targetPort, named ports resolved)."""
    protocol: Protocol
    service: Identity | None
    """The Service when addressed to a ClusterIP (or `connection.service_ip` was set)."""
    verdict: VerdictKind
    decision: Verdict | None
    """Engine verdict with reasons; None for ICMP and unknown verdicts."""
    resolution: Resolution
    """The shared, connection-independent part (what `Attributor.resolve` returns)."""

    @classmethod
    def of(cls, connection: Connection, res: Resolution) -> Attributed:
        """`connection` with what `res` says about it (the fields copied out for reading)."""
        return cls(
            connection=connection,
            client=res.client,
            server=res.server,
            port=res.port,
            protocol=res.protocol,
            service=res.service,
            verdict=res.verdict,
            decision=res.decision,
            resolution=res,
        )


@dataclass(frozen=True, slots=True)
class _View:
    """An endpoint as the engine sees it: its target (None: unresolved) and policy class."""

    who: Identity
    target: Target | None
    cls: int
    why: str | None


def _note(view: _View, side: str) -> str | None:
    return None if view.why is None else f"{side}: {view.why}"


def peer_key(identity: Identity, *, known: bool = True, ip: str | None = None) -> str:
    """How an endpoint is named in aggregated output.

    Pods as `namespace/workload`; externals as `world` or their CIDR name (DESIGN §6);
    nodes (and hostNetwork pods) as `node:NAME`; an unresolved Service as
    `service:namespace/name`; an unresolved address as `unknown:IP`.
    """
    if not known and identity.kind is not IdentityKind.SERVICE:
        return f"unknown:{ip or identity.name}"
    match identity.kind:
        case IdentityKind.POD:
            workload = identity.workload
            return f"{identity.namespace}/{workload.name if workload else identity.name}"
        case IdentityKind.NODE:
            return f"node:{identity.name}"
        case IdentityKind.SERVICE:
            return f"service:{identity.namespace}/{identity.name}"
    return identity.name


class Attributor:
    """Resolves and evaluates connections against one cluster view (see the module doc).

    `index` answers "who held this IP at t"; `engine` holds the policies and the pods it
    evaluates (`cluster` defaults to `engine.cluster`). `pod_cidrs` adds cluster pod
    ranges to the nodes' `podCIDR`s (CNIs with their own IPAM do not fill those in):
    an address inside them that no pod held is `unknown`, not an external peer.
    """

    def __init__(
        self,
        *,
        index: IdentityIndex,
        engine: PolicyEngine,
        cluster: Cluster | None = None,
        pod_cidrs: Iterable[str] = (),
    ) -> None:
        self.index = index
        self._lookup = index.lookup
        self.engine = engine
        self.cluster = cluster if cluster is not None else engine.cluster
        self._pods_by_uid: dict[str, Pod] = {p.uid: p for p in self.cluster.pods}
        self._pods_by_key: dict[str, Pod] = {p.key: p for p in self.cluster.pods}
        self._pod_ranges = tuple(self.cluster.pod_ranges(pod_cidrs))
        self._cache: dict[tuple[object, ...], tuple[Identity, Identity, Resolution]] = {}
        self.backends = ServiceBackends(self.cluster)
        self._declared = DeclaredPorts(self.cluster)
        self._backends: dict[tuple[int, int, int], tuple[Identity, tuple[Backend, ...] | str]] = {}
        self._views: dict[tuple[int, str], _View] = {}
        self._classes: dict[tuple[object, ...], int] = {}
        blocks = {
            p.ip_block: None
            for pol in self.cluster.policies
            for rules in (pol.ingress, pol.egress)
            for r in rules
            for p in r.peers or ()
            if p.ip_block is not None
        }
        self._ip_blocks: tuple[IPBlock, ...] = tuple(blocks)
        self._blocks_match_pods = engine.ipblock_pod_ips is IPBlockPodIPs.MATCH
        self._evaluations: dict[tuple[int, int, int, int, bool, bool], Verdict] = {}
        self.evaluations = 0
        """Engine evaluations done (the rest were answered from the cache)."""

    @classmethod
    def from_cluster(
        cls,
        cluster: Cluster,
        *,
        ipblock_pod_ips: IPBlockPodIPs = IPBlockPodIPs.MATCH,
        named_cidrs: Mapping[str, str] | None = None,
        pod_cidrs: Iterable[str] = (),
    ) -> Attributor:
        """An attributor over a snapshot: its objects count from their creationTimestamp
        (else for all time), as `netwatch inventory` reads snapshots."""
        index = IdentityIndex(named_cidrs=named_cidrs)
        InventoryStore.from_cluster(cluster, at=-math.inf, index=index)
        engine = PolicyEngine(cluster, ipblock_pod_ips=ipblock_pod_ips)
        return cls(index=index, engine=engine, cluster=cluster, pod_cidrs=pod_cidrs)

    # ------------------------------------------------------------------ API

    def attribute(self, conn: Connection) -> Attributed:
        if conn.orientation is Orientation.HEURISTIC:
            conn = reorient(
                conn,
                client=self._lookup(conn.client_ip, conn.first_seen),
                server=self._lookup(conn.server_ip, conn.first_seen),
                declared=self._declared,
            )
        res = self.resolve(
            client_ip=conn.client_ip,
            server_ip=conn.server_ip,
            server_port=conn.server_port,
            protocol=conn.protocol,
            at=conn.first_seen,
            service_ip=conn.service_ip,
        )
        return Attributed.of(conn, res)

    def orient_row(self, row: FlowRow) -> FlowRow:
        """`row` oriented as `attribute` orients a `Connection`: its ends swapped when its
        orientation was guessed and the declared ports say the guess is backwards."""
        cip, sip, sport, proto, first, last, nbytes, npackets, svc, cport, guessed = row
        if not guessed or svc is not None:
            return row
        lookup = self._lookup
        if should_swap(self._declared, lookup(cip, first), cport, lookup(sip, first), sport, proto):
            return (sip, cip, cport, proto, first, last, nbytes, npackets, svc, sport, guessed)
        return row

    def resolve(
        self,
        *,
        client_ip: str,
        server_ip: str,
        server_port: int,
        protocol: Protocol,
        at: float,
        service_ip: str | None = None,
    ) -> Resolution:
        """Identities and verdict for one record's fields (cached; see the module doc).

        Raises ValueError for a malformed address (flow logs are validated on reading).
        """
        return self.resolve_fields(client_ip, server_ip, server_port, protocol, at, service_ip)

    def resolve_fields(  # noqa: PLR0917 - the hot loop calls it positionally, once per record
        self,
        client_ip: str,
        server_ip: str,
        server_port: int,
        protocol: Protocol,
        at: float,
        service_ip: str | None,
    ) -> Resolution:
        """`resolve` with positional arguments, for per-record loops."""
        lookup = self._lookup
        client = lookup(client_ip, at)
        server = lookup(server_ip, at)
        service: Identity | None = None
        port = server_port
        if service_ip is not None:
            # Capture saw the DNAT: the server is already the backend and its port.
            found = lookup(service_ip, at)
            service = found if found.kind is _SERVICE else None
        elif server.kind is _SERVICE and client.kind is not _SERVICE:
            picked = self._pick_backend(server, server_port, protocol, at)
            if isinstance(picked, str):
                return self._unresolved_service(
                    client=client,
                    client_ip=client_ip,
                    service=server,
                    service_ip=server_ip,
                    protocol=protocol,
                    port=port,
                    why=picked,
                )
            service = server
            server, server_ip, port = picked
        # id() of the Protocol member: an Enum's __hash__ is Python code, too slow per record.
        key = (id(client), client_ip, id(server), server_ip, port, id(protocol), id(service))
        entry = self._cache.get(key)
        if entry is not None and entry[0] is client and entry[1] is server:
            return entry[2]
        res = self._evaluate(
            client=client,
            client_ip=client_ip,
            server=server,
            server_ip=server_ip,
            port=port,
            protocol=protocol,
            service=service,
        )
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = (client, server, res)
        return res

    # ------------------------------------------------------------------ evaluation

    def _evaluate(
        self,
        *,
        client: Identity,
        client_ip: str,
        server: Identity,
        server_ip: str,
        port: int,
        protocol: Protocol,
        service: Identity | None,
    ) -> Resolution:
        client_view = self._view(client, client_ip)
        server_view = self._view(server, server_ip)
        client_target, server_target = client_view.target, server_view.target
        decision: Verdict | None = None
        note: str | None = None
        if client_target is None or server_target is None:
            verdict = VerdictKind.UNKNOWN
            note = _note(client_view, "client") or _note(server_view, "server")
        elif protocol not in POLICY_PROTOCOLS:
            verdict, note = VerdictKind.UNRESTRICTED, f"{protocol.value} is not policy-evaluated"
        else:
            decision = self._decide(client_view, server_view, port, protocol)
            verdict = classify(decision)
        client_known, server_known = client_target is not None, server_target is not None
        return Resolution(
            client=client,
            server=server,
            port=port,
            protocol=protocol,
            service=service,
            verdict=verdict,
            decision=decision,
            client_ip=client_ip,
            server_ip=server_ip,
            client_known=client_known,
            server_known=server_known,
            note=note,
            client_key=peer_key(client, known=client_known, ip=client_ip),
            server_key=peer_key(server, known=server_known, ip=server_ip),
            service_key=service.key if service is not None else "",
        )

    def _decide(self, client: _View, server: _View, port: int, protocol: Protocol) -> Verdict:
        """Engine verdicts, shared by every pair of endpoints policy cannot tell apart.

        Two pods are alike for policy when they have the same namespace, labels and
        container ports and the same ipBlocks contain their address; two addresses when
        the same ipBlocks contain them and they are the same node (or none). What else
        the engine looks at is in the key: loopback (same pod) and node-local traffic
        (the client is the server pod's node).
        """
        c, s = client.target, server.target
        assert c is not None and s is not None
        same_pod = c.pod is not None and s.pod is not None and c.pod.uid == s.pod.uid
        node_local = c.pod is None and s.pod is not None and c.node == s.pod.node_name
        key = (client.cls, server.cls, port, id(protocol), same_pod, node_local)
        found = self._evaluations.get(key)
        if found is None:
            found = self.engine.evaluate(c, s, port, protocol)
            self.evaluations += 1
            if len(self._evaluations) >= _CACHE_MAX:
                self._evaluations.clear()
            self._evaluations[key] = found
        return found

    def _view(self, who: Identity, ip: str) -> _View:
        """The engine's view of an endpoint and its policy class (cached per identity and IP)."""
        key = (id(who), ip)
        hit = self._views.get(key)
        if hit is not None and hit.who is who:
            return hit
        view = self._make_view(who, ip)
        if len(self._views) >= _CACHE_MAX:
            self._views.clear()
        self._views[key] = view
        return view

    def _make_view(self, who: Identity, ip: str) -> _View:
        address = parse_ip(ip)
        match who.kind:
            case IdentityKind.POD:
                pod = self._pods_by_uid.get(who.uid or "") or self._pods_by_key.get(who.key)
                if pod is None or pod.key not in self.engine.index:
                    return _View(who, None, -1, f"pod {who.key} is not in the policy view")
                blocks = self._blocks_containing(address) if self._blocks_match_pods else ()
                cls = self._class_id(
                    ("pod", pod.namespace, pod.labels, pod.container_ports, blocks)
                )
                return _View(who, Target(pod=pod, ip=address, node=pod.node_name), cls, None)
            case IdentityKind.NODE:
                cls = self._class_id(("node", who.name, self._blocks_containing(address)))
                return _View(who, Target(ip=address, node=who.name), cls, None)
            case IdentityKind.SERVICE:
                return _View(who, None, -1, f"a Service ClusterIP ({who.key})")
        if address is not None and any(address in net for net in self._pod_ranges):
            return _View(who, None, -1, f"{ip} is in a pod range but no pod held it then")
        cls = self._class_id(("ip", self._blocks_containing(address)))
        return _View(who, Target(ip=address), cls, None)

    def _blocks_containing(self, address: IPAddress | None) -> tuple[int, ...]:
        if address is None:
            return ()
        return tuple(i for i, b in enumerate(self._ip_blocks) if b.contains(address))

    def _class_id(self, key: tuple[object, ...]) -> int:
        found = self._classes.get(key)
        if found is None:
            found = self._classes[key] = len(self._classes)
        return found

    # ------------------------------------------------------------------ Services

    def _unresolved_service(
        self,
        *,
        client: Identity,
        client_ip: str,
        service: Identity,
        service_ip: str,
        protocol: Protocol,
        port: int,
        why: str,
    ) -> Resolution:
        key = ("svc", id(client), client_ip, id(service), port, id(protocol), why)
        entry = self._cache.get(key)
        if entry is not None and entry[0] is client and entry[1] is service:
            return entry[2]
        client_view = self._view(client, client_ip)
        client_known = client_view.target is not None
        res = Resolution(
            client=client,
            server=service,
            port=port,
            protocol=protocol,
            service=service,
            verdict=VerdictKind.UNKNOWN,
            decision=None,
            client_ip=client_ip,
            server_ip=service_ip,
            client_known=client_known,
            server_known=False,
            note=why,
            client_key=peer_key(client, known=client_known, ip=client_ip),
            server_key=peer_key(service, known=False, ip=service_ip),
            service_key=service.key,
        )
        self._cache[key] = (client, service, res)
        return res

    def _pick_backend(
        self, service: Identity, port: int, protocol: Protocol, at: float
    ) -> tuple[Identity, str, int] | str:
        """(backend identity, address, target port), or why there is none."""
        cached = self._backends.get((id(service), port, id(protocol)))
        if cached is None or cached[0] is not service:
            cached = (service, self.backends.candidates(service.key, port, protocol))
            self._backends[(id(service), port, id(protocol))] = cached
        backends = cached[1]
        if isinstance(backends, str):
            return backends
        lookup = self._lookup
        for b in backends:
            who = lookup(b.ip, at)
            if who.kind is _POD and who.uid == b.pod.uid:
                return who, b.ip, b.port
            if who.kind is IdentityKind.NODE and b.pod.host_network:
                return who, b.ip, b.port
        return f"Service {service.key} had no backend for {protocol.value}/{port} at that time"
