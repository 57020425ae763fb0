"""Prometheus exposition of the published telemetry snapshot (DESIGN §8).

`TelemetryCollector.collect()` runs on the HTTP thread at scrape time: it reads the
latest published `TelemetrySnapshot` once — an immutable value — and yields fresh metric
families from it, so a scrape never touches the agent's mutable state and every family
of one scrape comes from the same snapshot (STYLE 7). Nothing registers at import: the
agent builds its registry with `build_registry` and hands it to the HTTP server, which
renders it once per published snapshot and serves those bytes until the next one
(`netwatch.server`). Every family here is therefore a function of the snapshot alone —
even `netwatch_inventory_stale_seconds` is measured at the drain — and there is no
process collector; a series that must change per scrape would need its own rendering.

Metrics (names fixed by DESIGN §8; *detail* and *health* series are named here):

- `netwatch_flows_total`, `netwatch_flow_bytes_total`, `netwatch_flow_packets_total`
  (counters) — labels `src_namespace, src_workload, dst_namespace, dst_workload,
  dst_port, protocol, verdict`; connections, bytes and packets (both directions).
- `netwatch_policy_rule_hits_total` (counter) — `namespace, policy, direction, rule`;
  every rule of the current policies, never-hit ones at 0.
- `netwatch_policy_rule_last_hit_timestamp_seconds` (gauge) — same labels; rules hit
  at least once.
- `netwatch_findings` (gauge) — `kind`; the traffic kinds (`unexpected-flow`,
  `unused-rule`, `unprotected-workload`) always, lint kinds when the agent passes them.
- *detail* `netwatch_unused_rule_info` (gauge, value 1) — `namespace, policy,
  direction, rule`; a current rule no connection matched since the agent started.
- *detail* `netwatch_unexpected_flows_total` (counter) — the flow labels without
  `verdict`; connections policy denies that were observed anyway.
- `netwatch_capture_lost_total` (counter) — packets counted in the kernel, never drained.
- `netwatch_bpf_map_entries` (gauge) — `map`; entries at the last drain.
- `netwatch_inventory_objects` (gauge) — `kind` (`Pod`, `Service`, ...).
- `netwatch_watch_restarts_total` (counter) — inventory list+watch restarts.
- *health* `netwatch_inventory_stale_seconds` (gauge) — 0 while every watch is current.
- `netwatch_build_info` (gauge, value 1) — `version, python, node`.

Every agent reports what its node saw (each connection is counted once cluster-wide,
DESIGN §2), so aggregate across agents in PromQL. `netwatch_unused_rule_info` is per
agent; a rule unused cluster-wide over a window is

    sum by (namespace, policy, direction, rule)
      (increase(netwatch_policy_rule_hits_total[7d])) == 0

Series counts are bounded as documented in `netwatch.core.telemetry` (`flow_series_bound`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from netwatch.core.telemetry import (
    FLOW_LABELS,
    RULE_LABELS,
    UNEXPECTED_LABELS,
    TelemetrySnapshot,
)

SnapshotSource = Callable[[], TelemetrySnapshot | None]
"""Returns the latest published snapshot (None before the first one)."""

BUILD_LABELS = ("version", "python", "node")


class TelemetryCollector:
    """A prometheus_client custom collector over published snapshots (see the module doc)."""

    def __init__(self, source: SnapshotSource) -> None:
        self._source = source

    def describe(self) -> Iterator[Metric]:
        """The families without samples: registering never calls `source`."""
        yield from _families()

    def collect(self) -> Iterator[Metric]:
        snap = self._source()  # read once: every family below comes from this value
        if snap is None:
            return
        yield from _families(snap)


def build_registry(source: SnapshotSource) -> CollectorRegistry:
    """A fresh registry holding only netwatch's collector (never the global one)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(TelemetryCollector(source))
    return registry


def _families(snap: TelemetrySnapshot | None = None) -> Iterator[Metric]:
    flows = CounterMetricFamily(
        "netwatch_flows_total",
        "Connections observed, per workload pair, server port, protocol and policy verdict.",
        labels=FLOW_LABELS,
    )
    nbytes = CounterMetricFamily(
        "netwatch_flow_bytes_total",
        "Bytes of those connections, both directions (whole IP packets).",
        labels=FLOW_LABELS,
    )
    packets = CounterMetricFamily(
        "netwatch_flow_packets_total",
        "Packets of those connections, both directions.",
        labels=FLOW_LABELS,
    )
    hits = CounterMetricFamily(
        "netwatch_policy_rule_hits_total",
        "Connections each NetworkPolicy rule admitted (rule = 0-based index in the YAML list).",
        labels=RULE_LABELS,
    )
    last_hit = GaugeMetricFamily(
        "netwatch_policy_rule_last_hit_timestamp_seconds",
        "When a connection admitted by the rule was last seen (epoch seconds).",
        labels=RULE_LABELS,
    )
    findings = GaugeMetricFamily(
        "netwatch_findings",
        "Current findings per kind (as netwatch analyze names them).",
        labels=("kind",),
    )
    unused = GaugeMetricFamily(
        "netwatch_unused_rule_info",
        "1 for each rule of a current policy that no observed connection matched.",
        labels=RULE_LABELS,
    )
    unexpected = CounterMetricFamily(
        "netwatch_unexpected_flows_total",
        "Connections policy denies that were observed anyway (an enforcement gap).",
        labels=UNEXPECTED_LABELS,
    )
    lost = CounterMetricFamily(
        "netwatch_capture_lost_total",
        "Packets counted in the kernel but never drained (map evictions, update failures).",
    )
    map_entries = GaugeMetricFamily(
        "netwatch_bpf_map_entries", "Entries in each BPF map at the last drain.", labels=("map",)
    )
    objects = GaugeMetricFamily(
        "netwatch_inventory_objects", "Cluster objects held, per kind.", labels=("kind",)
    )
    restarts = CounterMetricFamily(
        "netwatch_watch_restarts_total", "Inventory list+watch restarts (drops, 410 Gone, errors)."
    )
    stale = GaugeMetricFamily(
        "netwatch_inventory_stale_seconds",
        "How long the oldest broken inventory watch has been broken; 0 while all are current.",
    )
    build = GaugeMetricFamily(
        "netwatch_build_info", "netwatch build and runtime; always 1.", labels=BUILD_LABELS
    )
    if snap is not None:
        for key, counts in snap.flows:
            flows.add_metric(key, counts.flows)
            nbytes.add_metric(key, counts.bytes)
            packets.add_metric(key, counts.packets)
        for row in snap.rule_hits:
            hits.add_metric(row.labels, row.hits)
            if row.last_hit is not None:
                last_hit.add_metric(row.labels, row.last_hit)
        for kind, count in snap.findings:
            findings.add_metric((kind,), count)
        for row in snap.unused_rules:
            unused.add_metric(row.labels, 1)
        for flow in snap.unexpected_flows:
            unexpected.add_metric(flow.key, flow.flows)
        health = snap.health
        lost.add_metric((), health.capture_lost)
        for name, entries in health.bpf_map_entries:
            map_entries.add_metric((name,), entries)
        for kind, count in health.inventory_objects:
            objects.add_metric((kind,), count)
        restarts.add_metric((), health.watch_restarts)
        stale.add_metric((), health.inventory_stale_seconds)
        build.add_metric((snap.build.version, snap.build.python, snap.build.node), 1)
    yield from (flows, nbytes, packets, hits, last_hit, findings, unused, unexpected)
    yield from (lost, map_entries, objects, restarts, stale, build)
