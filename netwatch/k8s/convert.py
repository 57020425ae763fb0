"""Kubernetes objects (API JSON / YAML dumps, camelCase) to netwatch's core values.

This package is the only place that knows what Kubernetes objects look like (STYLE §2):
`kubectl get -o yaml|json` output and what `ApiClient().sanitize_for_serialization`
produces for client models are both the camelCase API shape handled here. Everything
downstream sees the slim frozen values of `netwatch.core.model` and
`netwatch.core.policy`. Only the fields netwatch uses are read; unknown fields are
ignored so newer API versions load. Wrong shapes in fields that are read, and labels the
API server would have refused, raise `InvalidObject` listing every problem.

NetworkPolicy conversion, the part with real validation rules, lives in `netpol`;
shared field-reading helpers in `fields`. `snapshot` drives these over files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from netwatch.core.model import (
    ContainerPort,
    Endpoint,
    EndpointSlice,
    EndpointSlicePort,
    Namespace,
    NamespaceName,
    Node,
    NodeName,
    Pod,
    PodName,
    PodPhase,
    Service,
    ServicePort,
    Uid,
    WorkloadKind,
    WorkloadObject,
)
from netwatch.k8s.fields import InvalidObject, ObjectReader, describe_value, read_metadata
from netwatch.k8s.netpol import policy_from_dict

__all__ = [
    "WORKLOAD_KINDS",
    "InvalidObject",
    "endpoint_slice_from_dict",
    "namespace_from_dict",
    "node_from_dict",
    "pod_from_dict",
    "policy_from_dict",
    "service_from_dict",
    "workload_from_dict",
]

_PHASES = {p.value: p for p in PodPhase}
WORKLOAD_KINDS: Mapping[str, WorkloadKind] = {
    k.value: k for k in WorkloadKind if k is not WorkloadKind.POD
}
"""Controller kinds whose metadata resolves a pod's top owner (DESIGN §2)."""
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")


def pod_from_dict(obj: Mapping[str, Any], *, source: str) -> Pod:
    meta, obj = read_metadata(obj, kind="Pod", namespaced=True, source=source)
    r = meta.reader
    spec = r.mapping(obj.get("spec"), "spec")
    status = r.mapping(obj.get("status"), "status")
    ports: list[ContainerPort] = []
    # Init containers count: restartable (sidecar) init containers serve traffic.
    for group in ("containers", "initContainers"):
        for i, raw in enumerate(r.items(spec.get(group), f"spec.{group}")):
            container = r.mapping(raw, f"spec.{group}[{i}]")
            ports.extend(_container_ports(r, container.get("ports"), f"spec.{group}[{i}].ports"))
    phase_text = r.string(status.get("phase"), "status.phase")
    # A dump without status (a manifest) describes a pod meant to run.
    phase = PodPhase.RUNNING if phase_text is None else _PHASES.get(phase_text, PodPhase.UNKNOWN)
    node = r.string(spec.get("nodeName"), "spec.nodeName")
    pod = Pod(
        namespace=meta.namespace,
        name=PodName(meta.name),
        # Hand-written manifests have no uid; the key is unique within one snapshot.
        uid=meta.uid or Uid(f"{meta.namespace}/{meta.name}"),
        labels=meta.labels,
        node_name=NodeName(node) if node else None,
        host_network=r.boolean(spec.get("hostNetwork"), "spec.hostNetwork", default=False),
        ips=_pod_ips(r, status),
        host_ip=r.string(status.get("hostIP"), "status.hostIP") or None,
        phase=phase,
        container_ports=tuple(ports),
        owners=meta.owners,
        created_at=_timestamp(r.mapping(obj.get("metadata"), "metadata").get("creationTimestamp")),
    )
    r.check()
    return pod


def _timestamp(value: object) -> float | None:
    """RFC 3339 (`2026-11-27T12:00:00Z`) → epoch seconds; absent or unparsable → None.

    Lenient on purpose: a creation time only orders pods that claim one IP, so a bad one
    must not cost the whole pod. YAML loaders may already have produced a datetime.
    """
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.timestamp()
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return None


