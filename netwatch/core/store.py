"""The inventory store: current cluster objects by kind and key, and the index they feed.

`InventoryStore` is the `InventorySink` every cluster source writes to (the live
list+watch and the snapshot files, both in `netwatch.k8s`). It keeps the latest slim
object of each kind and key (pods by UID, so a pod recreated under the same name is a
new pod), builds a `Cluster` of the current state on demand for the policy engine, and
forwards every change, with its time, to the `IdentityIndex` that answers "what was
this IP at t".

A full relist (`replace`) deletes the objects of that kind absent from it at `at`;
`ObjectKind.WORKLOAD` is one kind: a relist of it carries every controller kind together.
Pure like the rest of `netwatch.core`: time arrives as `at`, nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from netwatch.core.cluster import Cluster, owner_key
from netwatch.core.identity import IdentityIndex
from netwatch.core.inventory import EventType, InventoryEvent, InventoryObject, ObjectKind
from netwatch.core.model import (
    EndpointSlice,
    Namespace,
    Node,
    NodeName,
    Pod,
    Service,
    Uid,
    WorkloadObject,
)
from netwatch.core.policy import NetworkPolicy

_O = TypeVar("_O")
_TYPES: Mapping[ObjectKind, type] = {
    ObjectKind.POD: Pod,
    ObjectKind.NAMESPACE: Namespace,
    ObjectKind.SERVICE: Service,
    ObjectKind.ENDPOINT_SLICE: EndpointSlice,
    ObjectKind.NODE: Node,
    ObjectKind.NETWORK_POLICY: NetworkPolicy,
    ObjectKind.WORKLOAD: WorkloadObject,
}

SNAPSHOT_LOAD_ORDER: tuple[ObjectKind, ...] = (
    ObjectKind.WORKLOAD,
    ObjectKind.NODE,
    ObjectKind.NAMESPACE,
    ObjectKind.SERVICE,
    ObjectKind.ENDPOINT_SLICE,
    ObjectKind.NETWORK_POLICY,
    ObjectKind.POD,
)
"""Owners and nodes before pods, so each pod's identity is built once, complete."""


def object_key(kind: ObjectKind, obj: InventoryObject) -> str:
    """The store key of an object: pods by UID, others by (namespace/)name."""
    expected = _TYPES[kind]
    if not isinstance(obj, expected):
        raise TypeError(f"{kind.value} event carries a {type(obj).__name__}")
    match obj:
        case Pod():
            return obj.uid
        case Namespace() | Node():
            return obj.name
        case Service() | NetworkPolicy():
            return obj.key
        case EndpointSlice():
            return f"{obj.namespace}/{obj.name}"
        case WorkloadObject():
            return f"{obj.kind.value}/{obj.namespace}/{obj.name}"
    raise TypeError(f"not an inventory object: {type(obj).__name__}")  # pragma: no cover


