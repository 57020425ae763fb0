"""Workload edges read back from Prometheus, as observations `suggest` understands.

`netwatch suggest --prometheus` (DESIGN §7, §8): every agent exports
`netwatch_flows_total{src_namespace,src_workload,dst_namespace,dst_workload,dst_port,
protocol,verdict}`, so Prometheus holds the cluster-wide workload graph. The metrics
carry no addresses, so each edge is turned into one flow row between *representative*
endpoints from the cluster snapshot: the first running pod (by name) of the workload
— whose labels and container ports are what the suggested selectors and named ports
come from — or a node's first address for `node:NAME`. The row is then attributed and
evaluated like any flow-log record, with the series' connection count.

An external end (`world`, or a CIDR name given with `--cidr`) has no address either:
it becomes a *stand-in* (`suggest.StandIn`) at a representative address the attributor
names the same way — for `world` a documentation address (RFC 5737, `198.51.100.7`
first), for a named CIDR its first host — avoiding the cluster's ranges and addresses
and any other named CIDR that would claim it. `suggest` turns a stand-in into a rule
for the whole range, and verification judges the representative against it.

Edges that cannot be re-created are skipped and counted by reason: names not given
with `--cidr`, `unknown` endpoints, Services without backends, workloads no longer in
the snapshot, and the `other` port bucket.
The verdict label (the verdict when the connection was seen) is not used: like flow-log
records, the edges are judged under the snapshot's policies. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from netwatch.core.cluster import Cluster
from netwatch.core.flow import FlowRow
from netwatch.core.identity import WORLD
from netwatch.core.model import Pod, PodPhase, Protocol
from netwatch.core.policy import IPAddress, IPNetwork
from netwatch.core.suggest import StandIn, strictly_inside

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
WORLD_ADDRESSES = tuple(
    ipaddress.ip_address(a) for a in ("198.51.100.7", "203.0.113.7", "192.0.2.7")
)
"""Representatives of `world`, in order of preference (RFC 5737 documentation ranges)."""


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
    stand_ins: dict[str, StandIn] = field(default_factory=dict)
    """Representative address → the external range it stands for (`suggest`'s input)."""

    def skip(self, reason: str, count: int) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count


class _Endpoints:
    """Representative addresses: a workload's first running pod, a node's first address,
    an external range's first free address (module doc)."""

    def __init__(
        self, cluster: Cluster, *, named_cidrs: Mapping[str, str], pod_cidrs: Iterable[str]
    ) -> None:
        self._pods: dict[tuple[str, str], Pod] = {}
        for pod in sorted(cluster.pods, key=lambda p: (p.namespace, p.name)):
            if pod.host_network or pod.primary_ip is None or pod.phase is not PodPhase.RUNNING:
                continue
            key = (pod.namespace, cluster.workload_of(pod).name)
            self._pods.setdefault(key, pod)
        self._nodes: dict[str, str] = {
            str(n.name): n.addresses[0] for n in cluster.nodes if n.addresses
        }
        self._named = {
            name: ipaddress.ip_network(text, strict=False) for name, text in named_cidrs.items()
        }
        self._cluster_nets = cluster.pod_ranges(pod_cidrs)
        self._taken: set[IPAddress] = {
            ipaddress.ip_address(ip)
            for ip in (
                *(ip for p in cluster.pods for ip in p.ips),
                *(ip for n in cluster.nodes for ip in n.addresses),
                *(ip for s in cluster.services for ip in s.cluster_ips),
            )
            if _is_ip(ip)
        }
        self.stand_ins: dict[str, StandIn] = {}
        self._external: dict[str, str | None] = {}

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
        if workload != WORLD and workload not in self._named:
            return None, "external peer named by the agents but not with --cidr"
        if workload not in self._external:
            self._external[workload] = ip = self._representative(workload)
            if ip is not None:
                self.stand_ins[ip] = StandIn(workload, self._named.get(workload))
        ip = self._external[workload]
        return (ip, "") if ip else (None, "external peer without a free address to stand for it")

    def _representative(self, label: str) -> str | None:
        """An address the attributor names `label`: outside the cluster, the taken
        addresses and (for `world`) every named CIDR, (for a name) the longer ones in it."""
        net = self._named.get(label)
        if net is None:
            avoid = [*self._cluster_nets, *self._named.values()]
            return next((str(ip) for ip in WORLD_ADDRESSES if self._free(ip, avoid)), None)
        inner = [n for n in self._named.values() if strictly_inside(n, net)]
        return _first_free(net, [*self._cluster_nets, *inner], self._taken)

    def _free(self, ip: IPAddress, avoid: Sequence[IPNetwork]) -> bool:
        return ip not in self._taken and not any(ip in n for n in avoid)


def _first_free(net: IPNetwork, avoid: Sequence[IPNetwork], taken: set[IPAddress]) -> str | None:
    """The lowest host of `net` in none of `avoid` and not `taken`, if any."""
    ip: IPAddress = net.network_address + (1 if net.num_addresses > 2 else 0)
    while ip in net:
        blocker = next((n for n in avoid if ip in n), None)
        if blocker is None and ip not in taken:
            return str(ip)
        end = blocker.broadcast_address if blocker is not None else ip
        if int(end) >= int(net.broadcast_address):
            return None
        ip = end + 1
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def edge_rows(
    series: Iterable[tuple[Mapping[str, str], float]],
    cluster: Cluster,
    *,
    at: float,
    named_cidrs: Mapping[str, str] | None = None,
    pod_cidrs: Iterable[str] = (),
) -> EdgeRows:
    """Flow rows for `(labels, connections)` series, seen at `at` (epoch seconds);
    `named_cidrs` and `pod_cidrs` as the attributor was configured (`--cidr`, `--pod-cidr`)."""
    endpoints = _Endpoints(cluster, named_cidrs=named_cidrs or {}, pod_cidrs=pod_cidrs)
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
    out.stand_ins = endpoints.stand_ins
    return out
