"""The lab as Kubernetes would report it: a `kubectl get -o yaml`-shaped cluster snapshot.

`cluster_objects` builds, from a plan, the objects a real cluster with this topology
would hold — Namespaces, Nodes (InternalIP, podCIDR), Pods with their real lab IPs,
nodeName, hostIP, labels, container ports and ownerReferences, the owning ReplicaSets,
Deployments, StatefulSets and DaemonSets, Services, EndpointSlices, and the scenario's
NetworkPolicies verbatim — and `write_snapshot` writes them as one `kind: List`, which
`netwatch.k8s.snapshot.load_cluster` (and therefore every `--cluster` command) reads.

UIDs and names are derived from the scenario, not the run, so two runs of a scenario
produce the same snapshot apart from timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from netwatch.lab.plan import (
    LabPlan,
    LabPod,
    LabService,
    object_uid,
    template_hash,
    workload_labels,
)
from netwatch.lab.scenario import WorkloadKind, WorkloadSpec

IMAGE = "netwatch/lab-agentlet:latest"


def write_snapshot(plan: LabPlan, path: Path, *, created: float | None = None) -> None:
    doc = {"apiVersion": "v1", "kind": "List", "items": cluster_objects(plan, created=created)}
    header = (
        f"# netwatch lab snapshot: scenario {plan.scenario.name}, run {plan.run_id}\n"
        "# (kubectl get ns,nodes,pods,rs,deploy,sts,ds,svc,endpointslices,netpol -A -o yaml)\n"
    )
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=100)
    path.write_text(header + text, encoding="utf-8")


def cluster_objects(plan: LabPlan, *, created: float | None = None) -> list[dict[str, Any]]:
    stamp = _timestamp(time.time() if created is None else created)
    scenario = plan.scenario.name
    items: list[dict[str, Any]] = []
    for ns, labels in plan.scenario.namespaces.items():
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": ns,
                    "uid": object_uid(scenario, "Namespace", "", ns),
                    "creationTimestamp": stamp,
                    "labels": {"kubernetes.io/metadata.name": ns, **labels},
                },
                "status": {"phase": "Active"},
            }
        )
    for node in plan.nodes:
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": node.name,
                    "uid": object_uid(scenario, "Node", "", node.name),
                    "creationTimestamp": stamp,
                    "labels": {
                        "kubernetes.io/hostname": node.name,
                        "kubernetes.io/os": "linux",
                        **node.labels,
                    },
                },
                "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": node.ip},
                        {"type": "Hostname", "address": node.name},
                    ]
                },
            }
        )
    for w in plan.scenario.workloads:
        items.extend(_controllers(plan, w, stamp))
    items.extend(_pod(plan, pod, stamp) for pod in plan.pods)
    for service in plan.services:
        items.append(_service(plan, service, stamp))
        items.extend(_endpoint_slices(plan, service, stamp))
    items.extend(dict(p) for p in plan.scenario.policies)
    return items


def _timestamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _owner(kind: str, name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _controllers(plan: LabPlan, w: WorkloadSpec, stamp: str) -> list[dict[str, Any]]:
    scenario = plan.scenario.name
    labels = dict(workload_labels(w))
    template = {"metadata": {"labels": labels}, "spec": _pod_spec(w, None)}
    if w.kind is WorkloadKind.POD:
        return []
    uid = object_uid(scenario, w.kind.value, w.namespace, w.name)
    meta = {
        "name": w.name,
        "namespace": w.namespace,
        "uid": uid,
        "creationTimestamp": stamp,
        "labels": labels,
    }
    spec: dict[str, Any] = {"selector": {"matchLabels": labels}, "template": template}
    if w.kind is not WorkloadKind.DAEMON_SET:
        spec = {"replicas": w.replicas, **spec}
    controller = {"apiVersion": "apps/v1", "kind": w.kind.value, "metadata": meta, "spec": spec}
    if w.kind is not WorkloadKind.DEPLOYMENT:
        return [controller]
    pth = template_hash(w)
    rs_name = f"{w.name}-{pth}"
    rs_labels = {**labels, "pod-template-hash": pth}
    replica_set = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": rs_name,
            "namespace": w.namespace,
            "uid": object_uid(scenario, "ReplicaSet", w.namespace, rs_name),
            "creationTimestamp": stamp,
            "labels": rs_labels,
            "ownerReferences": [_owner("Deployment", w.name, uid)],
        },
        "spec": {
            "replicas": w.replicas,
            "selector": {"matchLabels": rs_labels},
            "template": {"metadata": {"labels": rs_labels}, "spec": _pod_spec(w, None)},
        },
    }
    return [controller, replica_set]


def _pod_spec(w: WorkloadSpec, node: str | None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": w.name, "image": IMAGE}
    if w.ports:
        container["ports"] = [
            {
                **({"name": p.name} if p.name else {}),
                "containerPort": p.port,
                "protocol": p.protocol.value,
            }
            for p in w.ports
        ]
    spec: dict[str, Any] = {}
    if node is not None:
        spec["nodeName"] = node
    if w.host_network:
        spec["hostNetwork"] = True
    spec["containers"] = [container]
    return spec


def _pod(plan: LabPlan, pod: LabPod, stamp: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": pod.name,
        "namespace": pod.namespace,
        "uid": pod.uid,
        "creationTimestamp": stamp,
        "labels": dict(pod.labels),
    }
    if pod.owner_name is not None:
        kind = {
            WorkloadKind.DEPLOYMENT: "ReplicaSet",
            WorkloadKind.STATEFUL_SET: "StatefulSet",
            WorkloadKind.DAEMON_SET: "DaemonSet",
        }[pod.workload.kind]
        uid = object_uid(plan.scenario.name, kind, pod.namespace, pod.owner_name)
        meta["ownerReferences"] = [_owner(kind, pod.owner_name, uid)]
    host_ip = plan.node(pod.node).ip
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": _pod_spec(pod.workload, pod.node),
        "status": {
            "phase": "Running",
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}],
            "startTime": stamp,
        },
    }


def _service(plan: LabPlan, service: LabService, stamp: str) -> dict[str, Any]:
    ports = [
        {
            **({"name": sp.spec.name} if sp.spec.name else {}),
            "port": sp.spec.port,
            "targetPort": sp.spec.target_port,
            "protocol": sp.spec.protocol.value,
        }
        for sp in service.ports
    ]
    cluster_ip = service.cluster_ip or "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service.name,
            "namespace": service.namespace,
            "uid": object_uid(plan.scenario.name, "Service", service.namespace, service.name),
            "creationTimestamp": stamp,
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "selector": dict(service.selector),
            "ports": ports,
        },
    }


def _endpoint_slices(plan: LabPlan, service: LabService, stamp: str) -> list[dict[str, Any]]:
    """One slice per distinct set of resolved target ports, as the controller groups them."""
    groups: dict[tuple[int | None, ...], list[LabPod]] = {}
    pods: dict[str, LabPod] = {}
    for sp in service.ports:
        for b in sp.backends:
            pods[b.pod.key] = b.pod
    for pod in pods.values():
        numbers = tuple(_target_on(service, i, pod) for i in range(len(service.ports)))
        groups.setdefault(numbers, []).append(pod)
    slices = []
    for numbers, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        name = (
            f"{service.name}-{object_uid(plan.scenario.name, 'EPS', service.key, str(numbers))[:5]}"
        )
        slices.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": name,
                    "namespace": service.namespace,
                    "uid": object_uid(plan.scenario.name, "EndpointSlice", service.namespace, name),
                    "creationTimestamp": stamp,
                    "labels": {
                        "kubernetes.io/service-name": service.name,
                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                    },
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Service",
                            "name": service.name,
                            "uid": object_uid(
                                plan.scenario.name, "Service", service.namespace, service.name
                            ),
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "addressType": "IPv4",
                "endpoints": [
                    {
                        "addresses": [pod.ip],
                        "conditions": {"ready": True, "serving": True, "terminating": False},
                        "nodeName": pod.node,
                        "targetRef": {
                            "kind": "Pod",
                            "namespace": pod.namespace,
                            "name": pod.name,
                            "uid": pod.uid,
                        },
                    }
                    for pod in members
                ],
                "ports": [
                    {
                        **({"name": sp.spec.name} if sp.spec.name else {}),
                        "port": number,
                        "protocol": sp.spec.protocol.value,
                    }
                    for sp, number in zip(service.ports, numbers, strict=True)
                    if number is not None
                ],
            }
        )
    return slices


def _target_on(service: LabService, index: int, pod: LabPod) -> int | None:
    for b in service.ports[index].backends:
        if b.pod.key == pod.key:
            return b.port
    return None


def dns_records(plan: LabPlan) -> Mapping[str, list[str]]:
    """What the lab's DNS pods answer: Services (headless ones with their pods' IPs),
    pods as `a-b-c-d.<ns>.pod.cluster.local`, and `internet.lab` for the external host."""
    records: dict[str, list[str]] = {}
    for service in plan.services:
        name = f"{service.name}.{service.namespace}.svc.cluster.local"
        if service.cluster_ip:
            records[name] = [service.cluster_ip]
        else:
            ips = {b.pod.ip for sp in service.ports for b in sp.backends}
            records[name] = sorted(ips)
    for pod in plan.pods:
        if not pod.host_network:
            records[f"{pod.ip.replace('.', '-')}.{pod.namespace}.pod.cluster.local"] = [pod.ip]
    for node in plan.nodes:
        records[f"{node.name}.node.lab"] = [node.ip]
    if plan.internet is not None:
        records["internet.lab"] = [plan.internet.ip]
    return records
