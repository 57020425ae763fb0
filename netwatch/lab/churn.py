"""Pods that come and go on a running lab: the building block of the pod-churn soak.

A lab's pods are fixed by its scenario. `PodChurn` adds pods of a few extra workloads
(`churn_workloads`: two Deployments and a StatefulSet in their own namespace) to one
node of a running lab and deletes them again, as a cluster under rollout churn would:

- each pod gets a network namespace and a routed veth wired exactly like the lab's own
  pods (`topology.configure_pod` for the pod side, the same host-side route and static
  neighbour), named like them (`nw<id>-p-<ns>.<pod>`), so `lab.down(run_id)` sweeps
  any a crashed process left behind;
- its address is the lowest free one of the node's podCIDR, so a deleted pod's address
  goes to the next pod (IP reuse, the hard case for time-aware attribution);
- Deployment pods get fresh names; StatefulSet pods reuse the lowest free ordinal (same
  name, new UID — as a recreated StatefulSet pod does);
- after every change the lab's snapshot (`handle.snapshot_path`, the agents'
  `--cluster`) is rewritten atomically (temp file + rename), so an agent reloading it
  never reads half a file. The lab's own objects keep their creation time; churn pods
  carry their own.

`traffic(pod, steps)` runs lab traffic steps from a churn pod against the lab's servers
through the ordinary `TrafficRun`, so its manifest says which connections succeeded.
Neighbours: `topology` (wiring), `snapshot` (objects), `traffic` (clients).
"""

from __future__ import annotations

import calendar
import hashlib
import ipaddress
import itertools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import yaml

from netwatch.lab.lab import LabHandle
from netwatch.lab.plan import (
    HOST_VETH_MAC,
    NETNS_PREFIX,
    LabNode,
    LabPlan,
    LabPod,
    object_uid,
    pod_identity,
    template_hash,
    workload_labels,
)
from netwatch.lab.scenario import WorkloadKind, WorkloadSpec, parse_steps
from netwatch.lab.snapshot import cluster_objects
from netwatch.lab.topology import (
    LabError,
    Runner,
    configure_pod,
    destroy,
    ip_batch,
    offloads_off,
    run_command,
)
from netwatch.lab.traffic import ServerLogs, TrafficRun, log_owners

CHURN_NAMESPACE = "churn"
VANISH_TIMEOUT = 10.0
"""Seconds to wait for a deleted pod's host veth to leave the node (netns cleanup is
asynchronous in the kernel); its address is not handed out before."""


def churn_workloads(*, node: str, namespace: str = CHURN_NAMESPACE) -> tuple[WorkloadSpec, ...]:
    """The workloads churn pods belong to: clients only (no ports, no Service selects them)."""
    return tuple(
        WorkloadSpec(
            name=name,
            namespace=namespace,
            kind=kind,
            replicas=replicas,
            nodes=(node,),
            labels={"app": name, "tier": "churn"},
            ports=(),
        )
        for name, kind, replicas in (
            ("loadgen", WorkloadKind.DEPLOYMENT, 4),
            ("batch", WorkloadKind.DEPLOYMENT, 3),
            ("worker", WorkloadKind.STATEFUL_SET, 3),
        )
    )


