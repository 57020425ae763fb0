"""The inventory store: the `InventorySink` sources write to, its Cluster and its index."""

from __future__ import annotations

import dataclasses
import math

import pytest

from netwatch.core.cluster import Cluster
from netwatch.core.identity import IdentityIndex, IdentityKind
from netwatch.core.inventory import EventType, InventoryEvent, InventorySink, ObjectKind
from netwatch.core.model import (
    EndpointSlice,
    Labels,
    NamespaceName,
    Node,
    NodeName,
    OwnerRef,
    PodPhase,
    Service,
    Uid,
    WorkloadKind,
    WorkloadObject,
)
from netwatch.core.store import InventoryStore, object_key
from tests.builders import deny_all, node, ns, pod


def svc(key: str, ip: str) -> Service:
    namespace, _, name = key.partition("/")
    return Service(NamespaceName(namespace), name, cluster_ips=(ip,))


def added(kind: ObjectKind, obj: object, at: float) -> InventoryEvent:
    return InventoryEvent(EventType.ADDED, kind, obj, at)  # type: ignore[arg-type]


def test_store_is_an_inventory_sink() -> None:
    sink: InventorySink = InventoryStore()
    sink.replace(ObjectKind.POD, [pod("a/p", ip="10.0.0.1")], at=0)


def test_relist_deletes_objects_missing_from_it_at_the_relist_time() -> None:
    store = InventoryStore()
    store.replace(ObjectKind.POD, [pod("a/p", ip="10.0.0.1"), pod("a/q", ip="10.0.0.2")], at=0)
    store.replace(ObjectKind.POD, [pod("a/q", ip="10.0.0.2")], at=100)
    assert [p.key for p in store.cluster().pods] == ["a/q"]
    # p is a tombstone: connections from before (and shortly after) still resolve to it.
    assert store.index.lookup("10.0.0.1", 50).key == "a/p"
    assert store.index.lookup("10.0.0.1", 100 + store.index.grace).name == "world"


@pytest.mark.parametrize(
    ("kind", "first", "second"),
    [
        (ObjectKind.NAMESPACE, [ns("a"), ns("b")], [ns("b")]),
        (ObjectKind.SERVICE, [svc("a/s", "10.96.0.1"), svc("a/t", "10.96.0.2")], []),
        (ObjectKind.NODE, [node("n1", "192.168.0.1"), node("n2", "192.168.0.2")], []),
        (ObjectKind.NETWORK_POLICY, [deny_all("a/x"), deny_all("a/y")], [deny_all("a/y")]),
        (
            ObjectKind.ENDPOINT_SLICE,
            [EndpointSlice(NamespaceName("a"), "s-1", "s")],
            [EndpointSlice(NamespaceName("a"), "s-2", "s")],
        ),
        (
            ObjectKind.WORKLOAD,
            [
                WorkloadObject(WorkloadKind.DEPLOYMENT, NamespaceName("a"), "web"),
                WorkloadObject(WorkloadKind.REPLICA_SET, NamespaceName("a"), "web-1"),
            ],
            [WorkloadObject(WorkloadKind.REPLICA_SET, NamespaceName("a"), "web-1")],
        ),
    ],
)
def test_relist_of_each_kind_keeps_exactly_the_relisted_objects(
    kind: ObjectKind, first: list[object], second: list[object]
) -> None:
    store = InventoryStore()
    store.replace(kind, first, at=0)  # type: ignore[arg-type]
    store.replace(kind, second, at=10)  # type: ignore[arg-type]
    assert store.counts()[kind] == len(second)
    assert [object_key(kind, o) for o in store.objects(kind)] == [
        object_key(kind, o)  # type: ignore[arg-type]
        for o in second
    ]


def test_deleted_service_and_node_leave_the_cluster_and_become_tombstones() -> None:
    store = InventoryStore()
    store.replace(ObjectKind.SERVICE, [svc("a/s", "10.96.0.1")], at=0)
    store.replace(ObjectKind.NODE, [node("n1", "192.168.0.1")], at=0)
    store.replace(ObjectKind.SERVICE, [], at=10)
    store.replace(ObjectKind.NODE, [], at=10)
    assert store.cluster().services == () and store.cluster().nodes == ()
    assert store.index.lookup("10.96.0.1", 11).kind is IdentityKind.SERVICE
    assert store.index.lookup("192.168.0.1", 11).kind is IdentityKind.NODE
    assert store.index.lookup("192.168.0.1", 10 + store.index.grace).name == "world"


