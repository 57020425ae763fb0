"""The live cluster source: list+watch of every resource netwatch uses, into an InventorySink.

`LiveSource` runs one `watch.Reflector` per resource (`resources.ALL_RESOURCES`: pods,
namespaces, services, endpointslices, networkpolicies, nodes and the six workload
owners) and delivers what they see, converted to core values, to the sink: `replace` for
each (re)list, `apply` for each watch event.

Threads, one per resource — why: the kubernetes client is blocking (urllib3), and a
watch is a read that blocks until the API server has something to say. One loop over
twelve streams would need a selector over urllib3's sockets or an async client; a thread
per stream is what client-go does with a goroutine per informer, costs a mostly idle
thread each, and keeps every stream's failure and backoff independent. The threads
meet in two places, each behind a lock: the shared reconnect `RequestGate`, and the
`_Publisher`, which serialises every call into the sink (so the sink need not be
thread-safe) and keeps the slim objects of each resource. It needs them because one
inventory kind, WORKLOAD, is fed by six collections: a relist of ReplicaSets must
`replace` WORKLOAD with the ReplicaSets *and* the Deployments, StatefulSets, … it
already has, or it would delete them.

Staleness is visible: `health()` per kind, `stale_seconds(now)` overall (0 while every
watch is current; otherwise how long the oldest break has lasted) and the restart
counters, for the agent's readiness and its `netwatch_watch_restarts_total`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from kubernetes import client, config

from netwatch.core.inventory import (
    EventType,
    InventoryEvent,
    InventoryObject,
    InventorySink,
    ObjectKind,
)
from netwatch.k8s.backoff import RequestGate, TokenBucket, default_uniform
from netwatch.k8s.resources import ALL_RESOURCES, Resource
from netwatch.k8s.stream import ObjectRef
from netwatch.k8s.watch import Reflector, ResourceHealth, WatchOptions

log = logging.getLogger(__name__)

__all__ = ["KindHealth", "LiveSource", "ResourceHealth", "WatchOptions", "api_client_from_config"]


def api_client_from_config(
    *, kubeconfig: str | None = None, context: str | None = None, pool_size: int = 16
) -> client.ApiClient:
    """A client from `kubeconfig`, else in-cluster config when in a pod, else ~/.kube/config.

    The client does not retry by itself: the reflectors do, with backoff and the rate
    limit; hidden urllib3 retries would multiply the requests the rate limit counts.
    """
    cfg = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        # Re-reads the projected service-account token when it rotates.
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig,
            context=context,
            client_configuration=cfg,
            persist_config=False,  # never write refreshed credentials back into the file
        )
    cfg.retries = False
    cfg.connection_pool_maxsize = pool_size  # one connection per long-lived watch
    cfg.keep_alive = True  # TCP keepalive notices a dead peer under an idle watch
    return client.ApiClient(cfg)


@dataclass(frozen=True, slots=True)
class KindHealth:
    """One inventory kind's state, over the collections that feed it."""

    kind: ObjectKind
    healthy: bool
    synced: bool
    last_sync: float | None
    """Oldest of its collections' `last_sync` (None until all have synced once)."""


