"""Time-aware identity of every IP: the pod, Service, node or outside network it was at t.

A flow record says "10.244.1.5 talked to 10.96.0.10 at 1764250000.12"; analysis,
metrics and suggestions need "shop/cart (Deployment) talked to Service kube-system/kube-dns".
`IdentityIndex.lookup(ip, at)` answers that for the moment of the connection, not for
now: pods come and go and their IPs are reused (DESIGN §2).

The index is fed by `netwatch.core.store.InventoryStore` (which a live watch or the
snapshot loader feeds) and read on the flow path, so lookups are the hot path: an IP
with one current owner is one dict probe and one comparison, and every `Identity` is
built once when its object changes, never per lookup.

Each holder's hold on an IP is a *claim* interval `[start, end)` (`netwatch.core.claims`),
opened when the object is first seen with the IP at `at` and closed when it changes,
loses the IP or goes away. Who owns an IP at time t — the rule, in order:

1. A live claim (`start <= t < end`) beats a tombstone. A tombstone is a claim ended by
   deletion, still answering for `grace` seconds after `end`, so late connections
   resolve and a deleted pod's IP is not "world" until its replacement shows up.
2. Among live claims: node objects, then hostNetwork pods (they resolve to their node),
   then Services, then pods (cross-kind clashes only exist in broken clusters; the
   order makes answers deterministic). Then a Running pod beats a Pending/Unknown one,
   then the most recently started (`creationTimestamp`, else when first seen), then the
   greatest claim key. Succeeded/Failed pods claim nothing from when that phase was
   observed: a completed Job pod never wins over the running pod that got its IP.
3. Among tombstones: the most recently deleted (it was the last owner), ties as in 2.
4. Otherwise the longest named CIDR containing the IP (`{"corp-vpn": "10.8.0.0/16"}`),
   else `world`.

A claim first seen at `-inf` (snapshot files: nobody saw the pod appear) starts at the
pod's `creationTimestamp` when known, else at `-inf`. Memory is bounded by `expire(now)`:
claims no longer able to answer any time `>= now - grace` are dropped, so answers for
those times never change and deleted pods cost memory for at most `end + 2 * grace`.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from netwatch.core.claims import ClaimTimeline, Rank
from netwatch.core.cluster import OwnerKey, controller_ref, owner_key, resolve_workload
from netwatch.core.model import (
    EMPTY_LABELS,
    Labels,
    NamespaceName,
    Node,
    NodeName,
    Pod,
    PodPhase,
    Service,
    Uid,
    Workload,
    WorkloadKind,
    WorkloadObject,
)

DEFAULT_GRACE = 120.0
"""Seconds a deleted object keeps answering for its IPs (and late connections resolve)."""
WORLD = "world"
_INF = math.inf
_EXTERNAL_CACHE_MAX = 65_536
"""Distinct external IPs whose CIDR match is remembered (then the cache starts over)."""

# Claim tiers (rule 2): higher wins among live claims on one IP. A `Rank` is
# (tier, running, started, claim key).
_NODE_TIER, _HOST_NETWORK_TIER, _SERVICE_TIER, _POD_TIER = 3, 2, 1, 0


class IdentityKind(enum.Enum):
    POD = "pod"
    SERVICE = "service"
    NODE = "node"
    EXTERNAL = "external"


@dataclass(frozen=True, slots=True)
class Identity:
    """What an IP was: a pod (with its workload), a Service, a node or an external range.

    `name` is the pod, Service or node name, or for externals the named CIDR or `world`.
    Fields that do not apply are None (`labels` is empty).
    """

    kind: IdentityKind
    name: str
    namespace: NamespaceName | None = None
    uid: Uid | None = None
    workload: Workload | None = None
    """The pod's top owner (Deployment, StatefulSet, DaemonSet, CronJob, Job, or the pod)."""
    labels: Labels = EMPTY_LABELS
    node: NodeName | None = None
    """The node a pod runs on, or the node itself."""

    @property
    def key(self) -> str:
        """`namespace/name` for pods and Services, the bare name for nodes and externals."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def workload_kind(self) -> WorkloadKind | None:
        return self.workload.kind if self.workload else None


@dataclass(slots=True)
class _PodState:
    pod: Pod
    first_seen: float
    owner: OwnerKey | None
    """The pod's direct controller, to re-resolve its workload when owners change."""