def test_watch_events_add_modify_and_delete() -> None:
    store = InventoryStore()
    p = pod("a/p", ip="10.0.0.1")
    store.apply(added(ObjectKind.POD, p, 0))
    done = dataclasses.replace(p, phase=PodPhase.SUCCEEDED)
    store.apply(InventoryEvent(EventType.MODIFIED, ObjectKind.POD, done, 5))
    assert store.cluster().pods == (done,)
    assert store.index.lookup("10.0.0.1", 6).name == "world"
    store.apply(InventoryEvent(EventType.DELETED, ObjectKind.POD, done, 9))
    assert store.cluster().pods == ()
    assert store.newest == 9


def test_pods_are_keyed_by_uid_so_a_recreated_pod_is_a_new_pod() -> None:
    store = InventoryStore()
    old = dataclasses.replace(pod("a/db-0", ip="10.0.0.1"), uid=Uid("u1"))
    new = dataclasses.replace(pod("a/db-0", ip="10.0.0.2"), uid=Uid("u2"))
    store.apply(added(ObjectKind.POD, old, 0))
    store.apply(added(ObjectKind.POD, new, 5))
    store.apply(InventoryEvent(EventType.DELETED, ObjectKind.POD, old, 6))
    assert store.cluster().pods == (new,)
    assert store.index.lookup("10.0.0.1", 3).uid == "u1"
    assert store.index.lookup("10.0.0.2", 7).uid == "u2"


def test_cluster_is_rebuilt_only_after_a_change() -> None:
    store = InventoryStore()
    store.replace(ObjectKind.POD, [pod("a/p", ip="10.0.0.1")], at=0)
    first = store.cluster()
    store.replace(ObjectKind.POD, [pod("a/p", ip="10.0.0.1")], at=5)  # nothing changed
    assert store.cluster() is first
    store.replace(ObjectKind.NAMESPACE, [ns("a", team="x")], at=6)
    assert store.cluster() is not first
    assert store.cluster().namespace_labels(NamespaceName("a"))["team"] == "x"


def test_cluster_resolves_workloads_from_stored_owners() -> None:
    store = InventoryStore()
    rs = WorkloadObject(
        WorkloadKind.REPLICA_SET,
        NamespaceName("a"),
        "web-1",
        owners=(OwnerRef("Deployment", "web", controller=True),),
    )
    p = dataclasses.replace(
        pod("a/web-1-x", ip="10.0.0.1"), owners=(OwnerRef("ReplicaSet", "web-1", controller=True),)
    )
    store.replace(ObjectKind.WORKLOAD, [rs], at=0)
    store.replace(ObjectKind.POD, [p], at=0)
    assert store.cluster().workload_of(p).name == "web"
    assert store.index.lookup("10.0.0.1", 1).workload == store.cluster().workload_of(p)


def test_event_with_an_object_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(TypeError, match="Pod event carries a Namespace"):
        InventoryStore().apply(added(ObjectKind.POD, ns("a"), 0))


def test_from_cluster_loads_a_snapshot_as_present_from_minus_infinity() -> None:
    cluster = Cluster.build(
        namespaces=[ns("a")],
        pods=[
            pod("a/p", ip="10.0.0.1"),
            dataclasses.replace(pod("a/q", ip="10.0.0.2"), created_at=1000.0),
        ],
        nodes=[Node(NodeName("n1"), ("192.168.0.1",), labels=Labels({"z": "1"}))],
    )
    index = IdentityIndex(named_cidrs={"corp": "10.8.0.0/16"})
    store = InventoryStore.from_cluster(cluster, index=index)
    assert store.index is index
    assert store.index.lookup("10.0.0.1", -1e9).key == "a/p"
    assert store.index.lookup("10.0.0.2", 999).name == "world"
    assert store.index.lookup("10.0.0.2", 1000).key == "a/q"
    assert store.index.lookup("10.8.0.1", 0).name == "corp"
    assert store.cluster().pods == cluster.pods
    assert store.counts()[ObjectKind.POD] == 2


def test_expire_defaults_to_the_newest_time_applied() -> None:
    store = InventoryStore()
    p = pod("a/p", ip="10.0.0.1")
    store.apply(added(ObjectKind.POD, p, 0))
    store.apply(InventoryEvent(EventType.DELETED, ObjectKind.POD, p, 10))
    store.apply(added(ObjectKind.NAMESPACE, ns("b"), 10 + 2 * store.index.grace))
    assert store.expire() == 1
    assert store.index.stats()["segments"] == 0


def test_store_and_index_agree_on_terminal_pods_with_the_engine() -> None:
    store = InventoryStore()
    store.replace(
        ObjectKind.POD,
        [pod("a/run", ip="10.0.0.1"), pod("a/done", ip="10.0.0.2", phase=PodPhase.FAILED)],
        at=-math.inf,
    )
    assert {p.key for p in store.cluster().pods} == {"a/run", "a/done"}
    assert [ip for ip, _ in store.index.owned(0)] == ["10.0.0.1"]
