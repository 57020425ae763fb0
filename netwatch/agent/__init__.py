"""`netwatch agent`, the composition root: capture + inventory + engine + exporters.

One `Agent` per node (DESIGN §1). Every `drain_interval` seconds, on one thread, `step()`:

1. replays what the inventory source delivered since the last step into the agent's
   `InventoryStore` (`agent.inventory.BufferedSink`) and, when anything changed,
   rebuilds the `PolicyEngine` and `Attributor` over the new `Cluster`, tells the
   `TelemetryAccumulator` which peers and rules exist, and re-runs the static lint;
2. drains the `FlowSource` (deltas), attributes each record at its own `first_seen`
   and folds it into the accumulator;
3. expires deleted workloads' series and old identity history, then publishes a
   fresh immutable `Published` snapshot into the server's `SnapshotBox` — with the
   suggested policies, re-computed every `suggest_interval` (`agent.suggestions`);
4. with a state directory, checkpoints the counters with the capture journal position
   they include and acknowledges the journal (`agent.state`: restarts, `kill -9`
   included, continue the counters exactly; `start()` restores and replays first).

Scrapes and API requests read only that snapshot (STYLE 7). Readiness is decided at
each step too — `capture` (the source is open and its last drain worked) and
`inventory` (something was loaded and it is no staler than `max_stale`) — and read by
`/readyz` as two booleans, so the HTTP thread never touches the store or the engine.

`run(stop)` loops until `stop` is set (the CLI sets it on SIGTERM/SIGINT), then
`shutdown()`: stop the capture (eBPF detaches, unless persisting), drain and publish
once more — so the last interval's traffic is in the final snapshot and in the
Prometheus counters a last scrape reads — close the capture, stop the inventory source
and only then stop the server. Time (`clock`) is injected; nothing below reads it.

Neighbours: `netwatch.cli.agent` parses flags and builds the `FlowSource` and the feed;
`netwatch.server` serves; `netwatch.metrics` renders the registry built here.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from netwatch import __version__
from netwatch.agent.inventory import BufferedSink, InventoryFeed
from netwatch.agent.pods import ClusterPods
from netwatch.agent.state import StateDir
from netwatch.agent.suggestions import DEFAULT_INTERVAL as DEFAULT_SUGGEST_INTERVAL
from netwatch.agent.suggestions import Suggester
from netwatch.capture.base import FlowSource, Journaled, Parted
from netwatch.core.attribution import Attributor, VerdictKind
from netwatch.core.checkpoint import Checkpoint
from netwatch.core.engine import IPBlockPodIPs, PolicyEngine
from netwatch.core.flow import Connection
from netwatch.core.identity import IdentityIndex
from netwatch.core.lint import lint
from netwatch.core.store import InventoryStore
from netwatch.core.telemetry import (
    BuildInfo,
    Health,
    TelemetryAccumulator,
    TelemetrySnapshot,
    live_peers,
)
from netwatch.metrics import build_registry
from netwatch.server import NetwatchServer, Published, ServerConfig, SnapshotBox

__all__ = ["Agent", "AgentConfig"]

log = logging.getLogger("netwatch.agent")

DEFAULT_DRAIN_INTERVAL = 5.0
DEFAULT_MAX_STALE = 60.0


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node: str
    drain_interval: float = DEFAULT_DRAIN_INTERVAL
    max_stale: float = DEFAULT_MAX_STALE
    """Seconds the inventory may be stale before the agent reports not ready."""
    ipblock_pod_ips: IPBlockPodIPs = IPBlockPodIPs.MATCH
    named_cidrs: Mapping[str, str] = field(default_factory=dict)
    """CIDR name → CIDR: external peers inside it are labelled with the name, not `world`."""
    pod_cidrs: tuple[str, ...] = ()
    backend: str = ""
    """The capture backend's name, for logs."""
    suggest_interval: float = DEFAULT_SUGGEST_INTERVAL
    """Seconds between re-computations of `/api/suggestions`."""

    def __post_init__(self) -> None:
        if self.drain_interval <= 0:
            raise ValueError("the drain interval must be positive")
        if self.max_stale < 0:
            raise ValueError("max_stale must not be negative")


