"""The identity index: what an IP was at time t (DESIGN §2).

Times are small epoch-second floats; the grace period is 120 s unless a test says
otherwise. `lookup` never returns None: unknown IPs are external (`world` or a named CIDR).
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from netwatch.core.cluster import Cluster, resolve_workload
from netwatch.core.identity import Identity, IdentityIndex, IdentityKind
from netwatch.core.model import (
    Labels,
    NamespaceName,
    Node,
    NodeName,
    OwnerRef,
    Pod,
    PodPhase,
    Service,
    Uid,
    WorkloadKind,
    WorkloadObject,
)
from tests.builders import pod as build_pod

X = "10.244.1.5"


def make_pod(
    key: str,
    ip: str | None = X,
    *,
    uid: str | None = None,
    phase: PodPhase = PodPhase.RUNNING,
    created_at: float | None = None,
    owners: tuple[OwnerRef, ...] = (),
    host_network: bool = False,
    node: str = "n1",
    labels: dict[str, str] | None = None,
) -> Pod:
    p = build_pod(key, labels, ip=ip, phase=phase, host_network=host_network, node=node)
    return dataclasses.replace(p, uid=Uid(uid or p.uid), created_at=created_at, owners=owners)


def owner(kind: str, name: str) -> OwnerRef:
    return OwnerRef(kind=kind, name=name, controller=True)


def workload_object(kind: WorkloadKind, key: str, parent: OwnerRef | None = None) -> WorkloadObject:
    namespace, _, name = key.partition("/")
    return WorkloadObject(
        kind=kind,
        namespace=NamespaceName(namespace),
        name=name,
        owners=(parent,) if parent else (),
    )


def who(index: IdentityIndex, ip: str, at: float) -> str:
    """`kind:key` of what the IP was, e.g. `pod:shop/a`, `external:world`."""
    found = index.lookup(ip, at)
    return f"{found.kind.value}:{found.key}"


# ----------------------------------------------------------------- IP reuse


def reuse_index() -> IdentityIndex:
    """Pod A holds X from t=100, is deleted at t=1000; pod B gets X at t=1050."""
    index = IdentityIndex(grace=120)
    index.upsert_pod(make_pod("shop/a"), at=100)
    index.delete_pod(Uid("uid-shop-a"), at=1000)
    index.upsert_pod(make_pod("shop/b"), at=1050)
    return index


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (99, "external:world"),  # before anyone held it
        (100, "pod:shop/a"),
        (500, "pod:shop/a"),  # before the deletion
        (999.9, "pod:shop/a"),
        (1000, "pod:shop/a"),  # grace period, B not there yet: the tombstone answers
        (1049.9, "pod:shop/a"),
        (1050, "pod:shop/b"),  # grace period, B exists: the live pod wins
        (1100, "pod:shop/b"),
        (5000, "pod:shop/b"),  # after the grace period
    ],
)
def test_reused_ip_is_attributed_to_the_pod_holding_it_at_the_connection_time(
    at: float, expected: str
) -> None:
    assert who(reuse_index(), X, at) == expected


def test_deleted_pod_ip_is_external_once_the_grace_period_is_over() -> None:
    index = IdentityIndex(grace=120)
    index.upsert_pod(make_pod("shop/a"), at=100)
    index.delete_pod(Uid("uid-shop-a"), at=1000)
    assert who(index, X, 1119.9) == "pod:shop/a"
    assert who(index, X, 1120) == "external:world"


def test_late_connection_still_resolves_to_the_deleted_pod_after_its_ip_is_reused() -> None:
    index = reuse_index()
    index.upsert_pod(make_pod("shop/c", ip="10.244.1.6"), at=1060)  # life goes on
    assert who(index, X, 990) == "pod:shop/a"  # a flow from before the deletion, arriving now


def test_completed_job_pod_stops_owning_its_ip_when_the_phase_is_observed() -> None:
    index = IdentityIndex()
    job = make_pod("batch/report-1", owners=(owner("Job", "report-1"),))
    index.upsert_pod(job, at=0)
    index.upsert_pod(dataclasses.replace(job, phase=PodPhase.SUCCEEDED), at=50)
    index.upsert_pod(make_pod("shop/api"), at=60)
    assert who(index, X, 40) == "pod:batch/report-1"
    assert who(index, X, 55) == "external:world"  # no tombstone for a finished pod
    assert who(index, X, 70) == "pod:shop/api"


@pytest.mark.parametrize("phase", [PodPhase.SUCCEEDED, PodPhase.FAILED])
def test_completed_pod_never_wins_over_the_running_pod_with_its_ip(phase: PodPhase) -> None:
    index = IdentityIndex()
    # Listed together (a snapshot), the finished pod even being the newer one.
    index.upsert_pod(make_pod("shop/api", created_at=10), at=-math.inf)
    index.upsert_pod(make_pod("batch/job-x", phase=phase, created_at=20), at=-math.inf)
    assert who(index, X, 30) == "pod:shop/api"


def test_most_recently_deleted_pod_answers_when_several_tombstones_cover_a_time() -> None:
    index = IdentityIndex(grace=120)
    index.upsert_pod(make_pod("shop/b", created_at=1), at=0)
    index.upsert_pod(make_pod("shop/a", created_at=2), at=0)  # newer: wins while both live
    index.delete_pod(Uid("uid-shop-a"), at=10)
    index.delete_pod(Uid("uid-shop-b"), at=20)  # b was the owner from 10 to 20
    assert who(index, X, 5) == "pod:shop/a"
    assert who(index, X, 15) == "pod:shop/b"
    assert who(index, X, 25) == "pod:shop/b"


# ----------------------------------------------------------------- concurrent claims


def test_running_pod_wins_over_a_pending_pod_claiming_the_same_ip() -> None:
    index = IdentityIndex()
    index.upsert_pod(make_pod("shop/old", created_at=1), at=0)
    index.upsert_pod(make_pod("shop/new", phase=PodPhase.PENDING, created_at=2), at=5)
    assert who(index, X, 6) == "pod:shop/old"


def test_most_recently_started_running_pod_wins_by_creation_timestamp() -> None:
    index = IdentityIndex()
    index.upsert_pod(make_pod("shop/newer", created_at=200), at=0)
    index.upsert_pod(make_pod("shop/older", created_at=100), at=5)  # seen later, made earlier
    assert who(index, X, 6) == "pod:shop/newer"


def test_most_recently_first_seen_running_pod_wins_without_creation_timestamps() -> None:
    index = IdentityIndex()
    index.upsert_pod(make_pod("shop/first"), at=0)
    index.upsert_pod(make_pod("shop/second"), at=5)
    assert who(index, X, 4) == "pod:shop/first"
    assert who(index, X, 6) == "pod:shop/second"


def test_pod_labels_are_answered_as_they_were_at_the_time() -> None:
    index = IdentityIndex()
    index.upsert_pod(make_pod("shop/a", labels={"v": "1"}), at=0)
    index.upsert_pod(make_pod("shop/a", labels={"v": "2"}), at=10)
    assert index.lookup(X, 5).labels == {"v": "1"}
    assert index.lookup(X, 15).labels == {"v": "2"}


def test_relisted_unchanged_pod_keeps_its_claim_and_start() -> None:
    index = IdentityIndex()
    index.upsert_pod(make_pod("shop/a"), at=0)
    index.upsert_pod(make_pod("shop/a"), at=50)
    assert who(index, X, 10) == "pod:shop/a"
    assert index.stats()["segments"] == 1


# ----------------------------------------------------------------- other kinds


def test_host_network_pod_resolves_to_its_node() -> None:
    index = IdentityIndex()
    index.upsert_pod(make_pod("mon/exporter", ip="192.168.56.11", host_network=True), at=0)
    found = index.lookup("192.168.56.11", 1)
    assert (found.kind, found.name, found.namespace) == (IdentityKind.NODE, "n1", None)


def test_host_network_pod_takes_the_node_objects_labels_when_known() -> None:
    index = IdentityIndex()
    node = Node(NodeName("n1"), ("192.168.56.11",), labels=Labels({"zone": "a"}))
    index.upsert_node(node, at=0)
    index.upsert_pod(make_pod("mon/exporter", ip="192.168.56.11", host_network=True), at=0)
    assert index.lookup("192.168.56.11", 1).labels == {"zone": "a"}


def test_node_ip_shared_with_host_network_pods_answers_the_node_at_every_time() -> None:
    index = IdentityIndex(grace=10)
    index.upsert_node(Node(NodeName("n1"), ("192.168.56.11",)), at=100)
    for name in ("proxy", "exporter"):
        index.upsert_pod(
            make_pod(f"kube-system/{name}", ip="192.168.56.11", host_network=True), at=50
        )
    assert who(index, "192.168.56.11", 49) == "external:world"
    assert who(index, "192.168.56.11", 50) == "node:n1"  # hostNetwork pods came first
    index.delete_pod(Uid("uid-kube-system-proxy"), at=200)
    index.expire(300)
    assert who(index, "192.168.56.11", 300) == "node:n1"
    assert who(index, "192.168.56.11", 75) == "node:n1"


def test_external_answer_is_not_kept_once_a_pod_claims_the_ip() -> None:
    index = IdentityIndex()
    assert who(index, X, 5) == "external:world"  # remembered as external
    index.upsert_pod(make_pod("shop/a"), at=10)
    assert who(index, X, 11) == "pod:shop/a"
    assert who(index, X, 9) == "external:world"
    index.delete_pod(Uid("uid-shop-a"), at=20)  # off the fast path: the tombstone answers
    assert who(index, X, 25) == "pod:shop/a"


def test_node_addresses_resolve_to_the_node() -> None:
    index = IdentityIndex()
    index.upsert_node(Node(NodeName("n2"), ("192.168.56.12", "203.0.113.9")), at=0)
    assert who(index, "192.168.56.12", 1) == "node:n2"
    assert who(index, "203.0.113.9", 1) == "node:n2"


def test_cluster_ip_resolves_to_the_service_and_is_a_tombstone_after_deletion() -> None:
    index = IdentityIndex(grace=60)
    svc = Service(NamespaceName("shop"), "cart", cluster_ips=("10.96.0.20",))
    index.upsert_service(svc, at=0)
    found = index.lookup("10.96.0.20", 1)
    assert (found.kind, found.key, found.workload) == (IdentityKind.SERVICE, "shop/cart", None)
    index.delete_service("shop/cart", at=100)
    assert who(index, "10.96.0.20", 159) == "service:shop/cart"
    assert who(index, "10.96.0.20", 160) == "external:world"


def test_pod_identity_carries_namespace_uid_workload_labels_and_node() -> None:
    index = IdentityIndex()
    p = make_pod(
        "shop/web-7d9f-x2", labels={"app": "web", "pod-template-hash": "7d9f"},
        owners=(owner("ReplicaSet", "web-7d9f"),), node="n2",
    )  # fmt: skip
    index.upsert_pod(p, at=0)
    assert index.lookup(X, 1) == Identity(
        IdentityKind.POD,
        "web-7d9f-x2",
        namespace=NamespaceName("shop"),
        uid=p.uid,
        workload=resolve_workload(p, {}),
        labels=p.labels,
        node=NodeName("n2"),
    )
    assert index.lookup(X, 1).workload_kind is WorkloadKind.DEPLOYMENT


# ----------------------------------------------------------------- externals


CIDRS = {
    "corp": "10.0.0.0/8",
    "corp-vpn": "10.8.0.0/16",
    "office": "10.8.1.7/24",  # host bits are ignored
    "v6-partner": "2001:db8::/32",
}


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("10.8.1.200", "office"),  # /24 beats /16 beats /8
        ("10.8.2.1", "corp-vpn"),
        ("10.9.0.1", "corp"),
        ("11.0.0.1", "world"),
        ("2001:db8:1::5", "v6-partner"),
        ("2001:db9::5", "world"),
    ],
)
def test_external_ip_takes_the_longest_named_cidr_else_world(ip: str, expected: str) -> None:
    found = IdentityIndex(named_cidrs=CIDRS).lookup(ip, 0)
    assert (found.kind, found.name) == (IdentityKind.EXTERNAL, expected)


def test_cluster_owner_beats_a_named_cidr_containing_its_ip() -> None:
    index = IdentityIndex(named_cidrs={"pods": "10.244.0.0/16"})
    index.upsert_pod(make_pod("shop/a"), at=0)
    assert who(index, X, 1) == "pod:shop/a"
    assert who(index, "10.244.9.9", 1) == "external:pods"


@pytest.mark.parametrize(
    ("named", "message"),
    [
        ({"bad": "10.0.0.0/33"}, "named CIDR 'bad'"),
        ({"a": "10.0.0.0/8", "b": "10.1.0.0/8"}, "already named 'a'"),
    ],
)
def test_invalid_named_cidrs_are_rejected(named: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IdentityIndex(named_cidrs=named)


def test_ipv6_addresses_match_whatever_their_spelling() -> None:
    index = IdentityIndex()
    index.upsert_pod(make_pod("shop/a", ip="2001:DB8:0::0001"), at=0)
    assert who(index, "2001:db8::1", 1) == "pod:shop/a"
    assert who(index, "2001:0db8::1", 1) == "pod:shop/a"


def test_lookup_of_something_that_is_not_an_ip_raises() -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        IdentityIndex().lookup("10.0.0.256", 0)


def test_malformed_pod_ip_is_ignored() -> None:
    index = IdentityIndex()
    index.upsert_pod(make_pod("shop/a", ip="not-an-ip"), at=0)
    assert index.owned(1) == []


# ----------------------------------------------------------------- snapshots


def test_snapshot_pod_is_present_for_all_time_without_creation_timestamp() -> None:
    index = IdentityIndex()
    index.upsert_pod(make_pod("shop/a"), at=-math.inf)
    assert who(index, X, -1e12) == "pod:shop/a"


def test_snapshot_pod_is_bounded_by_its_creation_timestamp() -> None:
    index = IdentityIndex()
    index.upsert_pod(make_pod("shop/a", created_at=1000), at=-math.inf)
    assert who(index, X, 999) == "external:world"
    assert who(index, X, 1000) == "pod:shop/a"


def test_owned_lists_every_cluster_ip_sorted_by_address() -> None:
    index = IdentityIndex()
    index.upsert_pod(make_pod("shop/a", ip="10.244.1.10"), at=0)
    index.upsert_pod(make_pod("shop/b", ip="10.244.1.9"), at=0)
    index.upsert_pod(make_pod("shop/c", ip="fd00::1"), at=0)
    index.upsert_node(Node(NodeName("n1"), ("192.168.0.1",)), at=0)
    index.upsert_service(Service(NamespaceName("shop"), "s", ("10.96.0.1",)), at=0)
    assert [ip for ip, _ in index.owned(1)] == [
        "10.96.0.1", "10.244.1.9", "10.244.1.10", "192.168.0.1", "fd00::1",
    ]  # fmt: skip
    assert index.owned(-1) == []


# ----------------------------------------------------------------- expiry


def test_expire_forgets_tombstones_without_changing_recent_answers() -> None:
    index = reuse_index()
    assert index.stats()["segments"] == 2
    assert index.expire(1239.9) == 0  # A's tombstone (until 1120) may still answer t=1119.9
    assert index.expire(1240) == 1
    assert index.stats()["segments"] == 1
    assert who(index, X, 1120) == "pod:shop/b"
    assert who(index, X, 5000) == "pod:shop/b"


def test_expire_settles_claims_older_than_the_horizon_and_only_those() -> None:
    y = "10.244.1.6"
    index = IdentityIndex(grace=10)
    index.upsert_pod(make_pod("shop/a"), at=100)
    index.upsert_pod(make_pod("shop/b", ip=y), at=105)
    index.expire(114.5)  # horizon 104.5: a's claim is settled, b's is not
    assert who(index, X, 104.5) == "pod:shop/a"
    assert who(index, y, 104.5) == "external:world"
    assert who(index, y, 105) == "pod:shop/b"
    assert who(index, X, 99) == "external:world"  # older times still read the history
    index.upsert_pod(make_pod("shop/c", ip=X, created_at=200), at=120)  # a settled IP changes
    assert who(index, X, 121) == "pod:shop/c"
    z = "10.244.1.7"
    index.upsert_pod(make_pod("shop/d", ip=z), at=104.9)  # an event older than `now`
    assert who(index, z, 104.6) == "external:world"
    assert who(index, z, 104.9) == "pod:shop/d"


def test_expire_bounds_memory_under_pod_churn() -> None:
    index = IdentityIndex(grace=60)
    for i in range(2000):  # a pod per second, each living 30 s, IPs reused from a pool of 100
        t = float(i)
        index.upsert_pod(make_pod(f"ns/p{i}", ip=f"10.0.0.{i % 100}"), at=t)
        if i >= 30:
            index.delete_pod(Uid(f"uid-ns-p{i - 30}"), at=t)
        if i % 50 == 0:
            index.expire(t)
    index.expire(2000)
    stats = index.stats()
    assert stats["pods"] == 30
    # Live claims plus at most 2 * grace seconds of deleted ones: nothing older survives.
    assert stats["segments"] <= 30 + 2 * 60 + 1
    assert stats["pending_expiry"] <= 2 * 60 + 1


def test_grace_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="grace"):
        IdentityIndex(grace=-1)


# ----------------------------------------------------------------- workloads

RS = "ReplicaSet"
OWNED_CASES = [
    # (pod owners, workload objects known, expected "Kind/name")
    pytest.param(
        (owner(RS, "web-7d9f"),),
        [
            workload_object(WorkloadKind.REPLICA_SET, "ns/web-7d9f", owner("Deployment", "web")),
            workload_object(WorkloadKind.DEPLOYMENT, "ns/web"),
        ],
        "Deployment/web",
        id="pod-replicaset-deployment",
    ),
    pytest.param(
        (owner(RS, "web-7d9f"),), [], "Deployment/web", id="replicaset-unknown-inferred-by-hash"
    ),
    pytest.param(
        (owner(RS, "lone"),),
        [workload_object(WorkloadKind.REPLICA_SET, "ns/lone")],
        "ReplicaSet/lone",
        id="bare-replicaset",
    ),
    pytest.param(
        (owner("Job", "report-1"),),
        [workload_object(WorkloadKind.JOB, "ns/report-1", owner("CronJob", "report"))],
        "CronJob/report",
        id="job-cronjob",
    ),
    pytest.param((owner("Job", "once"),), [], "Job/once", id="bare-job"),
    pytest.param((owner("StatefulSet", "db"),), [], "StatefulSet/db", id="statefulset"),
    pytest.param((owner("DaemonSet", "agent"),), [], "DaemonSet/agent", id="daemonset"),
    pytest.param((), [], "Pod/web-7d9f-x2", id="bare-pod-is-its-own-workload"),
    pytest.param((owner("Rollout", "canary"),), [], "Pod/canary", id="custom-controller"),
]


@pytest.mark.parametrize(("owners", "objects", "expected"), OWNED_CASES)
def test_workload_is_the_top_owner_as_the_cluster_resolves_it(
    owners: tuple[OwnerRef, ...], objects: list[WorkloadObject], expected: str
) -> None:
    p = make_pod("ns/web-7d9f-x2", labels={"pod-template-hash": "7d9f"}, owners=owners)
    index = IdentityIndex()
    for obj in objects:
        index.upsert_workload(obj, at=0)
    index.upsert_pod(p, at=0)
    found = index.lookup(X, 1).workload
    assert found is not None
    assert f"{found.kind.value}/{found.name}" == expected
    assert found == Cluster.build(pods=[p], workload_objects=objects).workload_of(p)


def test_owner_arriving_after_its_pods_updates_their_workload_from_then_on() -> None:
    index = IdentityIndex()
    index.upsert_pod(make_pod("ns/w-1", owners=(owner("Job", "w-1"),)), at=0)
    index.upsert_workload(
        workload_object(WorkloadKind.JOB, "ns/w-1", owner("CronJob", "nightly")), at=10
    )
    before, after = index.lookup(X, 5).workload, index.lookup(X, 15).workload
    assert before is not None and after is not None
    assert (before.kind, before.name) == (WorkloadKind.JOB, "w-1")
    assert (after.kind, after.name) == (WorkloadKind.CRON_JOB, "nightly")
    index.delete_workload(("Job", NamespaceName("ns"), "w-1"), at=20)
    gone = index.lookup(X, 25).workload
    assert gone is not None and gone.kind is WorkloadKind.JOB


def test_top_owner_arriving_later_reaches_pods_through_the_middle_owner() -> None:
    index = IdentityIndex()
    index.upsert_workload(
        workload_object(WorkloadKind.REPLICA_SET, "ns/api-1", owner("Deployment", "api")), at=0
    )
    index.upsert_pod(make_pod("ns/api-1-x", owners=(owner(RS, "api-1"),)), at=0)
    first = index.lookup(X, 1).workload
    assert first is not None and (first.kind, first.name) == (WorkloadKind.DEPLOYMENT, "api")
    index.upsert_workload(
        workload_object(WorkloadKind.DEPLOYMENT, "ns/api", owner("Rollout", "api")), at=10
    )
    found = index.lookup(X, 11).workload
    assert found is not None and (found.kind, found.name) == (WorkloadKind.POD, "api")
