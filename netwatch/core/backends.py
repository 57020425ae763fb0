"""Which pods answer for a Service port: its backends and their target ports.

A connection addressed to a ClusterIP is attributed to a backend pod and the port that
pod listens on (DESIGN §2). Backends come from the Service's EndpointSlices when the
snapshot has any (the slice port with the Service port's name gives the number, so a
named targetPort is already resolved), else from the Service's selector over the
snapshot's pods (`targetPort` taken as is, or a name resolved on each pod; pods without
it are skipped, as the endpoints controller does). Ready endpoints are preferred.

Candidates are ordered for `attribution` to try at a connection's time: the workload
with the most backends first (ties: the smaller `namespace/name`), pods by name within.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass

from netwatch.core.cluster import Cluster
from netwatch.core.model import EndpointSlice, Labels, Pod, Protocol, Service, ServicePort


@dataclass(frozen=True, slots=True)
class Backend:
    pod: Pod
    ip: str
    """The address traffic reaches it on (canonical spelling)."""
    port: int
    """The target port, resolved."""


class ServiceBackends:
    """Backend candidates per (Service, port, protocol) over one snapshot."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._services: dict[str, Service] = {s.key: s for s in cluster.services}
        self._pods_by_key: dict[str, Pod] = {p.key: p for p in cluster.pods}
        self._cache: dict[tuple[str, int, Protocol], tuple[Backend, ...] | str] = {}

    def candidates(self, key: str, port: int, protocol: Protocol) -> tuple[Backend, ...] | str:
        """The backends of Service `key` (`namespace/name`) for port/protocol, in the
        order they are tried, or why there are none. Cached."""
        cache_key = (key, port, protocol)
        found = self._cache.get(cache_key)
        if found is None:
            found = self._cache[cache_key] = self._candidates(key, port, protocol)
        return found

    def _candidates(self, key: str, port: int, protocol: Protocol) -> tuple[Backend, ...] | str:
        svc = self._services.get(key)
        if svc is None:
            return f"Service {key} is not in the snapshot"
        sp = next((p for p in svc.ports if p.port == port and p.protocol is protocol), None)
        if sp is None:
            return f"Service {key} has no port {protocol.value}/{port}"
        slices = [
            s
            for s in self.cluster.endpoint_slices
            if s.namespace == svc.namespace and s.service_name == svc.name
        ]
        found = self._slice_backends(slices, sp) if slices else self._selector_backends(svc, sp)
        if not found:
            return f"Service {key} has no backend for {protocol.value}/{port}"
        return _order(found, self.cluster)

    def _slice_backends(self, slices: list[EndpointSlice], sp: ServicePort) -> list[Backend]:
        ready: list[Backend] = []
        other: list[Backend] = []
        for s in slices:
            number = next(
                (
                    p.port
                    for p in s.ports
                    if (p.name or None) == (sp.name or None) and p.protocol is sp.protocol
                ),
                None,
            )
            if number is None:
                continue
            for ep in s.endpoints:
                pod = self._pods_by_key.get(ep.pod) if ep.pod else None
                if pod is None or not ep.addresses:
                    continue
                (ready if ep.ready else other).append(
                    Backend(pod, _canonical(ep.addresses[0]), number)
                )
        return ready or other

    def _selector_backends(self, svc: Service, sp: ServicePort) -> list[Backend]:
        if not svc.selector:
            return []  # no selector: endpoints are managed by hand, and none were dumped
        found = []
        for pod in self.cluster.pods:
            if pod.namespace != svc.namespace or not pod.ips or pod.phase.terminal:
                continue
            if not _selects(svc.selector, pod.labels):
                continue
            if isinstance(sp.target_port, str):
                number = pod.named_port(sp.target_port, sp.protocol)
                if number is None:
                    continue  # the endpoints controller skips pods without the name
            else:
                number = sp.target_port
            found.append(Backend(pod, _canonical(pod.ips[0]), number))
        return found


def _selects(selector: Labels, labels: Labels) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _canonical(ip: str) -> str:
    try:
        return ipaddress.ip_address(ip).compressed
    except ValueError:
        return ip


def _order(found: list[Backend], cluster: Cluster) -> tuple[Backend, ...]:
    """The workload with the most backends first (ties by key), pods by name within."""
    by_workload: dict[str, list[Backend]] = defaultdict(list)
    for b in found:
        by_workload[cluster.workload_of(b.pod).key].append(b)
    ordered = sorted(by_workload.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return tuple(b for _, group in ordered for b in sorted(group, key=lambda b: b.pod.name))
