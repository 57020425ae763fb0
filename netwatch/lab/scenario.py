"""Lab scenario files: parse and validate the YAML that describes a miniature cluster.

A scenario names nodes, namespaces, workloads (expanded into pods), Services,
NetworkPolicies (copied verbatim into the snapshot, never enforced by the lab) and a
traffic script. The format is documented in `fixtures/lab/README.md`. This module only
checks shapes and values; references between objects (a traffic step naming a workload,
a named port) are checked by `plan`, which knows the expanded pods. Every problem is
reported with the file and the dotted field path, all at once, as `ScenarioError`.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from netwatch.core.model import Protocol
from netwatch.lab.fields import DNS_LABEL, DNS_SUBDOMAIN, FieldReader, describe
from netwatch.lab.wire import HEADER_SIZE

MAX_DATAGRAM = 1472
"""Largest UDP payload that fits one 1500-byte IPv4 packet (no fragmentation)."""


class ScenarioError(ValueError):
    """A scenario that cannot be used; the message lists every problem with its field."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))


class WorkloadKind(enum.Enum):
    DEPLOYMENT = "Deployment"
    STATEFUL_SET = "StatefulSet"
    DAEMON_SET = "DaemonSet"
    POD = "Pod"


class TrafficKind(enum.Enum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    DNS = "dns"
    CHURN = "churn"


@dataclass(frozen=True)
class PortSpec:
    port: int
    protocol: Protocol = Protocol.TCP
    name: str | None = None


@dataclass(frozen=True)
class NodeSpec:
    name: str
    ip: str
    pod_cidr: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InternetSpec:
    ip: str
    router_ip: str
    ports: tuple[PortSpec, ...]
    masquerade: bool
    """SNAT pod egress leaving the cluster to the node's IP (as ip-masq-agent does)."""


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    namespace: str
    kind: WorkloadKind
    replicas: int
    nodes: tuple[str, ...]
    """Placement, round-robin over these (DaemonSet: one pod on each)."""
    labels: Mapping[str, str]
    ports: tuple[PortSpec, ...]
    host_network: bool = False
    dns: bool = False
    """This workload is the cluster DNS server: its port-53 servers answer DNS."""


@dataclass(frozen=True)
class ServicePortSpec:
    port: int
    target_port: int | str
    protocol: Protocol = Protocol.TCP
    name: str | None = None


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    namespace: str
    cluster_ip: str | None
    """An address, None to allocate one, or "None" for a headless Service."""
    selector: Mapping[str, str]
    ports: tuple[ServicePortSpec, ...]

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"


@dataclass(frozen=True)
class TrafficStep:
    """One line of the traffic script; which fields matter depends on `kind`.

    `source`/`target` are references: `NS/WORKLOAD`, `NS/WORKLOAD[i]` or `NS/POD` for a
    pod, `service:NS/NAME` for a ClusterIP, `node:NAME` for a node's own address,
    `internet` for the lab's external host.
    """

    name: str
    kind: TrafficKind
    source: str
    target: str | None
    port: int | str | None = None
    request: int = 100
    """Payload bytes per request (TCP round, UDP datagram, ICMP echo)."""
    response: int = 100
    """Payload bytes per response; 0 means no UDP reply at all."""
    rounds: int = 1
    """TCP: request/response rounds per connection; UDP/ICMP: datagrams per flow."""
    connections: int = 1
    """TCP: parallel connections; UDP: flows, each from its own source port."""
    interval: float = 0.0
    """Seconds between rounds (long-lived connections)."""
    hold: float = 0.0
    """TCP: seconds to keep the connection open, idle, after the last round."""
    rate: float = 0.0
    """churn: new connections per second."""
    duration: float = 0.0
    """churn: seconds."""
    query: str | None = None
    """dns: the name to resolve (type A)."""
    client_port: int | None = None
    """UDP: fixed source port (one flow only)."""
    background: bool = False
    """Start it and go on with the next step; the script waits for it at the end."""


@dataclass(frozen=True)
class Scenario:
    name: str
    source: str
    """The file it was read from (for messages)."""
    nodes: tuple[NodeSpec, ...]
    node_cidr: str
    cluster_cidr: str
    service_cidr: str
    internet: InternetSpec | None
    namespaces: Mapping[str, Mapping[str, str]]
    workloads: tuple[WorkloadSpec, ...]
    services: tuple[ServiceSpec, ...]
    policies: tuple[Mapping[str, Any], ...]
    traffic: tuple[TrafficStep, ...]
    offloads: bool = True
    """False turns off TSO/GSO/GRO on pod veths, so packets on the veth are wire-sized."""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The document as read, kept so a run can store the exact scenario it was built from."""


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; raises `ScenarioError` naming every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(source, [f"cannot read: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(source, [f"YAML syntax error: {where}{problem}"]) from None
    return parse_scenario(data, source=source)


def parse_scenario(data: object, *, source: str) -> Scenario:
    """Validate an already-parsed document (a mapping) into a `Scenario`."""
    r = FieldReader()
    scenario = _parse(r, data, source)
    if r.problems or scenario is None:
        raise ScenarioError(source, r.problems)
    return scenario


_TOP_KEYS = (
    "name",
    "nodes",
    "nodeCIDR",
    "clusterCIDR",
    "serviceCIDR",
    "internet",
    "namespaces",
    "workloads",
    "services",
    "policies",
    "traffic",
    "offloads",
)


def _parse(r: FieldReader, data: object, source: str) -> Scenario | None:
    if not isinstance(data, Mapping):
        r.problem(None, f"expected a mapping at the top of the file, got {describe(data)}")
        return None
    r.unknown_keys(data, _TOP_KEYS)
    name = r.string(data, "name", required=True, pattern=DNS_LABEL, what="scenario name")
    node_cidr = r.network(data, "nodeCIDR", default="192.168.56.0/24")
    cluster_cidr = r.network(data, "clusterCIDR", default="10.244.0.0/16")
    service_cidr = r.network(data, "serviceCIDR", default="10.96.0.0/16")
    nodes = _nodes(r, data, node_cidr=node_cidr, cluster_cidr=cluster_cidr)
    node_names = tuple(n.name for n in nodes)
    internet = _internet(r, data)
    namespaces: dict[str, Mapping[str, str]] = {}
    for i, raw in enumerate(r.items(data, "namespaces")):
        with r.at(f"namespaces[{i}]"):
            if not isinstance(raw, Mapping):
                r.problem(None, f"expected a mapping, got {describe(raw)}")
                continue
            r.unknown_keys(raw, ("name", "labels"))
            ns = r.string(raw, "name", required=True, pattern=DNS_LABEL, what="namespace name")
            labels = r.labels(raw, "labels")
            if ns is not None:
                if ns in namespaces:
                    r.problem("name", f"namespace {ns!r} is declared twice")
                namespaces[ns] = labels
    workloads = _workloads(r, data, node_names)
    for w in workloads:
        namespaces.setdefault(w.namespace, {})
    services = _services(r, data)
    for s in services:
        namespaces.setdefault(s.namespace, {})
    policies: list[Mapping[str, Any]] = []
    for i, raw in enumerate(r.items(data, "policies")):
        with r.at(f"policies[{i}]"):
            if not isinstance(raw, Mapping) or raw.get("kind") != "NetworkPolicy":
                r.problem(None, "expected a NetworkPolicy object (kind: NetworkPolicy)")
                continue
            meta = r.mapping(raw, "metadata", required=True)
            with r.at("metadata"):
                r.string(meta, "name", required=True)
            policies.append(raw)
    if internet is not None:
        for key, cidr in (
            ("nodeCIDR", node_cidr),
            ("clusterCIDR", cluster_cidr),
            ("serviceCIDR", service_cidr),
        ):
            if ipaddress.IPv4Address(internet.ip) in ipaddress.IPv4Network(cidr):
                r.problem("internet.ip", f"{internet.ip} is inside {key} {cidr}")
    traffic = _traffic(r, data)
    offloads = r.boolean(data, "offloads", default=True)
    if name is None or not nodes:
        if not r.problems:
            r.problem("nodes", "at least one node is required")
        return None
    return Scenario(
        name=name,
        source=source,
        nodes=nodes,
        node_cidr=node_cidr,
        cluster_cidr=cluster_cidr,
        service_cidr=service_cidr,
        internet=internet,
        namespaces=dict(sorted(namespaces.items())),
        workloads=workloads,
        services=services,
        policies=tuple(policies),
        traffic=traffic,
        offloads=offloads,
        raw=data,
    )


def _nodes(
    r: FieldReader, data: Mapping[str, Any], *, node_cidr: str, cluster_cidr: str
) -> tuple[NodeSpec, ...]:
    node_net = ipaddress.IPv4Network(node_cidr)
    pods_net = ipaddress.IPv4Network(cluster_cidr)
    nodes: list[NodeSpec] = []
    raw_nodes = r.items(data, "nodes", required=True)
    if len(raw_nodes) > 50:
        r.problem("nodes", "at most 50 nodes")
        raw_nodes = raw_nodes[:50]
    for i, raw in enumerate(raw_nodes):
        with r.at(f"nodes[{i}]"):
            if not isinstance(raw, Mapping):
                r.problem(None, f"expected a mapping, got {describe(raw)}")
                continue
            r.unknown_keys(raw, ("name", "ip", "podCIDR", "labels"))
            name = r.string(raw, "name", required=True, pattern=DNS_LABEL, what="node name")
            default_ip = str(node_net.network_address + 11 + i)
            ip = r.address(raw, "ip", default=default_ip)
            if ipaddress.IPv4Address(ip) not in node_net:
                r.problem("ip", f"{ip} is not in nodeCIDR {node_cidr}")
            elif ipaddress.IPv4Address(ip) == node_net.network_address + 1:
                r.problem("ip", f"{ip} is the fabric router's address")
            default_cidr = _default_pod_cidr(pods_net, i)
            pod_cidr = r.network(raw, "podCIDR", default=default_cidr)
            if not ipaddress.IPv4Network(pod_cidr).subnet_of(pods_net):
                r.problem("podCIDR", f"{pod_cidr} is not inside clusterCIDR {cluster_cidr}")
            labels = r.labels(raw, "labels")
            if name is not None:
                nodes.append(NodeSpec(name, ip, pod_cidr, labels))
    r.unique("nodes", [n.name for n in nodes], "node name")
    r.unique("nodes", [n.ip for n in nodes], "node ip")
    cidrs = [ipaddress.IPv4Network(n.pod_cidr) for n in nodes]
    for a in range(len(cidrs)):
        for b in range(a + 1, len(cidrs)):
            if cidrs[a].overlaps(cidrs[b]):
                r.problem(f"nodes[{b}].podCIDR", f"overlaps the podCIDR of {nodes[a].name}")
    return tuple(nodes)


def _default_pod_cidr(pods_net: ipaddress.IPv4Network, index: int) -> str:
    if pods_net.prefixlen > 24:
        return str(pods_net)
    subnets = pods_net.subnets(new_prefix=24)
    for _ in range(index + 2):  # node i gets x.y.(i+1).0/24, as kubeadm numbers them
        subnet = next(subnets, pods_net)
    return str(subnet)


_DEFAULT_INTERNET_PORTS = (
    PortSpec(80, Protocol.TCP, "http"),
    PortSpec(443, Protocol.TCP, "https"),
    PortSpec(40001, Protocol.UDP, "udp-high"),
)


def _internet(r: FieldReader, data: Mapping[str, Any]) -> InternetSpec | None:
    raw = data.get("internet", {})
    if raw is False:
        return None
    with r.at("internet"):
        if not isinstance(raw, Mapping):
            r.problem(None, f"expected a mapping or false, got {describe(raw)}")
            return None
        r.unknown_keys(raw, ("ip", "routerIP", "ports", "masquerade"))
        ip = r.address(raw, "ip", default="203.0.113.10")
        router = r.address(raw, "routerIP", default="203.0.113.1")
        if ip == router:
            r.problem("routerIP", "must differ from ip")
        elif ipaddress.IPv4Network(f"{ip}/24", strict=False) != ipaddress.IPv4Network(
            f"{router}/24", strict=False
        ):
            r.problem("routerIP", f"must be in the same /24 as ip {ip}")
        ports = _ports(r, raw, "ports", port_key="port") if "ports" in raw else None
        masquerade = r.boolean(raw, "masquerade", default=True)
    return InternetSpec(ip, router, _DEFAULT_INTERNET_PORTS if ports is None else ports, masquerade)


def _ports(
    r: FieldReader, obj: Mapping[str, Any], key: str, *, port_key: str
) -> tuple[PortSpec, ...]:
    ports: list[PortSpec] = []
    for i, raw in enumerate(r.items(obj, key)):
        with r.at(f"{key}[{i}]"):
            if not isinstance(raw, Mapping):
                r.problem(None, f"expected a mapping, got {describe(raw)}")
                continue
            r.unknown_keys(raw, (port_key, "protocol", "name"))
            if raw.get(port_key) is None:
                r.problem(port_key, "required")
                continue
            number = r.integer(raw, port_key, default=0, low=1, high=65535)
            protocol = r.protocol(raw, "protocol")
            name = r.string(raw, "name", pattern=DNS_LABEL, what="port name")
            if number:
                ports.append(PortSpec(number, protocol, name))
    with r.at(key):
        r.unique(None, [(p.port, p.protocol.value) for p in ports], "port/protocol")
        r.unique(None, [(p.name, p.protocol.value) for p in ports if p.name], "port name")
    return tuple(ports)


_WORKLOAD_KEYS = (
    "name",
    "namespace",
    "kind",
    "replicas",
    "nodes",
    "labels",
    "ports",
    "hostNetwork",
    "dns",
)


def _workloads(
    r: FieldReader, data: Mapping[str, Any], node_names: tuple[str, ...]
) -> tuple[WorkloadSpec, ...]:
    workloads: list[WorkloadSpec] = []
    for i, raw in enumerate(r.items(data, "workloads")):
        with r.at(f"workloads[{i}]"):
            if not isinstance(raw, Mapping):
                r.problem(None, f"expected a mapping, got {describe(raw)}")
                continue
            r.unknown_keys(raw, _WORKLOAD_KEYS)
            name = r.string(raw, "name", required=True, pattern=DNS_LABEL, what="workload name")
            namespace = r.string(
                raw, "namespace", default="default", pattern=DNS_LABEL, what="namespace name"
            )
            kind_text = r.string(raw, "kind", default="Deployment")
            try:
                kind = WorkloadKind(kind_text)
            except ValueError:
                r.problem(
                    "kind",
                    f"{kind_text!r} is not one of {', '.join(k.value for k in WorkloadKind)}",
                )
                kind = WorkloadKind.DEPLOYMENT
            replicas = r.integer(raw, "replicas", default=1, low=0, high=50)
            if kind in (WorkloadKind.DAEMON_SET, WorkloadKind.POD) and "replicas" in raw:
                r.problem("replicas", f"a {kind.value} has no replicas")
            placement: list[str] = []
            for j, node in enumerate(r.items(raw, "nodes")):
                if node not in node_names:
                    r.problem(f"nodes[{j}]", f"unknown node {describe(node)}")
                else:
                    placement.append(node)
            labels = r.labels(raw, "labels")
            ports = _ports(r, raw, "ports", port_key="containerPort")
            host_network = r.boolean(raw, "hostNetwork", default=False)
            dns = r.boolean(raw, "dns", default=False)
            if dns and not any(p.port == 53 for p in ports):
                r.problem("dns", "a DNS workload needs a containerPort 53 (UDP and/or TCP)")
            if name is None or namespace is None:
                continue
            if kind is WorkloadKind.DAEMON_SET:
                replicas = len(placement or node_names)
            elif kind is WorkloadKind.POD:
                replicas = 1
            workloads.append(
                WorkloadSpec(
                    name=name,
                    namespace=namespace,
                    kind=kind,
                    replicas=replicas,
                    nodes=tuple(placement) or node_names,
                    labels=labels,
                    ports=ports,
                    host_network=host_network,
                    dns=dns,
                )
            )
    r.unique("workloads", [f"{w.namespace}/{w.name}" for w in workloads], "workload")
    return tuple(workloads)


def _services(r: FieldReader, data: Mapping[str, Any]) -> tuple[ServiceSpec, ...]:
    services: list[ServiceSpec] = []
    for i, raw in enumerate(r.items(data, "services")):
        with r.at(f"services[{i}]"):
            if not isinstance(raw, Mapping):
                r.problem(None, f"expected a mapping, got {describe(raw)}")
                continue
            r.unknown_keys(raw, ("name", "namespace", "clusterIP", "selector", "ports"))
            name = r.string(raw, "name", required=True, pattern=DNS_LABEL, what="service name")
            namespace = r.string(
                raw, "namespace", default="default", pattern=DNS_LABEL, what="namespace name"
            )
            cluster_ip = r.string(raw, "clusterIP")
            if cluster_ip not in (None, "None"):
                cluster_ip = r.address(raw, "clusterIP", default="None")
            selector = r.labels(raw, "selector")
            if not selector:
                r.problem("selector", "required: the lab builds endpoints from selectors")
            ports: list[ServicePortSpec] = []
            for j, rp in enumerate(r.items(raw, "ports", required=True)):
                with r.at(f"ports[{j}]"):
                    if not isinstance(rp, Mapping):
                        r.problem(None, f"expected a mapping, got {describe(rp)}")
                        continue
                    r.unknown_keys(rp, ("name", "port", "targetPort", "protocol"))
                    if rp.get("port") is None:
                        r.problem("port", "required")
                        continue
                    port = r.integer(rp, "port", default=0, low=1, high=65535)
                    target = r.port_number_or_name(rp, "targetPort") or port
                    protocol = r.protocol(rp, "protocol")
                    pname = r.string(rp, "name", pattern=DNS_LABEL, what="port name")
                    if port:
                        ports.append(ServicePortSpec(port, target, protocol, pname))
            if len(ports) > 1 and any(p.name is None for p in ports):
                r.problem("ports", "every port needs a name when there are several")
            if name is not None and namespace is not None:
                services.append(ServiceSpec(name, namespace, cluster_ip, selector, tuple(ports)))
    r.unique("services", [f"{s.namespace}/{s.name}" for s in services], "service")
    return tuple(services)


_STEP_KEYS = {
    TrafficKind.TCP: (
        "port",
        "request",
        "response",
        "rounds",
        "connections",
        "interval",
        "hold",
    ),
    TrafficKind.UDP: ("port", "request", "response", "rounds", "connections", "interval"),
    TrafficKind.ICMP: ("request", "rounds", "interval"),
    TrafficKind.DNS: ("query", "rounds", "interval"),
    TrafficKind.CHURN: ("port", "request", "response", "rate", "duration"),
}
_COMMON_STEP_KEYS = ("name", "kind", "from", "to", "background", "clientPort")


def _traffic(r: FieldReader, data: Mapping[str, Any]) -> tuple[TrafficStep, ...]:
    steps: list[TrafficStep] = []
    for i, raw in enumerate(r.items(data, "traffic")):
        with r.at(f"traffic[{i}]"):
            step = parse_step(r, raw, default_name=f"step-{i}")
            if step is not None:
                steps.append(step)
    r.unique("traffic", [s.name for s in steps], "step name")
    return tuple(steps)


def parse_steps(data: object, *, source: str) -> tuple[TrafficStep, ...]:
    """Validate a list of traffic steps given on their own (the `traffic:` list)."""
    r = FieldReader()
    steps = _traffic(r, {"traffic": data})
    if r.problems:
        raise ScenarioError(source, r.problems)
    return steps


def parse_step(r: FieldReader, raw: object, *, default_name: str) -> TrafficStep | None:
    if not isinstance(raw, Mapping):
        r.problem(None, f"expected a mapping, got {describe(raw)}")
        return None
    kind_text = r.string(raw, "kind", required=True)
    try:
        kind = TrafficKind(kind_text)
    except ValueError:
        if kind_text is not None:
            choices = ", ".join(k.value for k in TrafficKind)
            r.problem("kind", f"{kind_text!r} is not one of {choices}")
        return None
    r.unknown_keys(raw, (*_COMMON_STEP_KEYS, *_STEP_KEYS[kind]))
    name = r.string(raw, "name", default=default_name, pattern=DNS_SUBDOMAIN, what="step name")
    source = r.string(raw, "from", required=True)
    target = r.string(raw, "to", required=kind is not TrafficKind.DNS)
    port = r.port_number_or_name(raw, "port", required=kind in (TrafficKind.TCP, TrafficKind.UDP))
    if kind is TrafficKind.CHURN and port is None:
        r.problem("port", "required")
    big = 1 << 30
    low = 0 if kind is TrafficKind.ICMP else HEADER_SIZE
    high = MAX_DATAGRAM if kind in (TrafficKind.UDP, TrafficKind.ICMP) else big
    request = r.integer(
        raw, "request", default=max(low, 56 if low == 0 else 100), low=low, high=high
    )
    response = r.integer(raw, "response", default=100, low=0, high=high)
    rounds = r.integer(raw, "rounds", default=1, low=1, high=100_000)
    connections = r.integer(raw, "connections", default=1, low=1, high=10_000)
    interval = r.number(raw, "interval", default=0.0, high=3600)
    hold = r.number(raw, "hold", default=0.0, high=3600)
    rate = r.number(raw, "rate", default=0.0, high=100_000)
    duration = r.number(raw, "duration", default=0.0, high=3600)
    if kind is TrafficKind.CHURN:
        if rate <= 0:
            r.problem("rate", "required: new connections per second (> 0)")
        if duration <= 0:
            r.problem("duration", "required: seconds (> 0)")
    query = r.string(raw, "query", required=kind is TrafficKind.DNS, pattern=DNS_SUBDOMAIN)
    client_port = None
    if raw.get("clientPort") is not None:
        if kind is not TrafficKind.UDP:
            r.problem("clientPort", "only UDP steps take a fixed source port")
        client_port = r.integer(raw, "clientPort", default=0, low=1, high=65535) or None
        if connections > 1:
            r.problem("clientPort", "a fixed source port allows one flow (connections: 1)")
    background = r.boolean(raw, "background", default=False)
    if name is None or source is None or (target is None and kind is not TrafficKind.DNS):
        return None
    return TrafficStep(
        name=name,
        kind=kind,
        source=source,
        target=target,
        port=port,
        request=request,
        response=response,
        rounds=rounds,
        connections=connections,
        interval=interval,
        hold=hold,
        rate=rate,
        duration=duration,
        query=query,
        client_port=client_port,
        background=background,
    )
