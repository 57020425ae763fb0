"""Checking a policy set against observed traffic: what it denies, and what else it admits.

Shared by `suggest` (which refuses to print a set that denies a connection it was meant
to keep) and `whatif` (which reports what a proposed set would deny):

- `with_policies` builds the cluster as it would be with another policy set;
- `check_policies` re-attributes every observation (`netwatch.core.observed`) the set
  must allow — resolved endpoints, a NetworkPolicy protocol, not denied today unless
  denied connections are included on purpose — with a fresh engine over that cluster;
- `admitted_pairs` counts what a set admits beyond what was observed.

**What the admitted-pairs number means.** For every (port, protocol) observed with a pod
as server (the port as that pod sees it), the engine's matrix for that port is computed
and every ordered pair of distinct pods it allows is counted when one of its pods is
*covered* (selected by a suggested policy) and that pod pair was never observed on that
port: `pod_pairs`. `workload_pairs` counts the same at workload granularity: (client
workload, server workload, port, protocol) allowed for some pod pair but never observed.
For policies added next to existing ones (`suggest --mode add`) only pairs the existing
policies denied are counted: what the additions newly admit.
Ports nobody used are not counted (the suggested rules only name observed ports, up to
`endPort` ranges); external peers are measured separately, as the extra address space
of each aggregated ipBlock. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from netwatch.core.attribution import Attributed, Attributor, VerdictKind
from netwatch.core.bitset import iter_bits
from netwatch.core.cluster import Cluster
from netwatch.core.engine import Matrix, PolicyEngine
from netwatch.core.flow import Connection
from netwatch.core.identity import IdentityKind
from netwatch.core.model import POLICY_PROTOCOLS, Pod, Protocol
from netwatch.core.observed import Observation, Observations, labels_of, requires_allow
from netwatch.core.policy import NetworkPolicy

Judge = Callable[[Connection], Attributed]
"""Attribution against another policy set (an `Attributor.attribute` over it)."""


def with_policies(cluster: Cluster, policies: Iterable[NetworkPolicy]) -> Cluster:
    """`cluster` with exactly `policies` (same-name policies: the later one wins, §3.8)."""
    return Cluster.build(
        namespaces=cluster.namespaces.values(),
        pods=cluster.pods,
        policies=policies,
        services=cluster.services,
        endpoint_slices=cluster.endpoint_slices,
        nodes=cluster.nodes,
        workload_objects=cluster.workload_objects,
    )


@dataclass(frozen=True, slots=True)
class Denial:
    """Observed connections a policy set must allow but does not."""

    observed: Observation
    """As attributed under the policies in force when they were seen."""
    proposed: Attributed
    """The sample as attributed under the policy set being checked."""


def denials(
    observed: Iterable[Observation], *, judge: Judge, include_denied: bool
) -> tuple[int, list[Denial]]:
    """(connections checked, denials) among the observations the set must allow.

    One judgement per observation: its records share identities, addresses, port and
    protocol, so they share the verdict too.
    """
    checked = 0
    found: list[Denial] = []
    for obs in observed:
        if not requires_allow(obs.sample, include_denied=include_denied):
            continue
        checked += obs.count
        again = judge(obs.sample.connection)
        if again.verdict is VerdictKind.DENIED:
            found.append(Denial(obs, again))
    return checked, found


@dataclass(frozen=True)
class Verification:
    """The verdict on a policy set: what it denies of what it must allow, what it admits."""

    checked: int
    """Connections the set must allow (see `observed.requires_allow`)."""
    denials: tuple[Denial, ...]
    admitted: AdmittedPairs | None = None

    @property
    def ok(self) -> bool:
        return not self.denials

    @property
    def denied_connections(self) -> int:
        return sum(d.observed.count for d in self.denials)


def check_policies(
    observed: Observations,
    *,
    attributor: Attributor,
    policies: Sequence[NetworkPolicy],
    replace: bool,
    include_denied: bool,
    measure: bool = False,
    pod_cidrs: Iterable[str] = (),
) -> Verification:
    """Judge `observed` (attributed by `attributor`) against `policies` — instead of the
    cluster's policies with `replace`, else next to them — with a fresh engine.

    With `measure`, also count what the set admits beyond `observed` (module doc), over
    the pods `policies` select.
    """
    base = attributor.cluster
    cluster = with_policies(base, policies if replace else (*base.policies, *policies))
    engine = PolicyEngine(cluster, ipblock_pod_ips=attributor.engine.ipblock_pod_ips)
    judge = Attributor(
        index=attributor.index, engine=engine, cluster=cluster, pod_cidrs=pod_cidrs
    ).attribute
    checked, found = denials(observed, judge=judge, include_denied=include_denied)
    admitted = None
    if measure:
        selected = 0
        for policy in policies:
            selected |= engine.policy_pods(policy)
        covered = [engine.pods[i].key for i in iter_bits(selected)]
        used = [
            o.sample for o in observed if requires_allow(o.sample, include_denied=include_denied)
        ]
        baseline = None if replace else attributor.engine
        admitted = admitted_pairs(engine, used, covered=covered, baseline=baseline)
    return Verification(checked, tuple(found), admitted)


@dataclass(frozen=True, slots=True)
class AdmittedPairs:
    """Admitted-but-unobserved pairs on observed ports (see the module doc)."""

    pod_pairs: int
    workload_pairs: int
    ports: tuple[tuple[Protocol, int], ...]
    """The (protocol, port) pairs measured."""
    covered_pods: int
    """Pods selected by the policies measured."""


def admitted_pairs(
    engine: PolicyEngine,
    observed: Sequence[Attributed],
    *,
    covered: Iterable[str],
    baseline: PolicyEngine | None = None,
) -> AdmittedPairs:
    """Count pairs `engine` allows that were never observed (see the module doc).

    `observed` are the connections the set was built from; `covered` the keys of the
    pods its policies select. With `baseline` (policies added next to existing ones),
    only pairs the baseline denied count: what the additions newly admit.
    """
    cluster = engine.cluster
    covered_keys = set(covered)
    seen_pods: dict[tuple[Protocol, int], set[tuple[str, str]]] = {}
    seen_workloads: dict[tuple[Protocol, int], set[tuple[str, str]]] = {}
    for a in observed:
        if a.server.kind is not IdentityKind.POD or a.protocol not in POLICY_PROTOCOLS:
            continue
        key = (a.protocol, a.port)
        seen_pods.setdefault(key, set())
        seen_workloads.setdefault(key, set())
        if a.client.kind is IdentityKind.POD:
            seen_pods[key].add((a.client.key, a.server.key))
            seen_workloads[key].add(labels_of(a))
    workload_of: dict[str, str] = {}
    pod_pairs = workload_pairs = 0
    for proto, port in sorted(seen_pods, key=lambda k: (k[0].value, k[1])):
        matrix = engine.matrix(port, proto)
        pods = matrix.pods
        before = _lookup(baseline.matrix(port, proto)) if baseline is not None else None
        for p in pods:
            if p.key not in workload_of:
                workload_of[p.key] = _workload_label(cluster, p)
        mine = [i for i, p in enumerate(pods) if p.key in covered_keys]
        mine_set = set(mine)
        pairs: set[tuple[int, int]] = set()
        for i in mine:  # rows: covered clients to anyone
            row = matrix.rows[i]
            pairs.update((i, j) for j in _ones(row) if j != i)
        for i, row in enumerate(matrix.rows):  # columns: anyone to covered servers
            if i not in mine_set:
                pairs.update((i, j) for j in mine if row[j] == "1" and j != i)
        seen_p = seen_pods[(proto, port)]
        seen_w = seen_workloads[(proto, port)]
        workloads: set[tuple[str, str]] = set()
        for i, j in pairs:
            src, dst = pods[i], pods[j]
            if (src.key, dst.key) in seen_p or (before is not None and before(src, dst)):
                continue
            pod_pairs += 1
            wl = (workload_of[src.key], workload_of[dst.key])
            if wl not in seen_w:
                workloads.add(wl)
        workload_pairs += len(workloads)
    return AdmittedPairs(
        pod_pairs=pod_pairs,
        workload_pairs=workload_pairs,
        ports=tuple(sorted(seen_pods, key=lambda k: (k[0].value, k[1]))),
        covered_pods=len(covered_keys),
    )


def _lookup(matrix: Matrix) -> Callable[[Pod, Pod], bool]:
    index = {p.key: i for i, p in enumerate(matrix.pods)}

    def allowed(src: Pod, dst: Pod) -> bool:
        i, j = index.get(src.key), index.get(dst.key)
        return i is not None and j is not None and matrix.allowed(i, j)

    return allowed


def _ones(row: str) -> Iterable[int]:
    j = row.find("1")
    while j != -1:
        yield j
        j = row.find("1", j + 1)


def _workload_label(cluster: Cluster, pod: Pod) -> str:
    return cluster.workload_of(pod).key