class IdentityIndex:
    """IP → `Identity` at a time, for pods (by UID), Services, nodes and named CIDRs."""

    def __init__(
        self, *, grace: float = DEFAULT_GRACE, named_cidrs: Mapping[str, str] | None = None
    ) -> None:
        # Claim keys: `pod/<uid>`, `svc/<namespace>/<name>`, `node/<name>`.
        self._claims: ClaimTimeline[Identity] = ClaimTimeline(grace=grace)
        self.grace = self._claims.grace
        self._settled_before = self._claims.settled_before  # copied after each `expire`
        self._settled_get = self._claims.settled.get
        self._fast_get = self._claims.fast.get
        self._pods: dict[Uid, _PodState] = {}
        self._pods_by_owner: dict[OwnerKey, set[Uid]] = {}
        self._owners: dict[OwnerKey, WorkloadObject] = {}
        self._children: dict[OwnerKey, set[OwnerKey]] = {}
        self._services: dict[str, Service] = {}
        self._nodes: dict[NodeName, Identity] = {}
        self._cidrs = _CidrTable(named_cidrs or {})
        self._external_cache: dict[str, Identity] = {}

    # ------------------------------------------------------------------ lookups

    def lookup(self, ip: str, at: float) -> Identity:
        """What `ip` was at `at` (epoch seconds). Raises ValueError if `ip` is no IP."""
        if at >= self._settled_before:
            settled = self._settled_get(ip)
            if settled is not None:
                return settled
        hit = self._fast_get(ip)
        if hit is not None and at >= hit[0]:
            return hit[1]
        return self._lookup_slow(ip, at)

    def _lookup_slow(self, ip: str, at: float) -> Identity:
        cached = self._external_cache.get(ip)  # only IPs no claim was ever kept for
        if cached is not None:
            return cached
        if self._claims.holds(ip):
            found = self._claims.resolve(ip, at)
            return found if found is not None else self._cidrs.match(ipaddress.ip_address(ip))
        address = ipaddress.ip_address(ip)
        canonical = address.compressed
        if canonical != ip:  # `2001:DB8::1` is kept as `2001:db8::1`
            return self.lookup(canonical, at)
        if len(self._external_cache) >= _EXTERNAL_CACHE_MAX:
            self._external_cache.clear()
        identity = self._external_cache[ip] = self._cidrs.match(address)
        return identity

    def _claim(self, claim: str, ips: list[str], identity: Identity, rank: Rank, at: float) -> None:
        for ip in ips:  # a claimed IP must not be answered from the external cache
            self._external_cache.pop(ip, None)
        self._claims.set(claim, ips, identity, rank, at)

    def owned(self, at: float) -> list[tuple[str, Identity]]:
        """Every IP a pod, Service or node (live or tombstone) answers for at `at`, sorted."""
        found = []
        for ip in self._claims.ips():
            who = self._claims.resolve(ip, at)
            if who is not None:
                found.append((ip, who))
        found.sort(key=lambda item: _ip_sort_key(item[0]))
        return found

    def stats(self) -> dict[str, int]:
        """Sizes for health metrics and the benchmark."""
        return {
            **self._claims.stats(),
            "pods": len(self._pods),
            "services": len(self._services),
            "nodes": len(self._nodes),
            "workload_objects": len(self._owners),
        }

    def expire(self, now: float) -> int:
        """Forget history that cannot answer any time `>= now - grace` (returns how many
        claim segments were dropped). Call it periodically with the newest time applied."""
        dropped = self._claims.expire(now)
        self._settled_before = self._claims.settled_before
        return dropped

    # ------------------------------------------------------------------ pods

    def upsert_pod(self, pod: Pod, *, at: float) -> None:
        state = self._pods.get(pod.uid)
        if state is not None and state.pod == pod:
            return  # a resync or relist of an unchanged pod
        ref = controller_ref(pod.owners)
        owner = (ref.kind, pod.namespace, ref.name) if ref else None
        if state is None:
            state = self._pods[pod.uid] = _PodState(pod, at, owner)
        else:
            self._unlink_pod(state)
            state.pod, state.owner = pod, owner
        if owner is not None:
            self._pods_by_owner.setdefault(owner, set()).add(pod.uid)
        self._claim_pod(state, at)

    def delete_pod(self, uid: Uid, *, at: float) -> None:
        state = self._pods.pop(uid, None)
        if state is None:
            return
        self._unlink_pod(state)
        self._claims.release(f"pod/{uid}", _start_time(at, state.pod), tombstone=True)

    def _unlink_pod(self, state: _PodState) -> None:
        if state.owner is not None:
            uids = self._pods_by_owner.get(state.owner)
            if uids is not None:
                uids.discard(state.pod.uid)
                if not uids:
                    del self._pods_by_owner[state.owner]

    def _claim_pod(self, state: _PodState, at: float) -> None:
        pod = state.pod
        claim = f"pod/{pod.uid}"
        when = _start_time(at, pod)
        if pod.phase.terminal or (pod.host_network and pod.node_name is None):
            self._claims.release(claim, when, tombstone=False)
            return
        if pod.host_network and pod.node_name is not None:
            # §3.7: a hostNetwork pod's traffic is its node's traffic.
            identity = self._node_identity(pod.node_name)
            tier = _HOST_NETWORK_TIER
        else:
            identity = Identity(
                IdentityKind.POD,
                pod.name,
                namespace=pod.namespace,
                uid=pod.uid,
                workload=resolve_workload(pod, self._owners),
                labels=pod.labels,
                node=pod.node_name,
            )
            tier = _POD_TIER
        started = pod.created_at if pod.created_at is not None else state.first_seen
        running = 1 if pod.phase is PodPhase.RUNNING else 0
        self._claim(claim, _canonical_ips(pod.ips), identity, (tier, running, started, claim), when)

    # ------------------------------------------------------------------ other kinds

    def upsert_service(self, service: Service, *, at: float) -> None:
        key = f"svc/{service.key}"
        self._services[service.key] = service
        identity = Identity(IdentityKind.SERVICE, service.name, namespace=service.namespace)
        rank: Rank = (_SERVICE_TIER, 1, self._first_seen(key, at), key)
        self._claim(key, _canonical_ips(service.cluster_ips), identity, rank, at)

    def delete_service(self, key: str, *, at: float) -> None:
        """`key` is `namespace/name`."""
        if self._services.pop(key, None) is not None:
            self._claims.release(f"svc/{key}", at, tombstone=True)

    def upsert_node(self, node: Node, *, at: float) -> None:
        key = f"node/{node.name}"
        identity = Identity(IdentityKind.NODE, node.name, labels=node.labels, node=node.name)
        self._nodes[node.name] = identity
        rank: Rank = (_NODE_TIER, 1, self._first_seen(key, at), key)
        self._claim(key, _canonical_ips(node.addresses), identity, rank, at)

    def delete_node(self, name: NodeName, *, at: float) -> None:
        if self._nodes.pop(name, None) is not None:
            self._claims.release(f"node/{name}", at, tombstone=True)

    def upsert_workload(self, obj: WorkloadObject, *, at: float) -> None:
        """A controller's metadata; pods it (transitively) owns get their workload again."""
        key = owner_key(obj)
        old = self._owners.get(key)
        if old == obj:
            return
        if old is not None:
            self._unlink_owner(key, old)
        self._owners[key] = obj
        parent = next((o for o in obj.owners if o.controller), None)
        if parent is not None:
            self._children.setdefault((parent.kind, obj.namespace, parent.name), set()).add(key)
        self._reresolve(key, at)

    def delete_workload(self, key: OwnerKey, *, at: float) -> None:
        old = self._owners.pop(key, None)
        if old is not None:
            self._unlink_owner(key, old)
            self._reresolve(key, at)

    def _unlink_owner(self, key: OwnerKey, obj: WorkloadObject) -> None:
        parent = next((o for o in obj.owners if o.controller), None)
        if parent is not None:
            siblings = self._children.get((parent.kind, obj.namespace, parent.name))
            if siblings is not None:
                siblings.discard(key)

    def _reresolve(self, key: OwnerKey, at: float) -> None:
        """Recompute the identity of every pod whose ownership chain passes through `key`."""
        seen, todo = {key}, [key]
        while todo:
            for child in self._children.get(todo.pop(), ()):
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
        for owner in seen:
            for uid in list(self._pods_by_owner.get(owner, ())):
                self._claim_pod(self._pods[uid], at)

    def _node_identity(self, name: NodeName) -> Identity:
        known = self._nodes.get(name)
        return known if known is not None else Identity(IdentityKind.NODE, name, node=name)

    def _first_seen(self, claim: str, at: float) -> float:
        """When a non-pod claim was first made (its rank's `started`), else `at`."""
        started = self._claims.started(claim)
        return at if started is None else started


