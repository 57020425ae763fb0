"""Building blocks of suggested rules: stable selectors, peers, merged ports, evidence.

`suggest` decides *which* rules a workload needs; this module decides how each piece is
spelled so that it keeps selecting the same things after a rollout:

- **Selectors.** A workload is selected by its owner's `spec.selector.matchLabels`, else
  by the labels all its pods share. Labels that change per rollout, per pod, per Job run
  or per node are never used: `pod-template-hash`, `controller-revision-hash`,
  `pod-template-generation`, `statefulset.kubernetes.io/pod-name`,
  `apps.kubernetes.io/pod-index`, `controller-uid`, `helm.sh/chart`,
  `app.kubernetes.io/version`, anything under `topology.kubernetes.io/`,
  `batch.kubernetes.io/`, `statefulset.kubernetes.io/`, and — for CronJob pods, whose
  Job changes every run — `job-name`. A workload left with no label is *unselectable*.
- **Peers.** Same-namespace peers are a podSelector alone; others add a
  namespaceSelector on `kubernetes.io/metadata.name` (the label the API server sets).
- **Ports.** Per peer, the observed server ports are merged: named where the server pod
  names the port (so the rule survives a port renumbering), numbers otherwise. Numbers
  of one protocol form an `endPort` range where observation is *dense*: a run of at
  least `DENSE_MIN_PORTS` observed ports in which at least `DENSE_RATIO` of the range's
  ports were observed (e.g. 30000, 30001, 30003 → 30000-30003; 80, 443 stay apart).
- **Names.** `<workload>-netwatch`; same-named workloads of different kinds (a
  Deployment and a StatefulSet `web`) add the kind; a name an existing policy holds gets
  `-2`, `-3`, … (`add` mode: applying must never replace an existing policy).
- **Evidence.** Connection counts and first/last-seen times per rule and policy.
Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from netwatch.core.cidr import Aggregate
from netwatch.core.cluster import NAMESPACE_NAME_LABEL
from netwatch.core.model import (
    POLICY_PROTOCOLS,
    NamespaceName,
    Protocol,
    Workload,
    WorkloadKind,
)
from netwatch.core.observed import Observation
from netwatch.core.policy import Peer, PortSpec
from netwatch.core.selectors import LabelSelector

IGNORED_LABELS = frozenset(
    {
        "pod-template-hash",
        "controller-revision-hash",
        "pod-template-generation",
        "controller-uid",
        "helm.sh/chart",
        "app.kubernetes.io/version",
        "rollouts-pod-template-hash",
        "skaffold.dev/run-id",
    }
)
IGNORED_PREFIXES = (
    "topology.kubernetes.io/",
    "batch.kubernetes.io/",
    "statefulset.kubernetes.io/",
    "apps.kubernetes.io/",
)
CRONJOB_IGNORED_LABELS = frozenset({"job-name"})
NAME_SUFFIX = "-netwatch"
DENSE_MIN_PORTS = 3
DENSE_RATIO = 0.5

PortKey = tuple[Protocol, int | str]
"""A merged port: protocol and number or container-port name."""


def stable_labels(labels: Mapping[str, str], kind: WorkloadKind) -> dict[str, str]:
    """The labels of `labels` that identify a workload across rollouts (module doc)."""
    out = {}
    for key, value in labels.items():
        if key in IGNORED_LABELS or key.startswith(IGNORED_PREFIXES):
            continue
        if kind is WorkloadKind.CRON_JOB and key in CRONJOB_IGNORED_LABELS:
            continue
        out[key] = value
    return out


def selector_of(labels: Mapping[str, str]) -> LabelSelector:
    return LabelSelector(tuple(sorted(labels.items())))


def and_selectors(a: LabelSelector, b: LabelSelector) -> LabelSelector:
    """A selector matching what both match (labels and expressions are AND-ed, §3.4)."""
    labels = dict(a.match_labels)
    labels.update(b.match_labels)  # a pod matching both has equal values for shared keys
    exprs = list(a.match_expressions)
    exprs += [e for e in b.match_expressions if e not in exprs]
    return LabelSelector(tuple(sorted(labels.items())), tuple(exprs))


def workload_peer(
    selector: LabelSelector, *, peer_namespace: NamespaceName, policy_namespace: NamespaceName
) -> Peer:
    """§3.4: podSelector alone means the policy's namespace; else AND a namespace name."""
    if peer_namespace == policy_namespace:
        return Peer(pod_selector=selector)
    return Peer(
        pod_selector=selector,
        namespace_selector=LabelSelector(((NAMESPACE_NAME_LABEL, peer_namespace),)),
    )