class LiveSource:
    """List+watch of the live cluster into `sink`; `start()` it, `stop()` it."""

    def __init__(
        self,
        api_client: client.ApiClient,
        sink: InventorySink,
        *,
        resources: Sequence[Resource] = ALL_RESOURCES,
        options: WatchOptions | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
        uniform: Callable[[], float] | None = None,
        owns_client: bool = False,
    ) -> None:
        """`clock` gives epoch seconds (events' `at`, health, the rate limit); `sleep`
        defaults to a wait that `stop()` interrupts; `uniform` is the jitter source."""
        self._options = options or WatchOptions()
        self._clock = clock
        self._stopping = threading.Event()
        self._sleep = sleep or self._interruptible_sleep
        self._api_client = api_client
        self._owns_client = owns_client
        self._publisher = _Publisher(sink, resources)
        gate = RequestGate(
            TokenBucket(rate=self._options.rate, burst=self._options.burst, now=clock()),
            clock=clock,
            sleep=self._sleep,
        )
        jitter = uniform or default_uniform()
        self._reflectors = [
            Reflector(
                resource,
                list_function=resource.list_function(api_client),
                output=self._publisher,
                gate=gate,
                options=self._options,
                clock=clock,
                sleep=self._sleep,
                uniform=jitter,
            )
            for resource in resources
        ]
        self._threads: list[threading.Thread] = []
        self._started_at: float | None = None

    @classmethod
    def from_config(
        cls,
        sink: InventorySink,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        resources: Sequence[Resource] = ALL_RESOURCES,
        options: WatchOptions | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
        uniform: Callable[[], float] | None = None,
    ) -> LiveSource:
        """A source with its own client (see `api_client_from_config`), closed by `stop`."""
        api = api_client_from_config(
            kubeconfig=kubeconfig, context=context, pool_size=len(resources) + 4
        )
        return cls(
            api,
            sink,
            resources=resources,
            options=options,
            clock=clock,
            sleep=sleep,
            uniform=uniform,
            owns_client=True,
        )

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("LiveSource already started")
        self._started_at = self._clock()
        for reflector in self._reflectors:
            thread = threading.Thread(
                target=reflector.run, name=f"watch-{reflector.resource.name}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every watch and join the threads (each within `timeout` seconds)."""
        self._stopping.set()
        for reflector in self._reflectors:
            reflector.abort()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s did not stop within %.1fs", thread.name, timeout)
        if self._owns_client:
            self._api_client.close()  # type: ignore[no-untyped-call]

    def _interruptible_sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def wait_synced(self, timeout: float) -> bool:
        """Block until every resource has been listed once (for startup and tests)."""
        deadline = time.monotonic() + timeout
        while not all(r.health.synced for r in self._reflectors):
            if time.monotonic() >= deadline or self._stopping.is_set():
                return False
            self._stopping.wait(0.01)
        return True

    # -------------------------------------------------------------------- state

    def resource_health(self) -> dict[str, ResourceHealth]:
        return {r.resource.name: r.health for r in self._reflectors}

    def health(self) -> dict[ObjectKind, KindHealth]:
        by_kind: dict[ObjectKind, list[ResourceHealth]] = {}
        for r in self._reflectors:
            by_kind.setdefault(r.resource.kind, []).append(r.health)
        out: dict[ObjectKind, KindHealth] = {}
        for kind, states in by_kind.items():
            syncs = [h.last_sync for h in states]
            out[kind] = KindHealth(
                kind=kind,
                healthy=all(h.healthy for h in states),
                synced=all(h.synced for h in states),
                last_sync=None if None in syncs else min(s for s in syncs if s is not None),
            )
        return out

    def stale_seconds(self, now: float) -> float:
        """0 while every watch is current; else the longest any may have missed changes."""
        since = self._started_at if self._started_at is not None else now
        return max(
            (r.health.stale_seconds(now, since=since) for r in self._reflectors), default=0.0
        )

    @property
    def watch_restarts_total(self) -> int:
        """Watches re-established for any reason (server timeout, drop, error, 410)."""
        return sum(r.restarts for r in self._reflectors)

    @property
    def restarts_by_reason(self) -> Counter[str]:
        """`closed` (stream ended cleanly), `error` (failure, backoff), `expired` (410)."""
        total: Counter[str] = Counter()
        for r in self._reflectors:
            total.update(r.counters.restarts)
        return total

    @property
    def objects_skipped_total(self) -> int:
        """Objects that failed conversion (logged with the reason, then ignored)."""
        return sum(r.counters.skipped for r in self._reflectors)

    def object_counts(self) -> dict[ObjectKind, int]:
        """Objects currently held per kind (`netwatch_inventory_objects{kind}`)."""
        return self._publisher.counts()


class _Publisher:
    """Serialises deliveries into the sink and keeps each collection's slim objects."""

    def __init__(self, sink: InventorySink, resources: Iterable[Resource]) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._stores: dict[str, dict[ObjectRef, InventoryObject]] = {}
        self._feeds: dict[ObjectKind, list[str]] = {}
        for resource in resources:
            self._stores[resource.name] = {}
            self._feeds.setdefault(resource.kind, []).append(resource.name)

    def relisted(
        self, resource: Resource, objects: Mapping[ObjectRef, InventoryObject], *, at: float
    ) -> None:
        with self._lock:
            self._stores[resource.name] = dict(objects)
            union = [
                obj for name in self._feeds[resource.kind] for obj in self._stores[name].values()
            ]
            self._sink.replace(resource.kind, union, at=at)

    def changed(
        self,
        resource: Resource,
        *,
        type: EventType,
        ref: ObjectRef,
        obj: InventoryObject | None,
        at: float,
    ) -> None:
        with self._lock:
            store = self._stores[resource.name]
            if obj is None:
                # The new state did not convert: what we held is no longer true. A snapshot
                # load leaves invalid objects out (DESIGN §3.9); the live view agrees.
                previous = store.pop(ref, None)
                if previous is not None:
                    self._sink.apply(InventoryEvent(EventType.DELETED, resource.kind, previous, at))
                return
            if type is EventType.DELETED:
                store.pop(ref, None)
            else:
                store[ref] = obj
            self._sink.apply(InventoryEvent(type, resource.kind, obj, at))

    def counts(self) -> dict[ObjectKind, int]:
        with self._lock:
            out: dict[ObjectKind, int] = {}
            for kind, names in self._feeds.items():
                out[kind] = sum(len(self._stores[n]) for n in names)
            return out
