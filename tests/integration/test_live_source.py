"""The live source against a real HTTP server speaking list+watch, with the real client.

`kube_api.KubeAPI` serves the Kubernetes list/watch protocol on loopback; the source
connects through a kubeconfig file with the `kubernetes` client, so everything from
config loading to chunked-stream parsing is the production path. Faults are injected
at the server: dropped streams, 410 Gone, failing requests, the server going away.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from netwatch.core.inventory import ObjectKind
from netwatch.core.model import Labels, PodPhase, WorkloadKind
from netwatch.k8s.backoff import BackoffPolicy
from netwatch.k8s.watch import WatchOptions
from tests.integration.conftest import FAST, RecordingSink, SourceFactory
from tests.integration.kube_api import KubeAPI, wait_until

POD = ObjectKind.POD


def pod(name: str, ip: str, *, namespace: str = "shop", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": name}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def owned(name: str, owner_kind: str, owner: str, **extra: Any) -> dict[str, Any]:
    ref = {"apiVersion": "apps/v1", "kind": owner_kind, "name": owner, "controller": True}
    return {"metadata": {"name": name, "namespace": "shop", "ownerReferences": [ref]}, **extra}


def selector(**labels: str) -> dict[str, Any]:
    return {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}}}


def populate(api: KubeAPI) -> None:
    """One or more objects of every watched resource."""
    api.create("namespaces", {"metadata": {"name": "shop", "labels": {"team": "a"}}})
    api.create(
        "nodes",
        {
            "metadata": {"name": "node-1"},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]},
        },
    )
    for i in range(3):  # more than a page (FAST.page_size is 2)
        api.create("pods", pod(f"web-{i}", f"10.244.1.{10 + i}", app="web"))
    api.create(
        "services",
        {
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "clusterIP": "10.96.0.10",
                "selector": {"app": "web"},
                "ports": [{"port": 80}],
            },
        },
    )
    api.create(
        "endpointslices",
        {
            "metadata": {
                "name": "web-abc",
                "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "web"},
            },
            "endpoints": [{"addresses": ["10.244.1.10"]}],
            "ports": [{"port": 8080, "protocol": "TCP"}],
        },
    )
    api.create(
        "networkpolicies",
        {
            "metadata": {"name": "deny-all", "namespace": "shop"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        },
    )
    api.create(
        "deployments",
        {"metadata": {"name": "web", "namespace": "shop"}, "spec": selector(app="web")},
    )
    api.create("replicasets", owned("web-7d9f", "Deployment", "web", spec=selector(app="web")))
    api.create(
        "statefulsets",
        {"metadata": {"name": "db", "namespace": "shop"}, "spec": selector(app="db")},
    )
    api.create(
        "daemonsets",
        {"metadata": {"name": "agent", "namespace": "shop"}, "spec": selector(app="agent")},
    )
    api.create("cronjobs", {"metadata": {"name": "nightly", "namespace": "shop"}, "spec": {}})
    api.create("jobs", owned("nightly-1", "CronJob", "nightly", spec=selector(job="n")))


def started(make: SourceFactory, **kwargs: Any) -> Any:
    source = make(**kwargs)
    source.start()
    assert source.wait_synced(5), source.resource_health()
    return source


def test_initial_list_delivers_every_kind_as_slim_core_values(
    kube_api: KubeAPI, sink: RecordingSink, live_source: SourceFactory
) -> None:
    populate(kube_api)
    source = started(live_source)

    assert sink.names(POD) == {"shop/web-0", "shop/web-1", "shop/web-2"}
    web0 = sink.get(POD, "shop/web-0")
    assert web0.ips == ("10.244.1.10",)
    assert web0.phase is PodPhase.RUNNING
    assert sink.names(ObjectKind.NAMESPACE) == {"shop"}
    assert sink.get(ObjectKind.NODE, "node-1").addresses == ("192.168.0.1",)
    assert sink.get(ObjectKind.SERVICE, "shop/web").cluster_ips == ("10.96.0.10",)
    assert sink.get(ObjectKind.ENDPOINT_SLICE, "shop/web-abc").service_name == "web"
    assert sink.names(ObjectKind.NETWORK_POLICY) == {"shop/deny-all"}
    assert sink.names(ObjectKind.WORKLOAD) == {
        "Deployment/shop/web",
        "ReplicaSet/shop/web-7d9f",
        "StatefulSet/shop/db",
        "DaemonSet/shop/agent",
        "CronJob/shop/nightly",
        "Job/shop/nightly-1",
    }
    # Deployments keep their selector (suggestions use it); ReplicaSets and Jobs arrive
    # as metadata only, ownership intact.
    assert sink.get(ObjectKind.WORKLOAD, "Deployment/shop/web").selector_labels == Labels(
        {"app": "web"}
    )
    rs = sink.get(ObjectKind.WORKLOAD, "ReplicaSet/shop/web-7d9f")
    assert rs.kind is WorkloadKind.REPLICA_SET
    assert rs.selector_labels is None
    assert rs.owners[0].kind == "Deployment"
    assert sink.get(ObjectKind.WORKLOAD, "Job/shop/nightly-1").owners[0].name == "nightly"

    lists = {r.resource: r for r in kube_api.requests if not r.watch}
    assert "PartialObjectMetadataList" in lists["replicasets"].accept
    assert "PartialObjectMetadata" not in lists["deployments"].accept
    assert lists["namespaces"].params["resourceVersion"] == "0"  # the watch cache: cheap
    pod_lists = [r for r in kube_api.requests if r.resource == "pods" and not r.watch]
    assert [bool(r.params.get("continue")) for r in pod_lists] == [False, True]  # paged
    wait_until(lambda: kube_api.open_streams() == 12, message="a watch per resource")
    watches = [r for r in kube_api.requests if r.watch]
    assert all(r.params["allowWatchBookmarks"] == "true" for r in watches)
    assert source.stale_seconds(time.time()) == 0.0
    assert all(h.healthy and h.synced for h in source.health().values())
    assert source.object_counts()[ObjectKind.WORKLOAD] == 6


def test_watch_events_are_applied_in_order(
    kube_api: KubeAPI, sink: RecordingSink, live_source: SourceFactory
) -> None:
    kube_api.create("pods", pod("a", "10.0.0.1"))
    started(live_source)
    wait_until(lambda: kube_api.open_streams("pods") == 1)

    kube_api.create("pods", pod("b", "10.0.0.2"))
    kube_api.update("pods", pod("b", "10.0.0.2", app="b", tier="front"))
    kube_api.delete("pods", "a", "shop")

    expected = [("ADDED", "shop/b"), ("MODIFIED", "shop/b"), ("DELETED", "shop/a")]
    wait_until(lambda: sink.events(POD) == expected, message=lambda: sink.events(POD))
    assert sink.names(POD) == {"shop/b"}
    assert sink.get(POD, "shop/b").labels == Labels({"app": "b", "tier": "front"})
    assert len(sink.replaces(POD)) == 1  # the initial list only


def test_objects_that_fail_conversion_are_logged_and_skipped(
    kube_api: KubeAPI,
    sink: RecordingSink,
    live_source: SourceFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="netwatch.k8s.watch")
    kube_api.create("pods", pod("bad", "10.0.0.9", **{"bad key!": "x"}))
    kube_api.create("pods", pod("good", "10.0.0.1"))
    source = started(live_source)
    assert sink.names(POD) == {"shop/good"}
    wait_until(lambda: kube_api.open_streams("pods") == 1)

    # A known object turning invalid is dropped, as a snapshot load would leave it out.
    kube_api.update("pods", pod("good", "10.0.0.1", **{"bad key!": "x"}))
    kube_api.create("pods", pod("later", "10.0.0.2"))
    wait_until(lambda: sink.names(POD) == {"shop/later"}, message=lambda: sink.names(POD))
    assert sink.events(POD) == [("DELETED", "shop/good"), ("ADDED", "shop/later")]
    assert source.objects_skipped_total == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipping object" in m and "bad key!" in m for m in messages), messages
    assert source.watch_restarts_total == 0  # a bad object is not a broken stream


def test_dropped_stream_resumes_from_resource_version_without_loss_or_duplicates(
    kube_api: KubeAPI, sink: RecordingSink, live_source: SourceFactory
) -> None:
    kube_api.create("pods", pod("a", "10.0.0.1"))
    source = started(live_source)
    wait_until(lambda: kube_api.open_streams() == 12)
    kube_api.create("pods", pod("b", "10.0.0.2"))
    wait_until(lambda: ("ADDED", "shop/b") in sink.events(POD))
    seen_rv = source.resource_health()["pods"].resource_version

    # Cut the stream and keep the client out while the cluster changes.
    kube_api.fail_with(503)
    assert kube_api.drop_streams() == 12
    wait_until(lambda: not source.resource_health()["pods"].healthy)
    kube_api.create("pods", pod("c", "10.0.0.3"))
    kube_api.update("pods", pod("a", "10.0.0.1", app="a", v="2"))
    kube_api.delete("pods", "b", "shop")
    before = time.monotonic()
    kube_api.fail_with(None)

    expected = [
        ("ADDED", "shop/b"),
        ("ADDED", "shop/c"),
        ("MODIFIED", "shop/a"),
        ("DELETED", "shop/b"),
    ]
    wait_until(lambda: sink.events(POD) == expected, message=lambda: sink.events(POD))
    assert sink.names(POD) == {"shop/a", "shop/c"}
    assert len(sink.replaces(POD)) == 1  # resumed, not relisted
    rewatch = next(
        r for r in kube_api.requests if r.resource == "pods" and r.watch and r.at >= before
    )
    assert rewatch.params["resourceVersion"] == seen_rv
    assert source.restarts_by_reason["error"] >= 12
    assert source.restarts_by_reason["expired"] == 0
    wait_until(lambda: source.stale_seconds(time.time()) == 0.0)


def test_bookmarks_move_the_resource_version_past_compaction(
    kube_api: KubeAPI, sink: RecordingSink, live_source: SourceFactory
) -> None:
    kube_api.create("pods", pod("a", "10.0.0.1"))
    source = started(live_source)
    wait_until(lambda: kube_api.open_streams() == 12)
    # Other resources change; the pods watch sees nothing but a bookmark.
    kube_api.create("services", {"metadata": {"name": "s", "namespace": "shop"}, "spec": {}})
    kube_api.send_bookmarks()
    revision = str(kube_api.revision)
    wait_until(
        lambda: {h.resource_version for h in source.resource_health().values()} == {revision},
        message=source.resource_health,
    )

    # History before the bookmark is compacted away: resuming from it still works.
    kube_api.compact()
    kube_api.drop_streams()
    kube_api.create("pods", pod("b", "10.0.0.2"))
    wait_until(lambda: ("ADDED", "shop/b") in sink.events(POD))
    assert source.restarts_by_reason["expired"] == 0
    assert sum(1 for r in kube_api.requests if not r.watch and not r.params.get("continue")) == 12


def test_server_side_watch_timeout_renews_from_the_resource_version(
    kube_api: KubeAPI, sink: RecordingSink, live_source: SourceFactory
) -> None:
    source = started(live_source, options=replace(FAST, watch_timeout=1.0))
    wait_until(lambda: source.restarts_by_reason["closed"] >= 12, timeout=5)
    kube_api.create("pods", pod("a", "10.0.0.1"))
    wait_until(lambda: sink.events(POD) == [("ADDED", "shop/a")])
    assert source.restarts_by_reason["error"] == 0
    assert len(sink.replaces(POD)) == 1
    assert {r.params["timeoutSeconds"] for r in kube_api.requests if r.watch} <= {"1", "2"}


def test_relist_of_one_owner_collection_keeps_the_other_owners(
    kube_api: KubeAPI, sink: RecordingSink, live_source: SourceFactory
) -> None:
    populate(kube_api)
    started(live_source)
    wait_until(lambda: kube_api.open_streams() == 12)
    kube_api.update("replicasets", owned("web-7d9f", "Deployment", "web", spec=selector(app="w")))
    wait_until(lambda: ("MODIFIED", "ReplicaSet/shop/web-7d9f") in sink.events(ObjectKind.WORKLOAD))

    assert kube_api.expire_streams("replicasets") == 1
    wait_until(lambda: len(sink.replaces(ObjectKind.WORKLOAD)) == 7)  # 6 initial lists + 1
    assert len(sink.replaces(ObjectKind.WORKLOAD)[-1].names) == 6
    assert len(sink.names(ObjectKind.WORKLOAD)) == 6


@pytest.mark.parametrize(
    "how", ["error-event-on-resume", "http-410-on-resume", "error-event-on-open-stream"]
)
def test_gone_relists_and_objects_deleted_meanwhile_disappear(
    kube_api: KubeAPI, sink: RecordingSink, live_source: SourceFactory, how: str
) -> None:
    kube_api.gone_as_status = how == "http-410-on-resume"
    kube_api.create("pods", pod("a", "10.0.0.1"))
    kube_api.create("pods", pod("b", "10.0.0.2"))
    source = started(live_source)
    wait_until(lambda: kube_api.open_streams("pods") == 1)

    if how == "error-event-on-open-stream":
        kube_api.fail_with(503)  # hold the client off until the changes are made
        kube_api.expire_streams()
    else:
        kube_api.fail_with(503)
        kube_api.drop_streams()
    wait_until(lambda: not source.resource_health()["pods"].healthy)
    kube_api.delete("pods", "b", "shop")
    kube_api.create("pods", pod("c", "10.0.0.3"))
    kube_api.compact()  # the deletion of b is no longer in any watch history
    before = time.monotonic()
    kube_api.fail_with(None)

    wait_until(lambda: len(sink.replaces(POD)) == 2, message=lambda: sink.replaces(POD))
    assert sink.replaces(POD)[-1].names == ("shop/a", "shop/c")
    assert sink.names(POD) == {"shop/a", "shop/c"}
    assert sink.events(POD) == []  # b vanished through the relist, not an event
    assert source.restarts_by_reason["expired"] >= 1
    relist = next(
        r for r in kube_api.requests if r.resource == "pods" and not r.watch and r.at >= before
    )
    assert "resourceVersion" not in relist.params  # consistent: never older than before
    wait_until(lambda: source.resource_health()["pods"].healthy)
    kube_api.create("pods", pod("d", "10.0.0.4"))
    wait_until(lambda: sink.events(POD) == [("ADDED", "shop/d")])


def test_other_watch_errors_resume_from_the_resource_version(
    kube_api: KubeAPI, sink: RecordingSink, live_source: SourceFactory
) -> None:
    source = started(live_source)
    wait_until(lambda: kube_api.open_streams("pods") == 1)
    kube_api.create("pods", pod("a", "10.0.0.1"))
    wait_until(lambda: sink.events(POD) == [("ADDED", "shop/a")])

    assert kube_api.expire_streams("pods", code=500) == 1
    kube_api.create("pods", pod("b", "10.0.0.2"))
    wait_until(lambda: sink.events(POD) == [("ADDED", "shop/a"), ("ADDED", "shop/b")])
    assert source.restarts_by_reason["error"] == 1
    assert source.restarts_by_reason["expired"] == 0
    assert len(sink.replaces(POD)) == 1


def test_api_going_away_is_reported_stale_and_recovered(
    kube_api: KubeAPI, sink: RecordingSink, live_source: SourceFactory
) -> None:
    kube_api.create("pods", pod("a", "10.0.0.1"))
    source = started(live_source)
    wait_until(lambda: kube_api.open_streams() == 12)
    assert source.stale_seconds(time.time()) == 0.0

    kube_api.stop()
    wait_until(lambda: not any(h.healthy for h in source.health().values()))
    time.sleep(0.3)
    stale = source.stale_seconds(time.time())
    assert stale >= 0.3
    health = source.health()[POD]
    assert not health.healthy and health.synced
    assert health.last_sync is not None and time.time() - health.last_sync >= 0.3
    assert source.resource_health()["pods"].error

    kube_api.start()  # same port, same state: an API server restart
    kube_api.create("pods", pod("b", "10.0.0.2"))
    wait_until(lambda: ("ADDED", "shop/b") in sink.events(POD))
    wait_until(lambda: source.stale_seconds(time.time()) == 0.0)
    assert all(h.healthy for h in source.health().values())
    assert len(sink.replaces(POD)) == 1  # resumed from the resourceVersion


@pytest.mark.parametrize("fault", [500, "reset"])
def test_reconnect_flood_stays_within_the_rate_limit(
    kube_api: KubeAPI, live_source: SourceFactory, fault: int | str
) -> None:
    rate, burst, window = 20.0, 12, 1.0
    options = WatchOptions(
        # Backoff near zero: only the token bucket stands between 12 watchers and a flood.
        backoff=BackoffPolicy(initial=0.001, cap=0.002),
        connect_timeout=1.0,
        request_timeout=1.0,
        rate=rate,
        burst=burst,
    )
    source = started(live_source, options=options)
    wait_until(lambda: kube_api.open_streams() == 12)
    time.sleep(burst / rate)  # the initial requests' tokens are back

    kube_api.fail_with(fault)
    kube_api.drop_streams()
    start = time.monotonic()
    time.sleep(window)
    attempts = kube_api.count(since=start)

    # burst at once, then `rate` per second; one more for a request already in flight.
    assert attempts <= burst + rate * window + 1, attempts
    assert attempts >= rate * window / 2, attempts  # and it does keep trying
    assert source.restarts_by_reason["error"] >= attempts - 1


def test_stop_interrupts_backoff_and_joins_every_thread(
    kube_api: KubeAPI, live_source: SourceFactory
) -> None:
    options = WatchOptions(backoff=BackoffPolicy(initial=60.0, cap=60.0), rate=100, burst=100)
    kube_api.fail_with(503)
    source = live_source(options=options, uniform=lambda: 0.999)
    source.start()
    wait_until(lambda: kube_api.count() >= 12)  # every watcher failed and sleeps ~60 s
    time.sleep(0.1)
    assert source.stale_seconds(time.time()) >= 0.1  # never synced: stale since start
    assert not any(h.synced for h in source.health().values())

    begin = time.monotonic()
    source.stop(timeout=5)
    assert time.monotonic() - begin < 2
    assert not [t for t in threading.enumerate() if t.name.startswith("watch-")]


def test_stop_unblocks_open_watches(kube_api: KubeAPI, live_source: SourceFactory) -> None:
    source = started(live_source, options=FAST)
    wait_until(lambda: kube_api.open_streams() == 12)
    begin = time.monotonic()
    source.stop(timeout=5)
    assert time.monotonic() - begin < 2
    assert not [t for t in threading.enumerate() if t.name.startswith("watch-")]
