"""The inventory's input contract: what a cluster source (live watch or files) emits.

Sources in `netwatch.k8s` convert API objects to core types and push them into an
`InventorySink`; the pure store behind it keeps current objects plus the history the
identity index needs ("which pod held this IP at time t"). Time is always passed in.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol as TypingProtocol

from netwatch.core.model import EndpointSlice, Namespace, Node, Pod, Service, WorkloadObject
from netwatch.core.policy import NetworkPolicy

InventoryObject = Pod | Namespace | Service | EndpointSlice | Node | NetworkPolicy | WorkloadObject


class ObjectKind(enum.Enum):
    """The kinds a source lists and watches, by their API kind name."""

    POD = "Pod"
    NAMESPACE = "Namespace"
    SERVICE = "Service"
    ENDPOINT_SLICE = "EndpointSlice"
    NODE = "Node"
    NETWORK_POLICY = "NetworkPolicy"
    WORKLOAD = "Workload"
    """ReplicaSet, Deployment, StatefulSet, DaemonSet, Job, CronJob (metadata only)."""


class EventType(enum.Enum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class InventoryEvent:
    type: EventType
    kind: ObjectKind
    obj: InventoryObject
    at: float
    """Epoch seconds when the source observed the change."""


class InventorySink(TypingProtocol):
    """Where a cluster source delivers objects. Implementations must be cheap per call."""

    def replace(self, kind: ObjectKind, objects: Sequence[InventoryObject], *, at: float) -> None:
        """A full (re)list of one kind: objects absent from it were deleted at `at`."""

    def apply(self, event: InventoryEvent) -> None:
        """One watch event."""
