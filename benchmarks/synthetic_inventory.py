"""The inventory half of the synthetic cluster: nodes, namespaces, workloads and pods.

Why it looks the way it does: a benchmark is only worth its input. Objects are shaped
like `kubectl get -A -o yaml` output (probes, projected token volumes, conditions,
ReplicaSet templates, hostNetwork DaemonSet pods, Pending and Succeeded pods), because
loading that noise is part of what a user waits for. Everything draws from one seeded
`random.Random`, so the same seed gives the same objects.

Neighbours: `synthetic_workloads.py` builds Deployments, ReplicaSets and pods with the
primitives here; `synthetic_policies.py` reads the `AppInstance` list they produce;
`synthetic_cluster.py` assembles everything and writes the file.
"""

from __future__ import annotations

import ipaddress
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

Obj = dict[str, Any]
"""A Kubernetes object as `kubectl get -o yaml` prints it (plain YAML-able data)."""

_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
"""apimachinery's `rand.String` / `SafeEncodeString` alphabet (pod suffixes, hashes)."""
_EPOCH = datetime(2025, 11, 20, 8, 0, 0, tzinfo=UTC)
"""Fixed creation time base: timestamps must not depend on when the generator runs."""
POD_NET = ipaddress.IPv4Network("10.244.0.0/16")
NODE_NET = ipaddress.IPv4Network("10.0.0.0/16")
SERVICE_NET = ipaddress.IPv4Network("10.96.0.0/16")
TEAMS = (
    "shop", "payments", "search", "identity", "analytics", "media", "ledger", "notify",
    "catalog", "checkout", "fraud", "maps", "billing", "support", "growth", "voice",
)  # fmt: skip
ENVS = ("prod", "staging", "dev")
SYSTEM_NAMESPACES = ("kube-system", "monitoring", "ingress-nginx")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True, slots=True)
class PortDef:
    """A named container port; names are what named-port policy rules resolve (§3.5)."""

    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class AppDef:
    """A workload archetype: its tier drives which policies select it and its peers."""

    name: str
    tier: str
    ports: tuple[PortDef, ...]
    image: str


_HTTP80, _HTTP8080 = PortDef("http", 80), PortDef("http", 8080)
_METRICS = PortDef("metrics", 9090)
_GRPC = PortDef("grpc", 9000)
# `http` is 80 on some apps and 8080 on others, and `grpc` (9000/TCP) shares its number
# with `sig` (9000/SCTP): named-port rules must resolve per destination pod, protocol
# included (§3.5), which is exactly what a careless engine gets wrong.
CATALOG: tuple[AppDef, ...] = (
    AppDef("web", "frontend", (_HTTP80, _METRICS), "nginx:1.27.2"),
    AppDef("frontend", "frontend", (_HTTP8080, _METRICS), "node:22-alpine"),
    AppDef("api", "backend", (_HTTP8080, _GRPC, _METRICS), "eclipse-temurin:21-jre"),
    AppDef("cart", "backend", (_HTTP8080, _GRPC, _METRICS), "golang:1.23"),
    AppDef("checkout", "backend", (_HTTP8080, _METRICS), "python:3.12-slim"),
    AppDef("auth", "backend", (PortDef("https", 8443), _METRICS), "golang:1.23"),
    AppDef("search", "backend", (_HTTP8080, _GRPC), "opensearch:2.17"),
    AppDef("gateway", "edge", (_HTTP80, PortDef("https", 443), _METRICS), "envoy:v1.31"),
    AppDef("signaling", "backend", (PortDef("sig", 9000, "SCTP"), _HTTP8080), "kamailio:5.8"),
    AppDef("worker", "worker", (_METRICS,), "python:3.12-slim"),
    AppDef("postgres", "data", (PortDef("postgres", 5432), PortDef("metrics", 9187)), "pg:16"),
    AppDef("redis", "cache", (PortDef("redis", 6379), PortDef("metrics", 9121)), "redis:7.4"),
    AppDef("kafka", "data", (PortDef("kafka", 9092), PortDef("metrics", 9308)), "kafka:3.8"),
)


@dataclass(frozen=True, slots=True)
class AppInstance:
    """One workload as the policy generator sees it: where it is and what it exposes."""

    namespace: str
    name: str
    tier: str
    labels: dict[str, str]
    """Labels every pod of the workload carries (minus per-revision hashes)."""
    ports: tuple[PortDef, ...]


@dataclass
class ClusterSpec:
    """What to generate. Defaults are the DESIGN target size."""

    pods: int = 1000
    namespaces: int = 40
    policies: int = 200
    nodes: int = 10
    seed: int = 1