class Agent:
    """Wires one node's capture, inventory, engine and exporters (see the module doc)."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        flows: FlowSource,
        inventory: InventoryFeed,
        sink: BufferedSink,
        server: ServerConfig,
        state: StateDir | None = None,
        pods: ClusterPods | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`sink` is the one `inventory` delivers into; `state` (optional) keeps the
        counters across restarts (`agent.state`); `pods` is the capture's counted-once
        predicate, kept current here (`agent.pods`); `clock` gives epoch seconds."""
        self.config = config
        self._flows = flows
        self._state = state
        self.pods = pods if pods is not None else ClusterPods(config.pod_cidrs)
        self._feed = inventory
        self._sink = sink
        self._clock = clock
        self.store = InventoryStore(index=IdentityIndex(named_cidrs=config.named_cidrs))
        self.accumulator = TelemetryAccumulator()
        self.suggester = Suggester(interval=config.suggest_interval, pod_cidrs=config.pod_cidrs)
        self._build = BuildInfo(
            version=__version__, python=platform.python_version(), node=config.node
        )
        self.box = SnapshotBox(Published(TelemetrySnapshot.empty(build=self._build, at=clock())))
        self.server = NetwatchServer(
            config=server,
            box=self.box,
            registry=build_registry(self.box.telemetry),
            readiness={"capture": lambda: self._capture_ok, "inventory": lambda: self._fresh},
        )
        self._attributor: Attributor | None = None
        self._previous: Attributor | None = None
        """The generation before the last inventory change (see `_drain`)."""
        self._static_findings: dict[str, int] = {}
        self._capture_ok = False
        self._fresh = False
        self._started = False
        self._stopped = False
        self.drains = 0
        self.records_total = 0
        self.generation = 0
        """Inventory rebuilds so far (an engine per generation)."""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Serve first (probes answer while the inventory syncs), then load, then step."""
        if self._started:
            raise RuntimeError("the agent is already started")
        self._started = True
        self.server.start()
        self._restore()
        self._capture_ok = True
        self._feed.start()
        self.step()
        log.info(
            "agent started",
            extra={
                "node": self.config.node,
                "backend": self.config.backend,
                "url": self.server.url,
            },
        )

    def run(self, stop: threading.Event) -> None:
        """`start()`, then a step every `drain_interval` until `stop` is set; `shutdown()`."""
        try:
            if not self._started:
                self.start()
            while not stop.wait(self.config.drain_interval):
                self.step()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Final drain and publish, then stop capture, inventory and server. Idempotent."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        halt = getattr(self._flows, "stop", None)
        if callable(halt):
            try:
                halt()  # eBPF: detach first, so the final drain misses nothing
            except Exception:
                log.exception("stopping the capture failed")
        self.step()
        try:
            self._flows.close()
            self.step(drain_inventory=False)  # sniff: what was still queued in its sockets
        except Exception:
            log.exception("closing the capture failed")
        self._capture_ok = False
        self._feed.stop()
        self.server.stop()
        if self._state is not None:
            self._state.close()
        log.info(
            "agent stopped",
            extra={"node": self.config.node, "drains": self.drains, "records": self.records_total},
        )

    # ------------------------------------------------------------------ one drain

    def step(self, *, drain_inventory: bool = True) -> TelemetrySnapshot:
        """One drain: inventory, capture, publish (see the module doc)."""
        if drain_inventory:
            self._refresh_inventory()
        now = self._clock()
        records = self._drain(now)
        self.accumulator.expire(now)
        self.store.expire(now)
        stale = self._feed.stale_seconds(now)
        self._fresh = self._feed.loaded and stale <= self.config.max_stale
        snapshot = self.accumulator.snapshot(
            now=now,
            build=self._build,
            health=self._health(stale),
            static_findings=self._static_findings,
        )
        suggestions = self.box.current().suggestions_yaml
        if self._attributor is not None and (
            self.suggester.due(now) or (self._stopped and records)
        ):
            suggestions = self.suggester.render(self._attributor, now=now)
        self.box.publish(Published(snapshot, suggestions_yaml=suggestions))
        self._checkpoint(now)
        self.drains += 1
        log.debug("drained", extra={"records": records, "series": self.accumulator.series})
        return snapshot

    # ------------------------------------------------------------------ checkpoint

    def _restore(self) -> None:
        """Continue from the state directory's checkpoint; queue the uncounted journal."""
        if self._state is None:
            return
        checkpoint = self._state.load(node=self.config.node)
        position = 0
        if checkpoint is not None:
            self.accumulator.restore(checkpoint.telemetry)
            position = checkpoint.position
            log.info(
                "checkpoint restored",
                extra={
                    "position": position,
                    "series": self.accumulator.series,
                    "age_seconds": round(self._clock() - checkpoint.written_at, 3),
                },
            )
        if isinstance(self._flows, Journaled):
            self._flows.recover(position)

    def _checkpoint(self, now: float) -> None:
        """Save the counters with the journal position they include, then acknowledge it."""
        if self._state is None:
            return
        journaled = self._flows if isinstance(self._flows, Journaled) else None
        position = journaled.position if journaled is not None else 0
        checkpoint = Checkpoint(
            node=self.config.node,
            position=position,
            written_at=now,
            telemetry=self.accumulator.state(),
        )
        try:
            self._state.save(checkpoint)
        except OSError:
            log.exception("writing the checkpoint failed; the journal keeps the drained data")
            return
        if journaled is not None:
            journaled.acknowledge(position)

    def _refresh_inventory(self) -> None:
        try:
            self._feed.refresh()
        except Exception:
            log.exception("inventory refresh failed")
        changed = self._sink.flush_into(self.store)
        if changed or self._attributor is None:
            self._rebuild()

    def _rebuild(self) -> None:
        cluster = self.store.cluster()
        engine = PolicyEngine(cluster, ipblock_pod_ips=self.config.ipblock_pod_ips)
        self._previous = self._attributor
        self._attributor = Attributor(
            index=self.store.index,
            engine=engine,
            cluster=cluster,
            pod_cidrs=self.config.pod_cidrs,
        )
        self.pods.update(cluster)
        self.accumulator.observe_inventory(
            live=live_peers(cluster), policies=cluster.policies, at=self._clock()
        )
        findings = lint(engine, problems=tuple(self._feed.problems))
        self._static_findings = dict(Counter(f.kind.value for f in findings))
        self.generation += 1
        log.info(
            "inventory loaded",
            extra={
                "generation": self.generation,
                "pods": len(cluster.pods),
                "policies": len(cluster.policies),
            },
        )

    def _drain(self, now: float) -> int:
        attributor = self._attributor
        if attributor is None:  # pragma: no cover - _refresh_inventory always builds one
            raise RuntimeError("no inventory view")
        add, observe, previous = self.accumulator.add, self.suggester.add, self._previous
        parts, count = self._parts(), 0
        while True:
            try:
                part = next(parts, None)
            except Exception:
                if self._capture_ok:
                    log.exception("capture drain failed")
                self._capture_ok = False
                break
            if part is None:
                if not self._stopped:
                    self._capture_ok = True
                break
            for conn in part:
                item = attributor.attribute(conn)
                if item.verdict is VerdictKind.UNKNOWN and previous is not None:
                    # A pod deleted in the inventory change this very step applied: its
                    # last seconds of traffic are still drained now. The index still names
                    # it (at first_seen) but the new policy view no longer holds it; the
                    # previous generation does, and was the cluster when it happened.
                    earlier = previous.attribute(conn)
                    if earlier.verdict is not VerdictKind.UNKNOWN:
                        item = earlier
                add(item)
                observe(item)
            count += len(part)
        self.records_total += count
        return count

    def _parts(self) -> Iterator[Sequence[Connection]]:
        """The drain in parts where the source offers them (`Parted`: a busy node's
        records are attributed and counted a kernel batch at a time), else whole."""
        if isinstance(self._flows, Parted):
            yield from self._flows.drain_parts()
        else:
            yield self._flows.drain()

    def _health(self, stale: float) -> Health:
        stats = getattr(self._flows, "stats", None)
        lost = int(getattr(stats, "lost_packets", 0) or 0)
        entries = getattr(stats, "last_drain_entries", None)
        return Health(
            capture_lost=lost,
            bpf_map_entries=(("flows", int(entries)),) if entries is not None else (),
            inventory_objects=tuple(
                sorted((kind.value, n) for kind, n in self.store.counts().items())
            ),
            watch_restarts=self._feed.watch_restarts_total,
            inventory_stale_seconds=stale,
        )

    # ------------------------------------------------------------------ state

    @property
    def ready(self) -> bool:
        return self._capture_ok and self._fresh