def workload_sort_key(w: Workload) -> tuple[str, str, str]:
    return (w.namespace, w.name, w.kind.value)


def merge_ports(ports: Iterable[PortKey]) -> tuple[PortSpec, ...]:
    """Sorted `ports` entries: per protocol (TCP, UDP, SCTP), numbers (dense runs as
    `endPort` ranges) before names."""
    by_proto: dict[Protocol, tuple[set[int], set[str]]] = {}
    for proto, port in ports:
        numbers, names = by_proto.setdefault(proto, (set(), set()))
        if isinstance(port, int):
            numbers.add(port)
        else:
            names.add(port)
    out: list[PortSpec] = []
    for proto in POLICY_PROTOCOLS:
        if proto not in by_proto:
            continue
        numbers, names = by_proto[proto]
        for lo, hi in dense_runs(sorted(numbers)):
            out.append(PortSpec(proto, lo, hi if hi > lo else None))
        out.extend(PortSpec(proto, name) for name in sorted(names))
    return tuple(out)


def dense_runs(numbers: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct numbers as (lo, hi) ranges: greedy, longest dense run first."""
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(numbers):
        lo = numbers[i]
        best = i
        for j in range(i + DENSE_MIN_PORTS - 1, len(numbers)):
            count = j - i + 1
            if count >= DENSE_RATIO * (numbers[j] - lo + 1):
                best = j
        runs.append((lo, numbers[best]))
        i = best + 1
    return runs


def policy_names(workloads: Iterable[Workload]) -> dict[Workload, str]:
    """`<workload>-netwatch`; same-named workloads of different kinds add the kind."""
    workloads = list(workloads)
    count: dict[tuple[str, str], int] = {}
    for w in workloads:
        count[(w.namespace, w.name)] = count.get((w.namespace, w.name), 0) + 1
    return {
        w: (
            f"{w.name}{NAME_SUFFIX}"
            if count[(w.namespace, w.name)] == 1
            else f"{w.name}-{w.kind.value.lower()}{NAME_SUFFIX}"
        )
        for w in workloads
    }


def unique_name(base: str, workload: Workload, taken: set[str]) -> str:
    """`base`, or `base-2`, `base-3`, … when `namespace/base` is in `taken` (then taken)."""
    name, n = base, 1
    while f"{workload.namespace}/{name}" in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(f"{workload.namespace}/{name}")
    return name


def aggregate_sort_key(agg: Aggregate) -> tuple[int, int, int]:
    if not agg.blocks:
        return (0, 0, 0)
    b = agg.blocks[0].cidr
    return (b.version, int(b.network_address), b.prefixlen)


@dataclass(frozen=True, slots=True)
class Evidence:
    """Connections behind a rule or policy, and when they were first and last seen."""

    connections: int = 0
    first_seen: float | None = None
    last_seen: float | None = None

    def merge(self, other: Evidence) -> Evidence:
        return Evidence(
            self.connections + other.connections,
            _pick(min, self.first_seen, other.first_seen),
            _pick(max, self.last_seen, other.last_seen),
        )


class Tally:
    """A mutable `Evidence` to accumulate observations into."""

    __slots__ = ("connections", "first_seen", "last_seen")

    def __init__(self) -> None:
        self.connections = 0
        self.first_seen = math.inf
        self.last_seen = -math.inf

    def add(self, obs: Observation) -> None:
        self.connections += obs.count
        self.first_seen = min(self.first_seen, obs.first_seen)
        self.last_seen = max(self.last_seen, obs.last_seen)

    def merge(self, other: Tally) -> None:
        self.connections += other.connections
        self.first_seen = min(self.first_seen, other.first_seen)
        self.last_seen = max(self.last_seen, other.last_seen)

    @property
    def evidence(self) -> Evidence:
        if not self.connections:
            return Evidence()
        return Evidence(self.connections, self.first_seen, self.last_seen)


def _pick(fn: Callable[[float, float], float], a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return fn(a, b)