class InventoryStore:
    """Current objects plus the identity index; implements `InventorySink`."""

    def __init__(self, *, index: IdentityIndex | None = None) -> None:
        self.index = index if index is not None else IdentityIndex()
        self._objects: dict[ObjectKind, dict[str, InventoryObject]] = {k: {} for k in ObjectKind}
        self._cluster: Cluster | None = None
        self.newest = -math.inf
        """The latest `at` applied: what `expire()` measures history against."""

    @classmethod
    def from_cluster(
        cls, cluster: Cluster, *, at: float = -math.inf, index: IdentityIndex | None = None
    ) -> InventoryStore:
        """A store holding a snapshot's objects, seen at `at` (feeding `index`, if given).

        A snapshot does not say since when its objects exist: the default `-inf` makes
        them present for all time (bounded by each pod's creationTimestamp when known).
        """
        store = cls(index=index)
        for kind in SNAPSHOT_LOAD_ORDER:
            store.replace(kind, list(_cluster_objects(cluster, kind)), at=at)
        return store

    # ------------------------------------------------------------------ InventorySink

    def replace(self, kind: ObjectKind, objects: Sequence[InventoryObject], *, at: float) -> None:
        """A full (re)list of one kind: objects absent from it were deleted at `at`."""
        fresh: dict[str, InventoryObject] = {}
        for obj in objects:
            fresh[object_key(kind, obj)] = obj  # a repeated key: the later object wins
        current = self._objects[kind]
        for key in [k for k in current if k not in fresh]:
            self._delete(kind, key, at)
        for key, obj in fresh.items():
            self._upsert(kind, key, obj, at)
        self._seen(at)

    def apply(self, event: InventoryEvent) -> None:
        """One watch event; DELETED carries the object's last state."""
        key = object_key(event.kind, event.obj)
        if event.type is EventType.DELETED:
            self._delete(event.kind, key, event.at)
        else:
            self._upsert(event.kind, key, event.obj, event.at)
        self._seen(event.at)

    # ------------------------------------------------------------------ reading

    def cluster(self) -> Cluster:
        """The current state as a `Cluster` (rebuilt only after a change)."""
        if self._cluster is None:
            self._cluster = Cluster.build(
                namespaces=self._of(ObjectKind.NAMESPACE, Namespace),
                pods=self._of(ObjectKind.POD, Pod),
                policies=self._of(ObjectKind.NETWORK_POLICY, NetworkPolicy),
                services=self._of(ObjectKind.SERVICE, Service),
                endpoint_slices=self._of(ObjectKind.ENDPOINT_SLICE, EndpointSlice),
                nodes=self._of(ObjectKind.NODE, Node),
                workload_objects=self._of(ObjectKind.WORKLOAD, WorkloadObject),
            )
        return self._cluster

    def objects(self, kind: ObjectKind) -> list[InventoryObject]:
        """The current objects of one kind, in the order they were first seen."""
        return list(self._objects[kind].values())

    def counts(self) -> dict[ObjectKind, int]:
        """Objects held per kind (`netwatch_inventory_objects{kind}`)."""
        return {kind: len(objects) for kind, objects in self._objects.items()}

    def expire(self, now: float | None = None) -> int:
        """Bound the index's history; `now` defaults to the newest time applied."""
        return self.index.expire(self.newest if now is None else now)

    # ------------------------------------------------------------------ internals

    def _of(self, kind: ObjectKind, cls: type[_O]) -> list[_O]:
        return [o for o in self._objects[kind].values() if isinstance(o, cls)]

    def _seen(self, at: float) -> None:
        self.newest = max(self.newest, at)

    def _upsert(self, kind: ObjectKind, key: str, obj: InventoryObject, at: float) -> None:
        objects = self._objects[kind]
        if objects.get(key) == obj:
            return
        objects[key] = obj
        self._cluster = None
        index = self.index
        match obj:
            case Pod():
                index.upsert_pod(obj, at=at)
            case Service():
                index.upsert_service(obj, at=at)
            case Node():
                index.upsert_node(obj, at=at)
            case WorkloadObject():
                index.upsert_workload(obj, at=at)
            case _:
                pass  # namespaces, policies, slices: the Cluster only

    def _delete(self, kind: ObjectKind, key: str, at: float) -> None:
        obj = self._objects[kind].pop(key, None)
        if obj is None:
            return
        self._cluster = None
        index = self.index
        match obj:
            case Pod():
                index.delete_pod(Uid(key), at=at)
            case Service():
                index.delete_service(key, at=at)
            case Node():
                index.delete_node(NodeName(key), at=at)
            case WorkloadObject():
                index.delete_workload(owner_key(obj), at=at)
            case _:
                pass


def _cluster_objects(cluster: Cluster, kind: ObjectKind) -> Iterable[InventoryObject]:
    match kind:
        case ObjectKind.POD:
            return cluster.pods
        case ObjectKind.NAMESPACE:
            return cluster.namespaces.values()
        case ObjectKind.SERVICE:
            return cluster.services
        case ObjectKind.ENDPOINT_SLICE:
            return cluster.endpoint_slices
        case ObjectKind.NODE:
            return cluster.nodes
        case ObjectKind.NETWORK_POLICY:
            return cluster.policies
        case ObjectKind.WORKLOAD:
            return cluster.workload_objects
    raise ValueError(kind)  # pragma: no cover