def _container_ports(r: ObjectReader, value: object, field: str) -> list[ContainerPort]:
    ports: list[ContainerPort] = []
    for j, raw in enumerate(r.items(value, field)):
        path = f"{field}[{j}]"
        entry = r.mapping(raw, path)
        if entry.get("containerPort") is None:
            r.error(f"{path}.containerPort", "required")
        number = r.integer(entry.get("containerPort"), f"{path}.containerPort")
        protocol = r.protocol(entry.get("protocol"), f"{path}.protocol")
        name = r.string(entry.get("name"), f"{path}.name")
        if number is None:
            continue
        ports.append(ContainerPort(number, protocol, name or None))
    return ports


def _pod_ips(r: ObjectReader, status: Mapping[str, Any]) -> tuple[str, ...]:
    """`status.podIP` first, then the rest of `status.podIPs`, without repeats."""
    ips: list[str] = []
    primary = r.string(status.get("podIP"), "status.podIP")
    if primary:
        ips.append(primary)
    for i, raw in enumerate(r.items(status.get("podIPs"), "status.podIPs")):
        entry = r.mapping(raw, f"status.podIPs[{i}]")
        ip = r.string(entry.get("ip"), f"status.podIPs[{i}].ip")
        if ip and ip not in ips:
            ips.append(ip)
    return tuple(ips)


def namespace_from_dict(obj: Mapping[str, Any], *, source: str) -> Namespace:
    meta, _ = read_metadata(obj, kind="Namespace", namespaced=False, source=source)
    meta.reader.check()
    return Namespace(NamespaceName(meta.name), meta.labels)


def service_from_dict(obj: Mapping[str, Any], *, source: str) -> Service:
    meta, obj = read_metadata(obj, kind="Service", namespaced=True, source=source)
    r = meta.reader
    spec = r.mapping(obj.get("spec"), "spec")
    ips = [r.string(spec.get("clusterIP"), "spec.clusterIP")]
    ips.extend(
        r.string(v, f"spec.clusterIPs[{i}]")
        for i, v in enumerate(r.items(spec.get("clusterIPs"), "spec.clusterIPs"))
    )
    # "None" marks a headless Service: it has no virtual IP to attribute traffic to.
    cluster_ips = _unique(ip for ip in ips if ip and ip != "None")
    ports: list[ServicePort] = []
    for i, raw in enumerate(r.items(spec.get("ports"), "spec.ports")):
        path = f"spec.ports[{i}]"
        entry = r.mapping(raw, path)
        if entry.get("port") is None:
            r.error(f"{path}.port", "required")
        port = r.integer(entry.get("port"), f"{path}.port")
        target = entry.get("targetPort")
        if target is not None and (isinstance(target, bool) or not isinstance(target, int | str)):
            r.error(
                f"{path}.targetPort", f"expected a number or name, got {describe_value(target)}"
            )
            target = None
        protocol = r.protocol(entry.get("protocol"), f"{path}.protocol")
        name = r.string(entry.get("name"), f"{path}.name")
        if port is None:
            continue
        # The API server defaults targetPort to port.
        ports.append(ServicePort(port, port if target is None else target, protocol, name or None))
    selector = r.labels(spec.get("selector"), "spec.selector")
    service_type = r.string(spec.get("type"), "spec.type") or "ClusterIP"
    r.check()
    return Service(
        namespace=meta.namespace,
        name=meta.name,
        cluster_ips=cluster_ips,
        # An empty selector is stored as none: such a Service has no managed endpoints.
        selector=selector or None,
        ports=tuple(ports),
        type=service_type,
    )


