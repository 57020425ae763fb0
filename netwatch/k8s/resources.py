"""What the live source lists and watches, and how each resource is requested.

One `Resource` per API collection: its inventory kind, the converter from `convert`
that turns its objects into core values, the typed kubernetes-client method that lists
(and, with `watch=True`, watches) it cluster-wide, and whether it is fetched as
metadata only.

Metadata only — the decision. netwatch needs owners for two things: the ownership chain
(metadata.ownerReferences: Pod→ReplicaSet→Deployment, Job→CronJob) and, for suggestions,
the *top* owner's `spec.selector` (DESIGN §7). A PartialObjectMetadata request (Accept
`application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`) returns metadata
only — no pod template, which is most of a controller's bytes — but drops `spec`. So:

- ReplicaSets, Jobs and CronJobs are fetched as metadata. They are the numerous ones
  (up to `revisionHistoryLimit` ReplicaSets per Deployment, one Job per CronJob run),
  and their selectors are useless for suggestions anyway: a ReplicaSet's includes
  `pod-template-hash`, a Job's the generated `controller-uid`, a CronJob has none.
- Deployments, StatefulSets and DaemonSets are fetched whole, because their
  `spec.selector.matchLabels` is the stable selector suggestions use; there are few of
  them, and each is slimmed to a `WorkloadObject` as soon as it arrives.

The cost: a bare ReplicaSet (no Deployment) that is a pod's top owner has no selector,
and suggestions fall back to the pod's identity labels for it — rare, and safe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from netwatch.core.inventory import InventoryObject, ObjectKind
from netwatch.k8s.convert import (
    endpoint_slice_from_dict,
    namespace_from_dict,
    node_from_dict,
    pod_from_dict,
    policy_from_dict,
    service_from_dict,
    workload_from_dict,
)

# Accept headers for metadata-only requests (what client-go's metadata client sends,
# minus protobuf). The trailing plain JSON lets a server without the conversion answer
# with full objects, which convert just the same.
METADATA_LIST_ACCEPT = (
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
)
METADATA_WATCH_ACCEPT = (
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
)


@dataclass(frozen=True)
class Resource:
    name: str
    """The API collection (plural), e.g. `pods`; names threads, logs and health."""
    api_kind: str
    """The object kind, e.g. `Pod`."""
    kind: ObjectKind
    api: str
    """kubernetes.client API class, e.g. `CoreV1Api`."""
    method: str
    """Its cluster-wide list method, e.g. `list_pod_for_all_namespaces`."""
    metadata_only: bool = False

    def convert(self, obj: Mapping[str, Any], *, source: str) -> InventoryObject:
        """Raises `convert.InvalidObject` for objects netwatch cannot use."""
        return _CONVERTERS[self.kind](self, obj, source)

    def list_function(self, api_client: client.ApiClient) -> Callable[..., Any]:
        api = getattr(client, self.api)(api_client)
        fn: Callable[..., Any] = getattr(api, self.method)
        return fn


def _workload(resource: Resource, obj: Mapping[str, Any], source: str) -> InventoryObject:
    # List items carry no `kind`, and metadata-only objects say `PartialObjectMetadata`;
    # the collection tells what they are.
    return workload_from_dict({**obj, "kind": resource.api_kind}, source=source)


_KindConverter = Callable[[Resource, Mapping[str, Any], str], InventoryObject]


def _plain(fn: Callable[..., InventoryObject]) -> _KindConverter:
    return lambda _resource, obj, source: fn(obj, source=source)


_CONVERTERS: Mapping[ObjectKind, _KindConverter] = {
    ObjectKind.POD: _plain(pod_from_dict),
    ObjectKind.NAMESPACE: _plain(namespace_from_dict),
    ObjectKind.SERVICE: _plain(service_from_dict),
    ObjectKind.ENDPOINT_SLICE: _plain(endpoint_slice_from_dict),
    ObjectKind.NODE: _plain(node_from_dict),
    ObjectKind.NETWORK_POLICY: _plain(policy_from_dict),
    ObjectKind.WORKLOAD: _workload,
}

ALL_RESOURCES: tuple[Resource, ...] = (
    Resource("namespaces", "Namespace", ObjectKind.NAMESPACE, "CoreV1Api", "list_namespace"),
    Resource("nodes", "Node", ObjectKind.NODE, "CoreV1Api", "list_node"),
    Resource("pods", "Pod", ObjectKind.POD, "CoreV1Api", "list_pod_for_all_namespaces"),
    Resource(
        "services", "Service", ObjectKind.SERVICE, "CoreV1Api", "list_service_for_all_namespaces"
    ),
    Resource(
        "endpointslices",
        "EndpointSlice",
        ObjectKind.ENDPOINT_SLICE,
        "DiscoveryV1Api",
        "list_endpoint_slice_for_all_namespaces",
    ),
    Resource(
        "networkpolicies",
        "NetworkPolicy",
        ObjectKind.NETWORK_POLICY,
        "NetworkingV1Api",
        "list_network_policy_for_all_namespaces",
    ),
    Resource(
        "deployments",
        "Deployment",
        ObjectKind.WORKLOAD,
        "AppsV1Api",
        "list_deployment_for_all_namespaces",
    ),
    Resource(
        "statefulsets",
        "StatefulSet",
        ObjectKind.WORKLOAD,
        "AppsV1Api",
        "list_stateful_set_for_all_namespaces",
    ),
    Resource(
        "daemonsets",
        "DaemonSet",
        ObjectKind.WORKLOAD,
        "AppsV1Api",
        "list_daemon_set_for_all_namespaces",
    ),
    Resource(
        "replicasets",
        "ReplicaSet",
        ObjectKind.WORKLOAD,
        "AppsV1Api",
        "list_replica_set_for_all_namespaces",
        metadata_only=True,
    ),
    Resource(
        "jobs",
        "Job",
        ObjectKind.WORKLOAD,
        "BatchV1Api",
        "list_job_for_all_namespaces",
        metadata_only=True,
    ),
    Resource(
        "cronjobs",
        "CronJob",
        ObjectKind.WORKLOAD,
        "BatchV1Api",
        "list_cron_job_for_all_namespaces",
        metadata_only=True,
    ),
)