class PodChurn:
    """Adds and deletes pods on one node of a running lab; `close()` deletes the rest."""

    def __init__(
        self,
        handle: LabHandle,
        *,
        node: str,
        namespace: str = CHURN_NAMESPACE,
        run: Runner = run_command,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.handle = handle
        self.node: LabNode = handle.node(node)
        self._base = handle.plan
        self._run = run
        self._clock = clock
        self.workloads = churn_workloads(node=node, namespace=namespace)
        scenario = self._base.scenario
        self._scenario = replace(
            scenario,
            namespaces={**scenario.namespaces, namespace: {"team": "churn"}},
            workloads=(*scenario.workloads, *self.workloads),
        )
        self._live: dict[str, LabPod] = {}
        self._started: dict[str, float] = {}
        self._serial = itertools.count()
        self._next_workload = itertools.cycle(self.workloads)
        taken = {p.ip for p in self._base.pods if p.node == node}
        net = ipaddress.IPv4Network(self.node.pod_cidr)
        # .1 stays free (as in the plan); lab pods keep theirs.
        self._free = [str(a) for a in list(net.hosts())[1:] if str(a) not in taken]
        self._created = _snapshot_created(handle)
        self._logs = ServerLogs(handle.run_dir / "logs", log_owners(self._base))
        self.created_total = 0
        self.deleted_total = 0
        self.ips_reused = 0
        self.history: list[LabPod] = []
        """Every pod created, in order."""
        self._ever_used: set[str] = set()

    # ----------------------------------------------------------------- state

    @property
    def live(self) -> tuple[LabPod, ...]:
        return tuple(self._live.values())

    @property
    def plan(self) -> LabPlan:
        """The lab's plan with the live churn pods (what the snapshot describes)."""
        return replace(self._base, scenario=self._scenario, pods=(*self._base.pods, *self.live))

    # --------------------------------------------------------------- changes

    def add(self, workload: WorkloadSpec | None = None) -> LabPod:
        """Create one pod (of the next workload in turn), then publish the snapshot."""
        if not self._free:
            raise LabError(f"podCIDR {self.node.pod_cidr} of {self.node.name} is full")
        w = workload or next(self._next_workload)
        pod = self._new_pod(w, ip=min(self._free, key=ipaddress.IPv4Address))
        self._free.remove(pod.ip)
        try:
            self._wire(pod)
        except BaseException:
            destroy([pod.netns], self._run)
            self._free.append(pod.ip)
            raise
        self.ips_reused += pod.ip in self._ever_used
        self._ever_used.add(pod.ip)
        self._live[pod.key] = pod
        self.history.append(pod)
        self._started[pod.uid] = self._clock()
        self.created_total += 1
        self.write_snapshot()
        return pod

    def remove(self, pod: LabPod) -> None:
        """Delete a pod (its processes, namespace and veth), then publish the snapshot."""
        leftovers = destroy([pod.netns], self._run)
        if leftovers:
            raise LabError(f"namespace {pod.netns} survived deletion")
        self._wait_vanished(pod)
        del self._live[pod.key]
        self._started.pop(pod.uid, None)
        self._free.append(pod.ip)
        self.deleted_total += 1
        self.write_snapshot()

    def close(self) -> None:
        """Delete every live churn pod (the lab itself stays)."""
        for pod in self.live:
            self.remove(pod)

    def write_snapshot(self) -> None:
        """Rewrite the lab snapshot atomically: the lab's objects plus the live churn pods."""
        items = cluster_objects(self.plan, created=self._created)
        for item in items:
            started = self._started.get(item["metadata"].get("uid", ""))
            if item["kind"] == "Pod" and started is not None:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
                item["metadata"]["creationTimestamp"] = stamp
                item["status"]["startTime"] = stamp
        text = yaml.safe_dump(
            {"apiVersion": "v1", "kind": "List", "items": items}, sort_keys=False, width=100
        )
        path = self.handle.snapshot_path
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(f"# netwatch lab snapshot, run {self._base.run_id}, churn\n" + text)
        os.replace(tmp, path)

    # --------------------------------------------------------------- traffic

    def traffic(self, pod: LabPod, steps: Sequence[Mapping[str, Any]]) -> TrafficRun:
        """Start lab traffic steps (`from` is filled in: this pod) against the lab's servers."""
        parsed = parse_steps([{**s, "from": pod.key} for s in steps], source=f"churn {pod.key}")
        plan = self.plan
        resolved = [plan.resolve(step) for step in parsed]
        run = TrafficRun(plan=plan, steps=resolved, python=self.handle.python, logs=self._logs)
        return run.start()

    # -------------------------------------------------------------- helpers

    def _new_pod(self, w: WorkloadSpec, *, ip: str) -> LabPod:
        serial = next(self._serial)
        index = serial
        if w.kind is WorkloadKind.STATEFUL_SET:
            used = {p.replica for p in self._live.values() if p.workload.name == w.name}
            index = next(i for i in itertools.count() if i not in used)
        name, owner, extra = pod_identity(w, index, self.node.name, template_hash(w))
        run_id = self._base.run_id
        # The serial keeps veth names unique even when a StatefulSet name comes back while
        # the kernel is still tearing down the previous pod's veth.
        digest = hashlib.sha256(f"{run_id}/{w.namespace}/{name}/{serial}".encode()).hexdigest()
        return LabPod(
            namespace=w.namespace,
            name=name,
            uid=object_uid(self._scenario.name, "Pod", w.namespace, f"{name}/{serial}"),
            workload=w,
            replica=index,
            node=self.node.name,
            netns=f"{NETNS_PREFIX}{run_id}-p-{w.namespace}.{name}",
            ip=ip,
            interface=f"veth{digest[:8]}",
            mac="0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed),
            labels={**workload_labels(w), **extra},
            owner_name=owner,
        )

    def _wire(self, pod: LabPod) -> None:
        """The lab's pod wiring (`topology.build`) for one pod on a running node."""
        veth, node_netns = pod.interface or "", self.node.netns
        self._run(["ip", "netns", "add", pod.netns])
        host_side = (
            f"link add {veth} type veth peer name eth0 netns {pod.netns}",
            f"link set {veth} address {HOST_VETH_MAC}",
            f"link set {veth} up",
            # `replace`: a just-deleted pod's /32 route to this address may linger
            f"route replace {pod.ip}/32 dev {veth} scope link",
            f"neigh replace {pod.ip} lladdr {pod.mac} dev {veth} nud permanent",
        )
        ip_batch(self._run, node_netns, host_side)
        configure_pod(self._run, pod.netns, ip=pod.ip, mac=pod.mac or "")
        if not self._scenario.offloads:
            offloads_off(self._run, node_netns, veth)
            offloads_off(self._run, pod.netns, "eth0")

    def _wait_vanished(self, pod: LabPod) -> None:
        deadline = time.monotonic() + VANISH_TIMEOUT
        while time.monotonic() < deadline:
            try:
                self._run(["ip", "-n", self.node.netns, "link", "show", "dev", pod.interface or ""])
            except LabError:
                return
            time.sleep(0.05)
        raise LabError(f"veth {pod.interface} of {pod.key} still on {self.node.name}")


def _snapshot_created(handle: LabHandle) -> float:
    """When the lab wrote its snapshot (every object carries that creationTimestamp)."""
    doc = yaml.safe_load(handle.snapshot_path.read_text(encoding="utf-8"))
    for item in doc.get("items", []):
        stamp = item.get("metadata", {}).get("creationTimestamp")
        if stamp:
            return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
    return time.time()


__all__ = ["CHURN_NAMESPACE", "PodChurn", "churn_workloads"]
