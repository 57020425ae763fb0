"""Workload edges read back from Prometheus, as observations `suggest` understands.

`netwatch suggest --prometheus` (DESIGN §7, §8): every agent exports
`netwatch_flows_total{src_namespace,src_workload,dst_namespace,dst_workload,dst_port,
protocol,verdict}`, so Prometheus holds the cluster-wide workload graph. The metrics
carry no addresses, so each edge is turned into one flow row between *representative*
endpoints from the cluster snapshot: the first running pod (by name) of the workload
— whose labels and container ports are what the suggested selectors and named ports
come from — or a node's first address for `node:NAME`. The row is then attributed and
evaluated like any flow-log record, with the series' connection count.

Edges that cannot be re-created are skipped and counted by reason: external peers
(`world`, named CIDRs: the addresses are not labels), `unknown` endpoints, Services
without backends, workloads no longer in the snapshot, and the `other` port bucket.
The verdict label (the verdict when the connection was seen) is not used: like flow-log
records, the edges are judged under the snapshot's policies. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from netwatch.core.cluster import Cluster
from netwatch.core.flow import FlowRow
from netwatch.core.model import Pod, PodPhase, Protocol

FLOW_LABELS = (
    "src_namespace",
    "src_workload",
    "dst_namespace",
    "dst_workload",
    "dst_port",
    "protocol",
    "verdict",
)
NODE_PREFIX = "node:"
SERVICE_PREFIX = "service:"
UNKNOWN_PEER = "unknown"


@dataclass(frozen=True, slots=True)
class EdgeRow:
    """One flow row standing for `count` connections of a workload edge."""

    row: FlowRow
    count: int


@dataclass
class EdgeRows:
    rows: list[EdgeRow] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    """Connections per reason they could not be re-created."""

    def skip(self, reason: str, count: int) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count


class _Endpoints:
    """Representative addresses: a workload's first running pod, a node's first address."""

    def __init__(self, cluster: Cluster) -> None:
        self._pods: dict[tuple[str, str], Pod] = {}
        for pod in sorted(cluster.pods, key=lambda p: (p.namespace, p.name)):
            if pod.host_network or pod.primary_ip is None or pod.phase is not PodPhase.RUNNING:
                continue
            key = (pod.namespace, cluster.workload_of(pod).name)
            self._pods.setdefault(key, pod)
        self._nodes: dict[str, str] = {
            str(n.name): n.addresses[0] for n in cluster.nodes if n.addresses
        }

    def address(self, namespace: str, workload: str) -> tuple[str | None, str]:
        """(IP, why not) for one end of an edge."""
        if namespace:
            if workload.startswith(SERVICE_PREFIX):
                return None, "Service without backends"
            pod = self._pods.get((namespace, workload))
            if pod is None:
                return None, "workload not in the cluster snapshot"
            return pod.primary_ip, ""
        if workload.startswith(NODE_PREFIX):
            ip = self._nodes.get(workload.removeprefix(NODE_PREFIX))
            return (ip, "") if ip else (None, "node not in the cluster snapshot")
        if workload == UNKNOWN_PEER:
            return None, "unknown endpoint"
        return None, "external peer (metrics carry no addresses)"


def edge_rows(
    series: Iterable[tuple[Mapping[str, str], float]], cluster: Cluster, *, at: float
) -> EdgeRows:
    """Flow rows for `(labels, connections)` series, seen at `at` (epoch seconds)."""
    endpoints = _Endpoints(cluster)
    out = EdgeRows()
    for labels, value in series:
        count = round(value)
        if count <= 0:
            continue
        try:
            protocol = Protocol(labels.get("protocol", ""))
        except ValueError:
            out.skip("unrecognised protocol", count)
            continue
        port_label = labels.get("dst_port", "")
        if not port_label.isdigit():
            out.skip("port not a label (the 'other' bucket)", count)
            continue
        client, why = endpoints.address(
            labels.get("src_namespace", ""), labels.get("src_workload", "")
        )
        if client is None:
            out.skip(why, count)
            continue
        server, why = endpoints.address(
            labels.get("dst_namespace", ""), labels.get("dst_workload", "")
        )
        if server is None:
            out.skip(why, count)
            continue
        row: FlowRow = (client, server, int(port_label), protocol, at, at, 0, 0, None, 0, False)
        out.rows.append(EdgeRow(row, count))
    return out