def _start_time(at: float, pod: Pod) -> float:
    """`-inf` means "seen in a snapshot": the pod's creationTimestamp bounds it, if known."""
    if at == -_INF and pod.created_at is not None:
        return pod.created_at
    return at


def _canonical_ips(ips: Iterable[str]) -> list[str]:
    """Canonical spellings without repeats; a malformed status field is ignored."""
    out: list[str] = []
    for ip in ips:
        try:
            text = ipaddress.ip_address(ip).compressed
        except ValueError:
            continue
        if text not in out:
            out.append(text)
    return out


def _ip_sort_key(ip: str) -> tuple[int, int]:
    address = ipaddress.ip_address(ip)
    return (address.version, int(address))


class _CidrTable:
    """Named CIDRs by prefix length, longest first: a match is one dict probe per length."""

    def __init__(self, named: Mapping[str, str]) -> None:
        self.world = Identity(IdentityKind.EXTERNAL, WORLD)
        tables: dict[tuple[int, int], dict[int, Identity]] = {}
        for name, text in named.items():
            try:
                net = ipaddress.ip_network(text, strict=False)  # host bits ignored, like §3.6
            except ValueError as exc:
                raise ValueError(f"named CIDR {name!r}: {exc}") from None
            slot = tables.setdefault((net.version, net.prefixlen), {})
            key = int(net.network_address) >> (net.max_prefixlen - net.prefixlen)
            if key in slot:
                raise ValueError(f"named CIDR {name!r}: {net} is already named {slot[key].name!r}")
            slot[key] = Identity(IdentityKind.EXTERNAL, name)
        self._by_version: dict[int, list[tuple[int, dict[int, Identity]]]] = {4: [], 6: []}
        for (version, length), slot in sorted(tables.items(), key=lambda kv: -kv[0][1]):
            bits = 32 if version == 4 else 128
            self._by_version[version].append((bits - length, slot))

    def match(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Identity:
        value = int(address)
        for shift, slot in self._by_version[address.version]:
            hit = slot.get(value >> shift)
            if hit is not None:
                return hit
        return self.world
