"""Cluster objects as netwatch sees them: small frozen values with only the fields used.

`netwatch.k8s.convert` is the one place that builds these from API objects or YAML dumps
(the "slim object" idea from Inspektor Gadget); everything downstream — engine, lint,
identity, metrics — sees only these types.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NewType

NamespaceName = NewType("NamespaceName", str)
PodName = NewType("PodName", str)
NodeName = NewType("NodeName", str)
Uid = NewType("Uid", str)


class Protocol(enum.Enum):
    """Transport protocols NetworkPolicy knows; ICMP exists for flows but is never evaluated."""

    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"
    ICMP = "ICMP"

    @classmethod
    def parse(cls, text: str) -> Protocol:
        try:
            return cls(text.upper())
        except ValueError:
            raise ValueError(f"unknown protocol {text!r} (expected TCP, UDP or SCTP)") from None


POLICY_PROTOCOLS: tuple[Protocol, ...] = (Protocol.TCP, Protocol.UDP, Protocol.SCTP)


class Direction(enum.Enum):
    """A policy direction; the value is how it is written in output (`ingress`/`egress`)."""

    INGRESS = "ingress"
    EGRESS = "egress"

    @property
    def policy_type(self) -> str:
        """The spelling used in `spec.policyTypes`."""
        return self.value.capitalize()


class Labels(Mapping[str, str]):
    """An immutable, hashable label map (pods and namespaces are compared by value)."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        self._data: dict[str, str] = dict(sorted((data or {}).items()))
        self._hash = hash(tuple(self._data.items()))

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Labels):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Labels({self._data!r})"


EMPTY_LABELS = Labels()


@dataclass(frozen=True, slots=True)
class ContainerPort:
    """A declared container port; only named ones matter for policy (DESIGN §3.5)."""

    port: int
    protocol: Protocol = Protocol.TCP
    name: str | None = None


@dataclass(frozen=True, slots=True)
class OwnerRef:
    kind: str
    name: str
    uid: Uid | None = None
    controller: bool = False


class PodPhase(enum.Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"

    @property
    def terminal(self) -> bool:
        """Succeeded/Failed pods no longer own their IP (DESIGN §2)."""
        return self in (PodPhase.SUCCEEDED, PodPhase.FAILED)


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: NamespaceName
    name: PodName
    uid: Uid
    labels: Labels = EMPTY_LABELS
    node_name: NodeName | None = None
    host_network: bool = False
    ips: tuple[str, ...] = ()
    """Pod IPs, primary (`status.podIP`) first."""
    host_ip: str | None = None
    phase: PodPhase = PodPhase.RUNNING
    container_ports: tuple[ContainerPort, ...] = ()
    owners: tuple[OwnerRef, ...] = ()
    created_at: float | None = None
    """`metadata.creationTimestamp` as epoch seconds (API server clock), when known. The
    identity index uses it to order pods claiming one IP and to bound snapshot pods."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def primary_ip(self) -> str | None:
        return self.ips[0] if self.ips else None

    @property
    def policy_target(self) -> bool:
        """Whether pod/namespace selectors can select it (hostNetwork pods are node traffic)."""
        return not self.host_network

    def named_port(self, name: str, protocol: Protocol) -> int | None:
        """Resolve a named port against this pod's containers, protocol included."""
        numbers = self.named_ports(name, protocol)
        return numbers[0] if numbers else None

    def named_ports(self, name: str, protocol: Protocol) -> tuple[int, ...]:
        """Every number a name resolves to: names are unique per container, not per pod."""
        return tuple(
            cp.port for cp in self.container_ports if cp.name == name and cp.protocol is protocol
        )


@dataclass(frozen=True, slots=True)
class Namespace:
    name: NamespaceName
    labels: Labels = EMPTY_LABELS


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    target_port: int | str
    protocol: Protocol = Protocol.TCP
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Service:
    namespace: NamespaceName
    name: str
    cluster_ips: tuple[str, ...] = ()
    selector: Labels | None = None
    ports: tuple[ServicePort, ...] = ()
    type: str = "ClusterIP"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address of an EndpointSlice, with the pod it points at when known."""

    addresses: tuple[str, ...]
    pod: str | None = None
    """`namespace/name` of the target pod."""
    ready: bool = True


@dataclass(frozen=True, slots=True)
class EndpointSlicePort:
    port: int
    protocol: Protocol = Protocol.TCP
    name: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: NamespaceName
    name: str
    service_name: str | None
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointSlicePort, ...] = ()


@dataclass(frozen=True, slots=True)
class Node:
    name: NodeName
    addresses: tuple[str, ...] = ()
    """InternalIP/ExternalIP addresses; traffic from these to the node's pods is exempt."""
    pod_cidrs: tuple[str, ...] = ()
    labels: Labels = EMPTY_LABELS


class WorkloadKind(enum.Enum):
    DEPLOYMENT = "Deployment"
    REPLICA_SET = "ReplicaSet"
    STATEFUL_SET = "StatefulSet"
    DAEMON_SET = "DaemonSet"
    JOB = "Job"
    CRON_JOB = "CronJob"
    POD = "Pod"


@dataclass(frozen=True, slots=True)
class WorkloadObject:
    """A controller object (metadata and selector only) used to find a pod's top owner."""

    kind: WorkloadKind
    namespace: NamespaceName
    name: str
    uid: Uid | None = None
    owners: tuple[OwnerRef, ...] = ()
    selector_labels: Labels | None = None
    """`spec.selector.matchLabels`, used by suggestions as the stable pod selector."""


@dataclass(frozen=True, slots=True)
class Workload:
    """The top owner of a pod: Deployment, StatefulSet, DaemonSet, CronJob, Job or the pod."""

    namespace: NamespaceName
    name: str
    kind: WorkloadKind

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class LoadProblem:
    """An object that could not be used, with enough location to fix it (DESIGN §3.9)."""

    source: str
    """File (and document) the object came from."""
    obj: str
    """`Kind namespace/name` of the object, or what is known of it."""
    field: str
    """Dotted path of the offending field, e.g. `spec.ingress[0].from[1].ipBlock.cidr`."""
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.obj}"
        if self.field:
            where += f": {self.field}"
        return f"{where}: {self.message}"