def endpoint_slice_from_dict(obj: Mapping[str, Any], *, source: str) -> EndpointSlice:
    meta, obj = read_metadata(obj, kind="EndpointSlice", namespaced=True, source=source)
    r = meta.reader
    endpoints: list[Endpoint] = []
    for i, raw in enumerate(r.items(obj.get("endpoints"), "endpoints")):
        path = f"endpoints[{i}]"
        entry = r.mapping(raw, path)
        addresses = _strings(r, entry.get("addresses"), f"{path}.addresses")
        ref = r.mapping(entry.get("targetRef"), f"{path}.targetRef")
        pod: str | None = None
        if ref.get("kind") == "Pod":
            ref_name = r.string(ref.get("name"), f"{path}.targetRef.name")
            ref_ns = r.string(ref.get("namespace"), f"{path}.targetRef.namespace")
            pod = f"{ref_ns or meta.namespace}/{ref_name}" if ref_name else None
        conditions = r.mapping(entry.get("conditions"), f"{path}.conditions")
        # Upstream: a nil `ready` is to be read as ready.
        ready = r.boolean(conditions.get("ready"), f"{path}.conditions.ready", default=True)
        endpoints.append(Endpoint(addresses, pod, ready))
    ports: list[EndpointSlicePort] = []
    for i, raw in enumerate(r.items(obj.get("ports"), "ports")):
        path = f"ports[{i}]"
        entry = r.mapping(raw, path)
        port = r.integer(entry.get("port"), f"{path}.port")
        protocol = r.protocol(entry.get("protocol"), f"{path}.protocol")
        name = r.string(entry.get("name"), f"{path}.name")
        # A null port means "all ports"; the core type cannot say that, so it is left out.
        if port is not None:
            ports.append(EndpointSlicePort(port, protocol, name or None))
    r.check()
    return EndpointSlice(
        namespace=meta.namespace,
        name=meta.name,
        service_name=meta.labels.get(SERVICE_NAME_LABEL),
        endpoints=tuple(endpoints),
        ports=tuple(ports),
    )


def node_from_dict(obj: Mapping[str, Any], *, source: str) -> Node:
    meta, obj = read_metadata(obj, kind="Node", namespaced=False, source=source)
    r = meta.reader
    spec = r.mapping(obj.get("spec"), "spec")
    status = r.mapping(obj.get("status"), "status")
    addresses: list[str | None] = []
    for i, raw in enumerate(r.items(status.get("addresses"), "status.addresses")):
        entry = r.mapping(raw, f"status.addresses[{i}]")
        # Hostname and DNS entries are names, not addresses traffic comes from.
        if entry.get("type") in _NODE_ADDRESS_TYPES:
            addresses.append(r.string(entry.get("address"), f"status.addresses[{i}].address"))
    cidrs = [r.string(spec.get("podCIDR"), "spec.podCIDR")]
    cidrs.extend(_strings(r, spec.get("podCIDRs"), "spec.podCIDRs"))
    r.check()
    return Node(
        name=NodeName(meta.name),
        addresses=_unique(addresses),
        pod_cidrs=_unique(cidrs),
        labels=meta.labels,
    )


def workload_from_dict(obj: Mapping[str, Any], *, source: str) -> WorkloadObject:
    """A controller's metadata and `spec.selector.matchLabels` (kind taken from `kind`)."""
    raw_kind = obj.get("kind") if isinstance(obj, Mapping) else None
    kind = WORKLOAD_KINDS.get(raw_kind) if isinstance(raw_kind, str) else None
    meta, obj = read_metadata(
        obj,
        kind=raw_kind if isinstance(raw_kind, str) else "Workload",
        namespaced=True,
        source=source,
    )
    r = meta.reader
    if kind is None:
        r.error(
            "kind",
            f"unsupported workload kind {describe_value(raw_kind)} "
            f"(expected one of {', '.join(WORKLOAD_KINDS)})",
        )
    spec = r.mapping(obj.get("spec"), "spec")
    selector = r.mapping(spec.get("selector"), "spec.selector")
    match_labels = selector.get("matchLabels")
    labels = r.labels(match_labels, "spec.selector.matchLabels")
    r.check()
    assert kind is not None  # check() raised otherwise
    return WorkloadObject(
        kind=kind,
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        owners=meta.owners,
        selector_labels=None if match_labels is None else labels,
    )


def _strings(r: ObjectReader, value: object, field: str) -> tuple[str, ...]:
    out: list[str] = []
    for i, raw in enumerate(r.items(value, field)):
        text = r.string(raw, f"{field}[{i}]")
        if text:
            out.append(text)
    return tuple(out)


def _unique(values: Iterable[str | None]) -> tuple[str, ...]:
    """Non-empty values in first-seen order (primary address/CIDR stays first)."""
    return tuple(dict.fromkeys(v for v in values if v))