class Builder:
    """The RNG and allocation state (names, IPs, resourceVersions) shared by all builders."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.names: set[str] = set()
        self.ips: set[int] = set()
        self.service_ips: set[int] = set()
        self.rv = 100_000
        self.node_names: list[str] = []
        self.node_cidrs: list[ipaddress.IPv4Network] = []
        self.node_ips: list[str] = []

    # ------------------------------------------------------------------ primitives

    def rand(self, n: int) -> str:
        return "".join(self.rng.choice(_ALPHABET) for _ in range(n))

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def stamp(self) -> str:
        t = _EPOCH + timedelta(seconds=self.rng.randrange(1, 6 * 86400))
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    def meta(self, namespace: str | None, name: str, **extra: Any) -> Obj:
        """`metadata` with the server-set fields every dumped object has."""
        self.rv += self.rng.randrange(1, 50)
        m: Obj = {"name": name, "uid": self.uid(), "resourceVersion": str(self.rv)}
        m["creationTimestamp"] = self.stamp()
        if namespace is not None:
            m["namespace"] = namespace
        m.update({k: v for k, v in extra.items() if v is not None})
        return m

    def unique(self, prefix: str, length: int = 5) -> str:
        """`prefix` plus a random suffix not used before (collisions are rare, not absent)."""
        while True:
            name = prefix + self.rand(length)
            if name not in self.names:
                self.names.add(name)
                return name

    def pod_ip(self, node: int) -> str:
        """A free address in the node's podCIDR: unique across the whole cluster."""
        net = self.node_cidrs[node]
        while True:
            ip = int(net.network_address) + self.rng.randrange(2, net.num_addresses - 1)
            if ip not in self.ips:
                self.ips.add(ip)
                return str(ipaddress.IPv4Address(ip))

    def service_ip(self) -> str:
        while True:
            ip = int(SERVICE_NET.network_address) + self.rng.randrange(11, 65000)
            if ip not in self.service_ips:
                self.service_ips.add(ip)
                return str(ipaddress.IPv4Address(ip))

    # ------------------------------------------------------------------ nodes

    def nodes(self) -> list[Obj]:
        """Worker nodes with InternalIPs and podCIDRs carved out of 10.244.0.0/16."""
        n = self.spec.nodes
        per_node = -(-self.spec.pods // n) * 2  # headroom: scheduling is uneven
        prefix = 24
        while prefix > 16 and (2 ** (32 - prefix) - 2 < per_node):
            prefix -= 1
        if n * 2 ** (32 - prefix) > POD_NET.num_addresses:
            raise ValueError(f"{self.spec.pods} pods on {n} nodes do not fit in {POD_NET}")
        subnets = POD_NET.subnets(new_prefix=prefix)
        out = []
        for i in range(n):
            name = f"node-{i + 1:02d}"
            cidr = next(subnets)
            ip = str(NODE_NET.network_address + 11 + i)
            self.node_names.append(name)
            self.node_cidrs.append(cidr)
            self.node_ips.append(ip)
            labels = {
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "m6i.2xlarge",
                "topology.kubernetes.io/zone": f"eu-west-1{'abc'[i % 3]}",
            }
            out.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": self.meta(None, name, labels=labels),
                    "spec": {"podCIDR": str(cidr), "podCIDRs": [str(cidr)]},
                    "status": {
                        "addresses": [
                            {"address": ip, "type": "InternalIP"},
                            {"address": name, "type": "Hostname"},
                        ],
                        "allocatable": {"cpu": "7910m", "memory": "31225Mi", "pods": "110"},
                        "conditions": [
                            {
                                "lastHeartbeatTime": self.stamp(),
                                "lastTransitionTime": self.stamp(),
                                "message": "kubelet is posting ready status",
                                "reason": "KubeletReady",
                                "status": "True",
                                "type": "Ready",
                            }
                        ],
                        "nodeInfo": {
                            "architecture": "amd64",
                            "containerRuntimeVersion": "containerd://1.7.22",
                            "kernelVersion": "6.1.0-27-cloud-amd64",
                            "kubeletVersion": "v1.31.2",
                            "operatingSystem": "linux",
                            "osImage": "Debian GNU/Linux 12 (bookworm)",
                        },
                    },
                }
            )
        return out

    # ------------------------------------------------------------------ namespaces

    def namespaces(self) -> list[tuple[str, dict[str, str]]]:
        """Three platform namespaces, then `team-env` ones with team/env labels.

        About 10% lack `env` so that `NotIn`/`DoesNotExist` namespace selectors have
        objects without the key to (correctly) match (§3.4).
        """
        total = self.spec.namespaces
        if total < len(SYSTEM_NAMESPACES) + 1:
            raise ValueError(f"need at least {len(SYSTEM_NAMESPACES) + 1} namespaces")
        out: list[tuple[str, dict[str, str]]] = [
            ("kube-system", {}),
            ("monitoring", {"team": "platform"}),
            ("ingress-nginx", {"team": "platform", "app.kubernetes.io/name": "ingress-nginx"}),
        ]
        combos = [(t, e) for t in TEAMS for e in ENVS]
        self.rng.shuffle(combos)
        for i in range(total - len(SYSTEM_NAMESPACES)):
            team, env = combos[i % len(combos)]
            lap = i // len(combos)
            name = f"{team}-{env}" + (f"-{lap + 1}" if lap else "")
            labels = {"team": team, "env": env}
            roll = self.rng.random()
            if roll < 0.1:
                del labels["env"]
            elif roll < 0.4:
                labels["istio-injection"] = "enabled"
            if env == "prod":
                labels["pod-security.kubernetes.io/enforce"] = "restricted"
            out.append((name, labels))
        return [(n, {**labels, NAMESPACE_NAME_LABEL: n}) for n, labels in out]

    def namespace_object(self, name: str, labels: dict[str, str]) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": self.meta(None, name, labels=labels),
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }
