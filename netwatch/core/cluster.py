"""A consistent view of one cluster's objects, built once and then read-only.

`Cluster.build` applies the API server's invariants that dumps do not always carry:
every namespace has the `kubernetes.io/metadata.name` label (namespaces referenced only
by pods get one too), and two policies with the same namespace/name collapse to the
later one (§3.8). Workload ownership (Pod→ReplicaSet→Deployment, Job→CronJob) is
resolved here because suggestions, metrics and analysis all need the same answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from netwatch.core.model import (
    EndpointSlice,
    Labels,
    Namespace,
    NamespaceName,
    Node,
    OwnerRef,
    Pod,
    Service,
    Workload,
    WorkloadKind,
    WorkloadObject,
)
from netwatch.core.policy import IPNetwork, NetworkPolicy, PolicyKey

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
_T = TypeVar("_T")
OwnerKey = tuple[str, NamespaceName, str]
"""`(kind, namespace, name)` of a controller object, e.g. `("ReplicaSet", "shop", "rs-1")`."""


@dataclass(frozen=True)
class Cluster:
    namespaces: Mapping[NamespaceName, Namespace]
    pods: tuple[Pod, ...]
    """Sorted by namespace/name; the order every output uses."""
    policies: tuple[NetworkPolicy, ...]
    """Sorted by namespace/name, duplicates resolved (last one wins)."""
    services: tuple[Service, ...] = ()
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    nodes: tuple[Node, ...] = ()
    workload_objects: tuple[WorkloadObject, ...] = ()
    _owners: Mapping[OwnerKey, WorkloadObject] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        *,
        namespaces: Iterable[Namespace] = (),
        pods: Iterable[Pod] = (),
        policies: Iterable[NetworkPolicy] = (),
        services: Iterable[Service] = (),
        endpoint_slices: Iterable[EndpointSlice] = (),
        nodes: Iterable[Node] = (),
        workload_objects: Iterable[WorkloadObject] = (),
    ) -> Cluster:
        pod_list = sorted(_last_wins(pods, lambda p: p.key), key=lambda p: (p.namespace, p.name))
        pol_list = sorted(
            _last_wins(policies, lambda p: p.key), key=lambda p: (p.namespace, p.name)
        )
        ns_map: dict[NamespaceName, Namespace] = {}
        for ns in namespaces:
            ns_map[ns.name] = ns
        for name in {p.namespace for p in pod_list} | {p.namespace for p in pol_list}:
            ns_map.setdefault(name, Namespace(name))
        for name, ns in list(ns_map.items()):
            if ns.labels.get(NAMESPACE_NAME_LABEL) != name:
                ns_map[name] = Namespace(name, Labels({**ns.labels, NAMESPACE_NAME_LABEL: name}))
        wl = tuple(workload_objects)
        return cls(
            namespaces=dict(sorted(ns_map.items())),
            pods=tuple(pod_list),
            policies=tuple(pol_list),
            services=tuple(sorted(services, key=lambda s: (s.namespace, s.name))),
            endpoint_slices=tuple(endpoint_slices),
            nodes=tuple(sorted(nodes, key=lambda n: n.name)),
            workload_objects=wl,
            _owners={owner_key(w): w for w in wl},
        )

    def namespace_labels(self, name: NamespaceName) -> Labels:
        ns = self.namespaces.get(name)
        return ns.labels if ns else Labels({NAMESPACE_NAME_LABEL: name})

    def policy(self, key: PolicyKey) -> NetworkPolicy | None:
        return next((p for p in self.policies if p.key == key), None)

    def pod(self, key: str) -> Pod | None:
        return next((p for p in self.pods if p.key == key), None)

    def pod_ranges(self, extra: Iterable[str] = ()) -> list[IPNetwork]:
        """The nodes' podCIDRs, then `extra` ranges (`--pod-cidr`: CNIs with their own IPAM
        leave node podCIDRs empty), without repeats. A malformed entry is skipped: the
        loader, or whoever read the flag, reports it."""
        out: dict[IPNetwork, None] = {}
        for text in [*(c for node in self.nodes for c in node.pod_cidrs), *extra]:
            try:
                out[ipaddress.ip_network(text, strict=False)] = None
            except ValueError:
                continue
        return list(out)

    def workload_of(self, pod: Pod) -> Workload:
        """The pod's top controller; owners missing from the dump are inferred by name."""
        return resolve_workload(pod, self._owners)


def owner_key(obj: WorkloadObject) -> OwnerKey:
    return (obj.kind.value, obj.namespace, obj.name)


def controller_ref(owners: tuple[OwnerRef, ...]) -> OwnerRef | None:
    """The managing owner: the `controller: true` reference, else the first one."""
    return next((o for o in owners if o.controller), None) or next(iter(owners), None)


def resolve_workload(pod: Pod, owners: Mapping[OwnerKey, WorkloadObject]) -> Workload:
    """A pod's top owner (Pod→ReplicaSet→Deployment, Job→CronJob, StatefulSet, DaemonSet).

    Shared by `Cluster` (one snapshot) and the identity index (a changing inventory), so
    both give the same answer. Owners missing from `owners` are inferred by name.
    """
    controller = controller_ref(pod.owners)
    if controller is None:
        return Workload(pod.namespace, pod.name, WorkloadKind.POD)
    kind, name = controller.kind, controller.name
    for _ in range(8):  # ownership chains are short; the bound guards against cycles
        obj = owners.get((kind, pod.namespace, name))
        if obj is None:
            break
        parent = next((o for o in obj.owners if o.controller), None)
        if parent is None:
            break
        kind, name = parent.kind, parent.name
    if kind == WorkloadKind.REPLICA_SET.value and (kind, pod.namespace, name) not in owners:
        # ReplicaSet not in the dump: Deployments name theirs `<deploy>-<pod-template-hash>`.
        suffix = pod.labels.get("pod-template-hash")
        if suffix and name.endswith("-" + suffix):
            return Workload(pod.namespace, name[: -len(suffix) - 1], WorkloadKind.DEPLOYMENT)
    try:
        wk = WorkloadKind(kind)
    except ValueError:
        # A custom controller (e.g. an operator's CRD): keep its name, call it a Pod owner.
        return Workload(pod.namespace, name, WorkloadKind.POD)
    return Workload(pod.namespace, name, wk)


def _last_wins(items: Iterable[_T], key: Callable[[_T], str]) -> list[_T]:
    """Keep the last item per key (§3.8: a later object replaces an earlier one)."""
    seen: dict[str, _T] = {}
    for it in items:
        seen[key(it)] = it
    return list(seen.values())
