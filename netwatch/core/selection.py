"""Which pods a suggested policy or peer selects: workloads, isolated subsets, DNS pods.

`suggest` builds rules; this module answers "which selector means this workload?" over
one cluster view (`PolicyEngine`), with caches and the warnings a human must see:

- `workload(w)`: the owner's `spec.selector.matchLabels`, else the stable labels all its
  pods share (`rulebits.stable_labels`); None when nothing stable is left (unselectable);
- `peer(w)`: the same, or every pod of the namespace for an unselectable peer (warned);
- `isolated_subject(...)`: for `suggest --mode add`, a selector that picks only pods
  already isolated in a direction — adding a policy must never newly isolate a pod, or
  it would deny traffic that flows today. The workload selector when it qualifies, else
  that selector AND-ed with the podSelector of a policy isolating the observed pod;
- `overlaps(w, selector)`: other workloads the selector also picks (a warning);
- `find_dns`: the cluster DNS pods — kube-system pods of the `kube-dns`/`coredns`
  Service's selector, else `k8s-app=kube-dns` — and their UDP/TCP ports for Service
  port 53 (targetPorts resolved on a DNS pod; 53 when not said).
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from netwatch.core.bitset import Bits, iter_bits
from netwatch.core.engine import PolicyEngine
from netwatch.core.model import Direction, NamespaceName, Pod, Protocol, Workload
from netwatch.core.rulebits import and_selectors, selector_of, stable_labels
from netwatch.core.selectors import MATCH_ALL, LabelSelector

DNS_PORT = 53
DNS_NAMESPACE = NamespaceName("kube-system")
DNS_SERVICES = ("kube-dns", "coredns")


@dataclass(frozen=True)
class DnsTarget:
    pods: frozenset[str]
    """`namespace/name` of the DNS pods."""
    selector: LabelSelector
    ports: dict[Protocol, int]
    """The pods' port for UDP and TCP DNS."""


class WorkloadSelectors:
    """Selectors for workloads of one cluster view; `warn` receives what humans must see."""

    def __init__(self, engine: PolicyEngine, *, warn: Callable[[str], None]) -> None:
        self.engine = engine
        self.cluster = cluster = engine.cluster
        self._warn = warn
        self._objects = {(w.kind.value, w.namespace, w.name): w for w in cluster.workload_objects}
        self.pods_of: dict[Workload, list[Pod]] = {}
        for pod in cluster.pods:
            if pod.policy_target:
                self.pods_of.setdefault(cluster.workload_of(pod), []).append(pod)
        self.seen_labels: dict[Workload, dict[str, str]] = {}
        """Labels of identities seen in traffic: the fallback for pods the view lacks."""
        self._cache: dict[Workload, LabelSelector | None] = {}
        self._isolated: dict[Direction, Bits] = {}

    def workload(self, workload: Workload) -> LabelSelector | None:
        """The owner's spec.selector, else the stable labels all its pods share."""
        if workload in self._cache:
            return self._cache[workload]
        obj = self._objects.get((workload.kind.value, workload.namespace, workload.name))
        labels: dict[str, str] = {}
        if obj is not None and obj.selector_labels:
            labels = stable_labels(obj.selector_labels, workload.kind)
        if not labels:
            pods = self.pods_of.get(workload, [])
            sets = [stable_labels(p.labels, workload.kind) for p in pods] or [
                stable_labels(self.seen_labels.get(workload, {}), workload.kind)
            ]
            labels = {k: v for k, v in sets[0].items() if all(s.get(k) == v for s in sets)}
        found = selector_of(labels) if labels else None
        self._cache[workload] = found
        return found

    def subject(self, workload: Workload) -> LabelSelector | None:
        """The selector of a workload's own policy; None (warned) when unselectable."""
        found = self.workload(workload)
        if found is None:
            self._warn(f"{workload.key}: no stable label selects its pods; no policy suggested")
        return found

    def peer(self, workload: Workload) -> LabelSelector:
        found = self.workload(workload)
        if found is None:
            self._warn(
                f"{workload.key}: no stable label selects its pods; as a peer it is "
                f"admitted as every pod of namespace {workload.namespace}"
            )
            return MATCH_ALL
        return found

    def isolated_subject(
        self, workload: Workload, pod: Pod | None, direction: Direction
    ) -> LabelSelector | None:
        """A selector for `pod`'s workload picking only pods already isolated in
        `direction`; None when `pod` itself is not isolated (nothing to add there)."""
        engine = self.engine
        index = engine.index.get(pod.key) if pod is not None else None
        isolating = engine.policies_selecting(index, direction) if index is not None else ()
        if not isolating:
            return None
        base = self.workload(workload)
        if base is not None and not (
            engine.select_pods(base, workload.namespace) & ~self._isolated_pods(direction)
        ):
            return base
        if base is None:
            self._warn(
                f"{workload.key}: no stable label selects its pods; rules added for the "
                f"pods of {isolating[0].key} instead"
            )
            return isolating[0].pod_selector
        return and_selectors(base, isolating[0].pod_selector)

    def _isolated_pods(self, direction: Direction) -> Bits:
        bits = self._isolated.get(direction)
        if bits is None:
            bits = 0
            for policy in self.cluster.policies:
                if policy.isolates(direction):
                    bits |= self.engine.policy_pods(policy)
            self._isolated[direction] = bits
        return bits

    def overlaps(self, workload: Workload, selector: LabelSelector) -> list[str]:
        """Other workloads whose pods `selector` picks in `workload`'s namespace."""
        engine = self.engine
        found = {
            self.cluster.workload_of(engine.pods[i]).key
            for i in iter_bits(engine.select_pods(selector, workload.namespace))
        }
        return sorted(found - {workload.key})


def find_dns(engine: PolicyEngine) -> DnsTarget | None:
    """The cluster DNS pods, their selector and ports (module doc), or None."""
    cluster = engine.cluster
    service = next(
        (
            s
            for s in cluster.services
            if s.namespace == DNS_NAMESPACE and s.name in DNS_SERVICES and s.selector
        ),
        None,
    )
    labels = dict(service.selector) if service and service.selector else {"k8s-app": "kube-dns"}
    selector = selector_of(labels)
    pods = [engine.pods[i] for i in iter_bits(engine.select_pods(selector, DNS_NAMESPACE))]
    if not pods:
        return None
    ports: dict[Protocol, int] = {Protocol.UDP: DNS_PORT, Protocol.TCP: DNS_PORT}
    for sp in service.ports if service else ():
        if sp.port == DNS_PORT and sp.protocol in ports:
            target = sp.target_port
            if isinstance(target, str):
                number = pods[0].named_port(target, sp.protocol)
                target = number if number is not None else DNS_PORT
            ports[sp.protocol] = target
    return DnsTarget(frozenset(p.key for p in pods), selector, ports)
