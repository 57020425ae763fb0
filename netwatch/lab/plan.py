"""A scenario made concrete: every namespace name, interface, address and pod of one run.

Planning is pure and deterministic — the same scenario and run id always give the same
names and addresses — so a second process (`netwatch lab traffic`, `netwatch lab down`)
recomputes exactly what `lab up` built from the scenario copy kept in the run
directory. `topology`, `services`, `snapshot` and `traffic` all work from a `LabPlan`;
nothing here touches the system.

Naming (the run id is 4 hex digits, so concurrent labs never collide):
`nw<id>-fabric`, `nw<id>-internet`, `nw<id>-n-<node>`, `nw<id>-p-<namespace>.<pod>`
(namespaces contain no dots, so the last form is unambiguous); host-side pod veths are
`veth` + 8 hex digits of a hash over run id and pod, as CNIs name them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from netwatch.core.model import Protocol
from netwatch.lab.scenario import (
    InternetSpec,
    PortSpec,
    Scenario,
    ScenarioError,
    ServicePortSpec,
    TrafficKind,
    TrafficStep,
    WorkloadKind,
    WorkloadSpec,
)

NETNS_PREFIX = "nw"
POD_GATEWAY = "169.254.1.1"
"""Every pod's default gateway: a link-local next hop answered by the host-side veth
(Calico's layout). There is no bridge, so all pod traffic — same-node included — is
routed by the node, where Service DNAT and conntrack see it."""
HOST_VETH_MAC = "ee:ee:ee:ee:ee:ee"
DNS_PORT = 53
_K8S_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_UID_NAMESPACE = uuid.UUID("6f0c1f9e-8f4a-4b55-9c0e-2d3b7f1a9e01")
_POD_REF = re.compile(r"^(?P<ns>[a-z0-9-]+)/(?P<name>[a-z0-9.-]+?)(\[(?P<index>\d+)\])?$")


@dataclass(frozen=True)
class LabNode:
    name: str
    netns: str
    ip: str
    """The node's InternalIP, on `uplink`."""
    pod_cidr: str
    fabric_port: str
    """The uplink's peer, in the fabric namespace's bridge."""
    labels: Mapping[str, str] = field(default_factory=dict)
    uplink: str = "eth0"


@dataclass(frozen=True)
class LabPod:
    namespace: str
    name: str
    uid: str
    workload: WorkloadSpec
    replica: int
    node: str
    netns: str
    """The pod's network namespace; a hostNetwork pod's is its node's."""
    ip: str
    interface: str | None
    """Host-side veth in the node namespace (what capture attaches to); None for
    hostNetwork pods."""
    mac: str | None
    labels: Mapping[str, str]
    owner_name: str | None
    """Controller that owns the pod: a ReplicaSet (Deployment pods), the StatefulSet or
    the DaemonSet; None for a bare pod."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def host_network(self) -> bool:
        return self.workload.host_network

    @property
    def ports(self) -> tuple[PortSpec, ...]:
        return self.workload.ports

    def named_port(self, name: str, protocol: Protocol) -> int | None:
        for p in self.workload.ports:
            if p.name == name and p.protocol is protocol:
                return p.port
        return None


@dataclass(frozen=True)
class Backend:
    pod: LabPod
    port: int
    """The target port resolved on this pod."""


@dataclass(frozen=True)
class LabServicePort:
    spec: ServicePortSpec
    backends: tuple[Backend, ...]


@dataclass(frozen=True)
class LabService:
    namespace: str
    name: str
    cluster_ip: str | None
    """None for a headless Service."""
    selector: Mapping[str, str]
    ports: tuple[LabServicePort, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class LabHost:
    """The lab's "internet": one host outside the cluster, routed through the fabric."""

    name: str
    netns: str
    ip: str
    router_ip: str
    ports: tuple[PortSpec, ...]
    masquerade: bool


@dataclass(frozen=True)
class Peer:
    """One end of a scripted connection, as the traffic driver and the manifest see it."""

    kind: str
    """`pod`, `node` or `internet`."""
    name: str
    """`namespace/pod`, the node name, or `internet`."""
    ip: str
    netns: str
    node: str | None = None
    interface: str | None = None
    """The pod's host-side veth, when it has one."""
    host_network: bool = False


@dataclass(frozen=True)
class ServiceRef:
    name: str
    """`namespace/name`."""
    ip: str
    port: int


@dataclass(frozen=True)
class ResolvedStep:
    step: TrafficStep
    protocol: Protocol
    client: Peer
    target_ip: str
    """Where the client connects: a pod, node or internet address, or a ClusterIP."""
    target_port: int
    service: ServiceRef | None
    servers: tuple[tuple[Peer, int], ...]
    """Who may answer, with the port they listen on: the pod/node/host addressed, or every
    backend of the Service port (kube-proxy picks one per connection)."""


@dataclass(frozen=True)
class LabPlan:
    run_id: str
    scenario: Scenario
    fabric_netns: str
    router_ip: str
    """The fabric's address on the node network: the nodes' default gateway."""
    nodes: tuple[LabNode, ...]
    pods: tuple[LabPod, ...]
    services: tuple[LabService, ...]
    internet: LabHost | None

    # ------------------------------------------------------------------ lookups

    def node(self, name: str) -> LabNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in this lab")

    def pod(self, ref: str) -> LabPod:
        """A pod by `ns/name`, or a workload's replica by `ns/workload` / `ns/workload[i]`."""
        found = self._find_pod(ref)
        if isinstance(found, str):
            raise KeyError(found)
        return found

    def service(self, key: str) -> LabService:
        for s in self.services:
            if s.key == key:
                return s
        raise KeyError(f"no service {key!r} in this lab")

    def netns_names(self) -> list[str]:
        """Every namespace of the run, in creation order (delete in reverse)."""
        names = [self.fabric_netns]
        if self.internet:
            names.append(self.internet.netns)
        names += [n.netns for n in self.nodes]
        names += [p.netns for p in self.pods if not p.host_network]
        return names

    def peer_of_pod(self, pod: LabPod) -> Peer:
        return Peer(
            kind="pod",
            name=pod.key,
            ip=pod.ip,
            netns=pod.netns,
            node=pod.node,
            interface=pod.interface,
            host_network=pod.host_network,
        )

    def peer_by_ip(self, ip: str) -> Peer | None:
        """Who holds `ip` in this lab (a pod first, then a node, then the internet host)."""
        for pod in self.pods:
            if pod.ip == ip and not pod.host_network:
                return self.peer_of_pod(pod)
        for node in self.nodes:
            if node.ip == ip:
                return Peer("node", node.name, node.ip, node.netns, node=node.name)
        if self.internet and self.internet.ip == ip:
            return Peer("internet", "internet", ip, self.internet.netns)
        return None

    def dns_target(self) -> str | None:
        """The reference a DNS step uses when it names no target."""
        dns_pods = [p for p in self.pods if p.workload.dns]
        for s in self.services:
            if s.cluster_ip and any(
                b.pod in dns_pods for sp in s.ports if sp.spec.port == DNS_PORT for b in sp.backends
            ):
                return f"service:{s.key}"
        return dns_pods[0].key if dns_pods else None

    # ------------------------------------------------------------ resolution

    def resolve(self, step: TrafficStep, *, where: str = "traffic") -> ResolvedStep:
        """Turn a step's references into addresses; ScenarioError says what is wrong."""
        problems: list[str] = []
        protocol = {
            TrafficKind.TCP: Protocol.TCP,
            TrafficKind.CHURN: Protocol.TCP,
            TrafficKind.UDP: Protocol.UDP,
            TrafficKind.DNS: Protocol.UDP,
            TrafficKind.ICMP: Protocol.ICMP,
        }[step.kind]
        client = self._source(step.source, problems)
        target_ref = step.target
        if step.kind is TrafficKind.DNS and target_ref is None:
            target_ref = self.dns_target()
            if target_ref is None:
                problems.append("to: no DNS workload (dns: true) in the scenario to query")
        port: int | str | None = DNS_PORT if step.kind is TrafficKind.DNS else step.port
        resolved = None
        if target_ref is not None:
            resolved = self._target(target_ref, port, protocol, step, problems)
        if problems or client is None or resolved is None:
            raise ScenarioError(
                self.scenario.source, [f"{where}[{step.name}].{p}" for p in problems]
            )
        target_ip, target_port, service, servers = resolved
        if protocol is Protocol.ICMP:
            target_port = 0
        if client.ip == target_ip and client.netns == servers[0][0].netns:
            raise ScenarioError(
                self.scenario.source,
                [f"{where}[{step.name}].to: the client and the server are the same host"],
            )
        return ResolvedStep(step, protocol, client, target_ip, target_port, service, servers)

    def check_traffic(self) -> None:
        """Resolve every step of the scenario's script; one ScenarioError lists all problems."""
        problems: list[str] = []
        for step in self.scenario.traffic:
            try:
                self.resolve(step)
            except ScenarioError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ScenarioError(self.scenario.source, problems)

    def _source(self, ref: str, problems: list[str]) -> Peer | None:
        if ref == "internet":
            if self.internet is None:
                problems.append("from: the scenario has no internet host (internet: false)")
                return None
            return Peer("internet", "internet", self.internet.ip, self.internet.netns)
        if ref.startswith("node:"):
            try:
                node = self.node(ref.removeprefix("node:"))
            except KeyError as exc:
                problems.append(f"from: {exc.args[0]}")
                return None
            return Peer("node", node.name, node.ip, node.netns, node=node.name)
        found = self._find_pod(ref)
        if isinstance(found, str):
            problems.append(f"from: {found}")
            return None
        return self.peer_of_pod(found)

    def _target(
        self,
        ref: str,
        port: int | str | None,
        protocol: Protocol,
        step: TrafficStep,
        problems: list[str],
    ) -> tuple[str, int, ServiceRef | None, tuple[tuple[Peer, int], ...]] | None:
        icmp = protocol is Protocol.ICMP
        if ref.startswith("service:"):
            if icmp:
                problems.append("to: ClusterIPs do not answer ICMP (kube-proxy DNATs ports)")
                return None
            return self._service_target(ref.removeprefix("service:"), port, protocol, problems)
        if ref == "internet":
            if self.internet is None:
                problems.append("to: the scenario has no internet host (internet: false)")
                return None
            peer = Peer("internet", "internet", self.internet.ip, self.internet.netns)
            number = 0 if icmp else _declared(self.internet.ports, port, protocol, problems)
            return (peer.ip, number, None, ((peer, number),)) if number is not None else None
        if ref.startswith("node:"):
            try:
                node = self.node(ref.removeprefix("node:"))
            except KeyError as exc:
                problems.append(f"to: {exc.args[0]}")
                return None
            peer = Peer("node", node.name, node.ip, node.netns, node=node.name)
            served = tuple(
                p
                for pod in self.pods
                if pod.host_network and pod.node == node.name
                for p in pod.ports
            )
            number = 0 if icmp else _declared(served, port, protocol, problems, what="node")
            return (peer.ip, number, None, ((peer, number),)) if number is not None else None
        found = self._find_pod(ref)
        if isinstance(found, str):
            problems.append(f"to: {found}")
            return None
        peer = self.peer_of_pod(found)
        number = 0 if icmp else _declared(found.ports, port, protocol, problems, what="pod")
        if number is None:
            return None
        if step.kind is TrafficKind.DNS and not found.workload.dns:
            problems.append(f"to: {found.key} is not a DNS workload (dns: true)")
            return None
        return (peer.ip, number, None, ((peer, number),))

    def _service_target(
        self, key: str, port: int | str | None, protocol: Protocol, problems: list[str]
    ) -> tuple[str, int, ServiceRef | None, tuple[tuple[Peer, int], ...]] | None:
        try:
            service = self.service(key)
        except KeyError as exc:
            problems.append(f"to: {exc.args[0]}")
            return None
        if service.cluster_ip is None:
            problems.append(f"to: service {key} is headless (no ClusterIP); address a pod")
            return None
        for sp in service.ports:
            if sp.spec.protocol is protocol and port in (sp.spec.port, sp.spec.name):
                if not sp.backends:
                    problems.append(f"port: service {key} port {port} has no endpoints")
                    return None
                ref = ServiceRef(key, service.cluster_ip, sp.spec.port)
                servers = tuple((self.peer_of_pod(b.pod), b.port) for b in sp.backends)
                return (service.cluster_ip, sp.spec.port, ref, servers)
        problems.append(f"port: service {key} has no {protocol.value} port {port!r}")
        return None

    def _find_pod(self, ref: str) -> LabPod | str:
        match = _POD_REF.match(ref)
        if not match:
            return (
                f"{ref!r} is not a reference (NS/POD, NS/WORKLOAD[i], service:NS/NAME, "
                "node:NAME or internet)"
            )
        ns, name, index = match["ns"], match["name"], match["index"]
        if index is None:
            for pod in self.pods:
                if pod.namespace == ns and pod.name == name:
                    return pod
        replicas = [p for p in self.pods if p.namespace == ns and p.workload.name == name]
        if not replicas:
            return f"no pod or workload {ns}/{name}"
        i = int(index or 0)
        if i >= len(replicas):
            return f"workload {ns}/{name} has {len(replicas)} pod(s); [{i}] does not exist"
        return replicas[i]


def _declared(
    ports: Sequence[PortSpec],
    port: int | str | None,
    protocol: Protocol,
    problems: list[str],
    *,
    what: str = "internet host",
) -> int | None:
    """The number a server of `ports` listens on for `port`, or None with a problem."""
    for p in ports:
        if p.protocol is protocol and port in (p.port, p.name):
            return p.port
    problems.append(f"port: the {what} declares no {protocol.value} port {port!r}, nothing listens")
    return None


# ---------------------------------------------------------------------- planning


def make_plan(scenario: Scenario, *, run_id: str) -> LabPlan:
    """Expand workloads into pods, allocate addresses, resolve Service endpoints."""
    if not re.fullmatch(r"[0-9a-f]{4}", run_id):
        raise ValueError(f"run id must be 4 hex digits, got {run_id!r}")
    prefix = f"{NETNS_PREFIX}{run_id}"
    problems: list[str] = []
    node_net = ipaddress.IPv4Network(scenario.node_cidr)
    nodes = tuple(
        LabNode(
            name=n.name,
            netns=f"{prefix}-n-{n.name}",
            ip=n.ip,
            pod_cidr=n.pod_cidr,
            fabric_port=f"{prefix}-n{i}",
            labels=n.labels,
        )
        for i, n in enumerate(scenario.nodes)
    )
    pods = _plan_pods(scenario, nodes, prefix=prefix, run_id=run_id, problems=problems)
    services = _plan_services(scenario, pods, problems)
    internet = _plan_internet(scenario.internet, prefix=prefix)
    if problems:
        raise ScenarioError(scenario.source, problems)
    return LabPlan(
        run_id=run_id,
        scenario=scenario,
        fabric_netns=fabric_netns_name(run_id),
        router_ip=str(node_net.network_address + 1),
        nodes=nodes,
        pods=pods,
        services=services,
        internet=internet,
    )


def fabric_netns_name(run_id: str) -> str:
    """The run's first namespace; creating it is what reserves the run id."""
    return f"{NETNS_PREFIX}{run_id}-fabric"


def _plan_internet(spec: InternetSpec | None, *, prefix: str) -> LabHost | None:
    if spec is None:
        return None
    return LabHost(
        "internet", f"{prefix}-internet", spec.ip, spec.router_ip, spec.ports, spec.masquerade
    )


def _plan_pods(
    scenario: Scenario,
    nodes: tuple[LabNode, ...],
    *,
    prefix: str,
    run_id: str,
    problems: list[str],
) -> tuple[LabPod, ...]:
    by_name = {n.name: n for n in nodes}
    next_host = {n.name: 2 for n in nodes}  # .1 stays free, as kubenet keeps it
    host_ports: dict[tuple[str, int, Protocol], str] = {}
    pods: list[LabPod] = []
    for w in scenario.workloads:
        pod_template_hash = template_hash(w)
        for i in range(w.replicas):
            node = by_name[w.nodes[i % len(w.nodes)]]
            name, owner, extra = pod_identity(w, i, node.name, pod_template_hash)
            if w.host_network:
                ip, netns, veth, mac = node.ip, node.netns, None, None
                for port in w.ports:
                    other = host_ports.setdefault((node.name, port.port, port.protocol), w.name)
                    if other != w.name:
                        problems.append(
                            f"workloads: {w.namespace}/{w.name} and {other} both bind "
                            f"{port.protocol.value} port {port.port} on {node.name} (hostNetwork)"
                        )
            else:
                net = ipaddress.IPv4Network(node.pod_cidr)
                address = net.network_address + next_host[node.name]
                next_host[node.name] += 1
                if address >= net.broadcast_address:
                    problems.append(f"nodes: podCIDR {net} of {node.name} is full")
                    continue
                ip = str(address)
                netns = f"{prefix}-p-{w.namespace}.{name}"
                digest = hashlib.sha256(f"{run_id}/{w.namespace}/{name}".encode()).hexdigest()
                veth = f"veth{digest[:8]}"
                mac = "0a:58:" + ":".join(f"{b:02x}" for b in address.packed)
            pods.append(
                LabPod(
                    namespace=w.namespace,
                    name=name,
                    uid=object_uid(scenario.name, "Pod", w.namespace, name),
                    workload=w,
                    replica=i,
                    node=node.name,
                    netns=netns,
                    ip=ip,
                    interface=veth,
                    mac=mac,
                    labels={**workload_labels(w), **extra},
                    owner_name=owner,
                )
            )
    return tuple(pods)


def workload_labels(w: WorkloadSpec) -> Mapping[str, str]:
    """The pod template's labels, which are also the controller's selector."""
    return w.labels or {"app": w.name}


def template_hash(w: WorkloadSpec) -> str:
    return _k8s_suffix(f"{w.namespace}/{w.name}", 10)


def pod_identity(
    w: WorkloadSpec, i: int, node: str, pod_template_hash: str
) -> tuple[str, str | None, dict[str, str]]:
    """Pod name, owning controller name and controller-added labels, as Kubernetes does."""
    match w.kind:
        case WorkloadKind.DEPLOYMENT:
            rs = f"{w.name}-{pod_template_hash}"
            suffix = _k8s_suffix(f"{w.namespace}/{rs}/{i}", 5)
            return f"{rs}-{suffix}", rs, {"pod-template-hash": pod_template_hash}
        case WorkloadKind.STATEFUL_SET:
            name = f"{w.name}-{i}"
            return (
                name,
                w.name,
                {
                    "statefulset.kubernetes.io/pod-name": name,
                    "controller-revision-hash": f"{w.name}-{pod_template_hash}",
                },
            )
        case WorkloadKind.DAEMON_SET:
            suffix = _k8s_suffix(f"{w.namespace}/{w.name}/{node}", 5)
            return f"{w.name}-{suffix}", w.name, {"controller-revision-hash": pod_template_hash}
        case WorkloadKind.POD:
            return w.name, None, {}


def _plan_services(
    scenario: Scenario, pods: tuple[LabPod, ...], problems: list[str]
) -> tuple[LabService, ...]:
    service_net = ipaddress.IPv4Network(scenario.service_cidr)
    taken = {s.cluster_ip for s in scenario.services if s.cluster_ip not in (None, "None")}
    for i, s in enumerate(scenario.services):
        if (
            s.cluster_ip not in (None, "None")
            and ipaddress.IPv4Address(s.cluster_ip) not in service_net
        ):
            problems.append(
                f"services[{i}].clusterIP: {s.cluster_ip} is not in serviceCIDR {service_net}"
            )
    candidates = (
        str(a) for a in service_net.hosts() if int(a) - int(service_net.network_address) >= 10
    )
    services: list[LabService] = []
    for s in scenario.services:
        cluster_ip: str | None
        if s.headless:
            cluster_ip = None
        elif s.cluster_ip is not None:
            cluster_ip = s.cluster_ip
        else:
            cluster_ip = next(a for a in candidates if a not in taken)
            taken.add(cluster_ip)
        selected = [
            p
            for p in pods
            if p.namespace == s.namespace
            and all(p.labels.get(k) == v for k, v in s.selector.items())
        ]
        ports = []
        for sp in s.ports:
            backends = []
            for pod in selected:
                if isinstance(sp.target_port, int):
                    number: int | None = sp.target_port
                else:
                    number = pod.named_port(sp.target_port, sp.protocol)
                if number is not None:
                    backends.append(Backend(pod, number))
            ports.append(LabServicePort(sp, tuple(backends)))
        services.append(LabService(s.namespace, s.name, cluster_ip, s.selector, tuple(ports)))
    return tuple(services)


def object_uid(scenario: str, kind: str, namespace: str, name: str) -> str:
    """A stable UID: the same scenario gives the same snapshot (golden files stay put)."""
    return str(uuid.uuid5(_UID_NAMESPACE, f"{scenario}/{kind}/{namespace}/{name}"))


def _k8s_suffix(seed: str, length: int) -> str:
    """A deterministic stand-in for Kubernetes' random name suffixes (same alphabet)."""
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(_K8S_ALPHABET[b % len(_K8S_ALPHABET)] for b in digest[:length])
