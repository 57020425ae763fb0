"""Inventory feeds for the agent: a cluster source behind one small interface.

The agent owns one `InventoryStore`, read and written only on its drain thread. Sources
deliver from elsewhere — `LiveSource` from one thread per watch — so they write into a
`BufferedSink` (a lock-guarded list of calls) and the drain loop replays the buffered
calls into the store at the start of each drain (`flush_into`). Nothing else touches
the store, so neither it nor the `Cluster`/`PolicyEngine` built from it needs a lock.

Two feeds implement `InventoryFeed`:

- `SnapshotFeed` (`--cluster`): `netwatch.k8s.reload.SnapshotSource`, polled from the
  drain loop (a stat of each file; a reload only when they changed), so no thread. The
  first load holds for all time, later ones from when they were loaded. A
  rejected reload (broken YAML, invalid object, vanished file) keeps the previous
  inventory; the feed is *stale* from the first rejection until a good reload, and
  from the start when nothing usable was ever loaded (every path missing).
- `LiveFeed` (`--kubeconfig` / in-cluster): `netwatch.k8s.live.LiveSource`; staleness and
  restarts are its own (`stale_seconds`, `watch_restarts_total`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from netwatch.core.inventory import InventoryEvent, InventoryObject, ObjectKind
from netwatch.core.model import LoadProblem
from netwatch.core.store import InventoryStore
from netwatch.k8s.live import LiveSource
from netwatch.k8s.reload import SnapshotSource

log = logging.getLogger("netwatch.agent")

_Call = tuple[ObjectKind, Sequence[InventoryObject], float] | InventoryEvent


class BufferedSink:
    """An `InventorySink` any thread may call; `flush_into` replays the calls in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[_Call] = []

    def replace(self, kind: ObjectKind, objects: Sequence[InventoryObject], *, at: float) -> None:
        with self._lock:
            self._calls.append((kind, tuple(objects), at))

    def apply(self, event: InventoryEvent) -> None:
        with self._lock:
            self._calls.append(event)

    def flush_into(self, store: InventoryStore) -> int:
        """Apply the buffered calls to `store`; returns how many there were."""
        with self._lock:
            calls, self._calls = self._calls, []
        for call in calls:
            if isinstance(call, InventoryEvent):
                store.apply(call)
            else:
                kind, objects, at = call
                store.replace(kind, objects, at=at)
        return len(calls)


class InventoryFeed(Protocol):
    """What the agent needs from a cluster source."""

    def start(self) -> None:
        """Begin delivering into the sink given at construction."""

    def refresh(self) -> None:
        """Called at the start of every drain (file polling happens here)."""

    def stop(self) -> None: ...

    @property
    def loaded(self) -> bool:
        """Something usable was delivered at least once."""

    def stale_seconds(self, now: float) -> float:
        """0 while current; else how long the inventory may have missed changes."""

    @property
    def watch_restarts_total(self) -> int: ...

    @property
    def problems(self) -> Sequence[LoadProblem]:
        """Load problems of the delivered inventory (lint `invalid-object`)."""


class SnapshotFeed:
    """`--cluster` files, reloaded when they change (see the module doc)."""

    def __init__(
        self, paths: Sequence[str], sink: BufferedSink, *, clock: Callable[[], float]
    ) -> None:
        self._source = SnapshotSource(paths, sink, clock=self._delivery_time)
        self._clock = clock
        self._delivered = False
        self._rejected = 0
        self._bad_since: float | None = None

    def _delivery_time(self) -> float:
        """When a delivered load takes effect (`SnapshotSource` asks once per load).

        A snapshot does not say since when its objects exist: the first load counts for
        all time (bounded by each pod's creationTimestamp), as `netwatch inventory` and
        `analyze` read snapshots, so connections older than the agent (pinned maps, a
        replayed log) resolve. Later loads are changes, and take effect now.
        """
        if not self._delivered:
            self._delivered = True
            return -math.inf
        return self._clock()

    def start(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        now = self._clock()
        try:
            delivered = self._source.poll()
        except Exception:  # a loader bug must not end the agent: treat as a rejection
            log.exception("snapshot reload failed")
            delivered = False
            self._rejected = -1
        status = self._source.status
        rejected = self._source.rejected_total != self._rejected
        self._rejected = self._source.rejected_total
        usable = status.loaded_at is not None and not (status.objects == 0 and status.problems)
        if delivered and usable:
            if self._bad_since is not None:
                log.info("inventory current again")
            self._bad_since = None
        elif (rejected or not usable) and self._bad_since is None:
            self._bad_since = now
            log.error("inventory unavailable: %s", status.last_error or "nothing loaded")

    def stop(self) -> None:
        self._source.stop()

    @property
    def loaded(self) -> bool:
        status = self._source.status
        return status.loaded_at is not None and status.objects > 0

    def stale_seconds(self, now: float) -> float:
        return 0.0 if self._bad_since is None else max(0.0, now - self._bad_since)

    @property
    def watch_restarts_total(self) -> int:
        return 0

    @property
    def problems(self) -> Sequence[LoadProblem]:
        return self._source.status.problems

    @property
    def last_error(self) -> str | None:
        return self._source.last_error


class LiveFeed:
    """List+watch of a real cluster (see `netwatch.k8s.live`)."""

    def __init__(self, source: LiveSource, *, sync_timeout: float = 30.0) -> None:
        self._source = source
        self._sync_timeout = sync_timeout

    @classmethod
    def from_config(
        cls, sink: BufferedSink, *, kubeconfig: str | None, clock: Callable[[], float]
    ) -> LiveFeed:
        return cls(LiveSource.from_config(sink, kubeconfig=kubeconfig, clock=clock))

    def start(self) -> None:
        self._source.start()
        if not self._source.wait_synced(self._sync_timeout):
            log.warning("inventory not synced after %.0fs; serving anyway", self._sync_timeout)

    def refresh(self) -> None:
        return None

    def stop(self) -> None:
        self._source.stop()

    @property
    def loaded(self) -> bool:
        return all(h.synced for h in self._source.resource_health().values())

    def stale_seconds(self, now: float) -> float:
        return self._source.stale_seconds(now)

    @property
    def watch_restarts_total(self) -> int:
        return self._source.watch_restarts_total

    @property
    def problems(self) -> Sequence[LoadProblem]:
        return ()
