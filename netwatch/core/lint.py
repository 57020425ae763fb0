"""Static NetworkPolicy findings over a cluster snapshot (`netwatch policy lint`).

Redundancy is semantic, not textual: a rule is redundant when removing it leaves the set
of allowed connections unchanged (see `coverage`). Findings are computed greedily from
the last policy/rule backwards and each redundant item is removed before the next is
judged, so that removing *all* reported redundant rules and policies together still
changes nothing — two identical rules yield one finding (the later one), not two.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from netwatch.core.bitset import Bits, iter_bits
from netwatch.core.coverage import EVERYTHING, Coverage, Scoped
from netwatch.core.engine import PolicyEngine, RuleRef
from netwatch.core.model import Direction, LoadProblem, Pod, Protocol
from netwatch.core.policy import NetworkPolicy, PolicyKey

DNS_PORT = 53


class FindingKind(enum.Enum):
    INVALID_OBJECT = "invalid-object"
    EMPTY_POLICY = "empty-policy"
    EMPTY_RULE = "empty-rule"
    VACUOUS_CONFIG = "vacuous-config"
    REDUNDANT_POLICY = "redundant-policy"
    REDUNDANT_RULE = "redundant-rule"
    DNS_EGRESS_BLOCKED = "dns-egress-blocked"
    UNPROTECTED_POD = "unprotected-pod"


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    message: str
    policy: PolicyKey | None = None
    direction: Direction | None = None
    rule: int | None = None
    pod: str | None = None
    contained_in: RuleRef | None = None
    contained_in_policy: PolicyKey | None = None
    problem: LoadProblem | None = None

    def sort_key(self) -> tuple[int, str, str, str, int, str]:
        order = list(FindingKind).index(self.kind)
        direction = self.direction.value if self.direction else ""
        rule = -1 if self.rule is None else self.rule
        return (order, self.policy or "", self.pod or "", direction, rule, self.message)


def lint(engine: PolicyEngine, *, problems: Sequence[LoadProblem] = ()) -> list[Finding]:
    """All static findings, sorted by kind, then policy, direction and rule."""
    linter = _Linter(engine)
    findings = [Finding(FindingKind.INVALID_OBJECT, p.message, problem=p) for p in problems]
    findings += linter.empty_and_vacuous()
    findings += linter.redundancy()
    findings += linter.dns()
    findings += linter.unprotected()
    return sorted(findings, key=Finding.sort_key)


class _Linter:
    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine
        self.cov = Coverage(engine)
        self.policies = [p for p in engine.cluster.policies if engine.policy_pods(p)]

    # ------------------------------------------------------------ simple checks

    def empty_and_vacuous(self) -> Iterable[Finding]:
        for policy in self.engine.cluster.policies:
            selected = self.engine.policy_pods(policy)
            if not selected:
                yield Finding(
                    FindingKind.EMPTY_POLICY,
                    f"podSelector {policy.pod_selector.describe()} selects no pod in "
                    f"namespace {policy.namespace}",
                    policy=policy.key,
                )
            for direction in Direction:
                rules = policy.rules(direction)
                if not policy.isolates(direction):
                    if rules:
                        yield Finding(
                            FindingKind.VACUOUS_CONFIG,
                            f"{len(rules)} {direction.value} rule(s) have no effect: "
                            f"policyTypes does not include {direction.policy_type}",
                            policy=policy.key,
                            direction=direction,
                        )
                    continue
                for n, rule in enumerate(rules):
                    scoped = Scoped(rule, policy.namespace)
                    if self.cov.admits_nothing(scoped):
                        peers = "; ".join(p.describe(policy.namespace) for p in rule.peers or ())
                        yield Finding(
                            FindingKind.EMPTY_RULE,
                            f"peers select no pod and no address ({peers}): the rule admits "
                            "nothing",
                            policy=policy.key,
                            direction=direction,
                            rule=n,
                        )
                    elif selected and not self._admits_any_port(scoped, direction, selected):
                        side = "selected" if direction is Direction.INGRESS else "peer"
                        yield Finding(
                            FindingKind.EMPTY_RULE,
                            "no port of this rule can match: its named ports are not "
                            f"declared by any {side} pod",
                            policy=policy.key,
                            direction=direction,
                            rule=n,
                        )
                    elif rule.all_peers and rule.all_ports:
                        yield Finding(
                            FindingKind.VACUOUS_CONFIG,
                            f"rule admits every peer on every port: the policy isolates its "
                            f"pods for {direction.value} yet restricts nothing",
                            policy=policy.key,
                            direction=direction,
                            rule=n,
                        )

    def _admits_any_port(self, scoped: Scoped, direction: Direction, selected: Bits) -> bool:
        rule = scoped.rule
        if rule.all_ports or any(not isinstance(s.port, str) for s in rule.ports):
            return True
        if direction is Direction.INGRESS:
            pods = [self.engine.pods[i] for i in iter_bits(selected)]
        else:
            pods = [
                self.engine.pods[i]
                for i in iter_bits(self.engine.rule_peer_pods(rule, scoped.namespace))
            ]
        return any(pod.named_ports(str(s.port), s.protocol) for s in rule.ports for pod in pods)

    # ------------------------------------------------------------ redundancy

    def _groups(self, selected: Bits, direction: Direction, active: set[PolicyKey]) -> list[Pod]:
        """One representative pod per class of pods that no rule can tell apart."""
        reps: dict[tuple[object, ...], Pod] = {}
        for i in iter_bits(selected):
            pod = self.engine.pods[i]
            pols = tuple(
                p.key for p in self.engine.policies_selecting(i, direction) if p.key in active
            )
            ports = pod.container_ports if direction is Direction.INGRESS else ()
            reps.setdefault((pols, ports), pod)
        return list(reps.values())

    def _others(
        self,
        pod: Pod,
        direction: Direction,
        active_rules: set[RuleRef],
        exclude: RuleRef | PolicyKey,
    ) -> list[tuple[RuleRef, Scoped]]:
        out = []
        i = self.engine.index[pod.key]
        for policy in self.engine.policies_selecting(i, direction):
            if policy.key == exclude:
                continue
            for n, rule in enumerate(policy.rules(direction)):
                ref = RuleRef(policy.key, direction, n)
                if ref != exclude and ref in active_rules:
                    out.append((ref, Scoped(rule, policy.namespace)))
        return out

    def redundancy(self) -> list[Finding]:
        findings: list[Finding] = []
        for direction in Direction:
            isolating = [p for p in self.policies if p.isolates(direction)]
            active_rules = {
                RuleRef(p.key, direction, n)
                for p in isolating
                for n, r in enumerate(p.rules(direction))
                if not self.cov.admits_nothing(Scoped(r, p.namespace))
            }
            active_pols = {p.key for p in isolating}
            for policy in reversed(isolating):
                verdict = self._policy_redundant(policy, direction, active_rules, active_pols)
                if verdict is None:
                    continue
                active_pols.discard(policy.key)
                active_rules -= {r for r in active_rules if r.policy == policy.key}
                findings.append(verdict)
            for policy in reversed(isolating):
                if policy.key not in active_pols:
                    continue
                for n in reversed(range(len(policy.rules(direction)))):
                    ref = RuleRef(policy.key, direction, n)
                    if ref not in active_rules:
                        continue
                    finding = self._rule_redundant(policy, ref, active_rules, active_pols)
                    if finding is not None:
                        active_rules.discard(ref)
                        findings.append(finding)
        return findings

    def _rule_redundant(
        self,
        policy: NetworkPolicy,
        ref: RuleRef,
        active_rules: set[RuleRef],
        active_pols: set[PolicyKey],
    ) -> Finding | None:
        direction = ref.direction
        target = Scoped(policy.rules(direction)[ref.rule], policy.namespace)
        reps = self._groups(self.engine.policy_pods(policy), direction, active_pols)
        candidates: set[RuleRef] | None = None
        for pod in reps:
            others = self._others(pod, direction, active_rules, ref)
            if not self.cov.covered(
                target, [s for _, s in others], direction=direction, subject=pod
            ):
                return None
            alone = {
                r
                for r, s in others
                if self.cov.covered(target, [s], direction=direction, subject=pod)
            }
            candidates = alone if candidates is None else candidates & alone
        container = min(candidates) if candidates else None
        where = (
            f" (contained in {container})" if container else " (covered by other rules together)"
        )
        return Finding(
            FindingKind.REDUNDANT_RULE,
            f"removing this rule changes no allowed connection{where}",
            policy=policy.key,
            direction=direction,
            rule=ref.rule,
            contained_in=container,
        )

    def _policy_redundant(
        self,
        policy: NetworkPolicy,
        direction: Direction,
        active_rules: set[RuleRef],
        active_pols: set[PolicyKey],
    ) -> Finding | None:
        own = [
            Scoped(r, policy.namespace)
            for n, r in enumerate(policy.rules(direction))
            if RuleRef(policy.key, direction, n) in active_rules
        ]
        containers: set[PolicyKey] | None = None
        for pod in self._groups(self.engine.policy_pods(policy), direction, active_pols):
            others = self._others(pod, direction, active_rules, policy.key)
            other_pols = {
                p.key
                for p in self.engine.policies_selecting(self.engine.index[pod.key], direction)
                if p.key in active_pols and p.key != policy.key
            }
            if not other_pols:
                # Without this policy the pod is not isolated: only a no-op if it allowed all.
                if not self.cov.covered(EVERYTHING, own, direction=direction, subject=pod):
                    return None
                containers = set()
                continue
            rules = [s for _, s in others]
            if not all(self.cov.covered(t, rules, direction=direction, subject=pod) for t in own):
                return None
            alone = {
                k
                for k in other_pols
                if all(
                    self.cov.covered(
                        t,
                        [s for r, s in others if r.policy == k],
                        direction=direction,
                        subject=pod,
                    )
                    for t in own
                )
            }
            containers = alone if containers is None else containers & alone
        container = min(containers) if containers else None
        where = f" (contained in {container})" if container else ""
        return Finding(
            FindingKind.REDUNDANT_POLICY,
            f"removing this policy changes no allowed {direction.value} connection{where}",
            policy=policy.key,
            direction=direction,
            contained_in_policy=container,
        )

    # ------------------------------------------------------------ DNS and exposure

    def _dns_pods(self) -> list[int]:
        engine = self.engine
        found = [
            i for i, p in enumerate(engine.pods) if p.labels.get("k8s-app") == "kube-dns" and p.ips
        ]
        if found:
            return found
        for svc in engine.cluster.services:
            dns_service = svc.namespace == "kube-system" and svc.name in ("kube-dns", "coredns")
            if dns_service and svc.selector:
                sel = svc.selector
                return [
                    i
                    for i, p in enumerate(engine.pods)
                    if p.namespace == svc.namespace
                    and p.ips
                    and all(p.labels.get(k) == v for k, v in sel.items())
                ]
        return []

    def dns(self) -> list[Finding]:
        engine = self.engine
        dns_pods = self._dns_pods()
        blocked: dict[tuple[PolicyKey, ...], list[Pod]] = defaultdict(list)
        for i, pod in enumerate(engine.pods):
            if not pod.ips:
                continue
            isolators = engine.policies_selecting(i, Direction.EGRESS)
            if not isolators:
                continue
            client = engine.target_for_pod(pod)
            if dns_pods:
                ok = any(
                    engine.evaluate(
                        client, engine.target_for_pod(engine.pods[j]), DNS_PORT, Protocol.UDP
                    ).egress.allowed
                    for j in dns_pods
                )
            else:
                ok = any(
                    engine.rule_admits_port(r, DNS_PORT, Protocol.UDP, None)
                    for p in isolators
                    for r in p.egress
                )
            if not ok:
                blocked[tuple(p.key for p in isolators)].append(pod)
        findings = []
        target = "the cluster DNS pods" if dns_pods else "any destination"
        for keys, pods in sorted(blocked.items()):
            for pod in pods:
                findings.append(
                    Finding(
                        FindingKind.DNS_EGRESS_BLOCKED,
                        f"pod is egress-isolated by {', '.join(keys)} and no rule allows "
                        f"UDP/53 to {target}: name resolution will fail",
                        policy=keys[0],
                        direction=Direction.EGRESS,
                        pod=pod.key,
                    )
                )
        return findings

    def unprotected(self) -> list[Finding]:
        findings = []
        for i, pod in enumerate(self.engine.pods):
            if not pod.ips:
                continue
            for direction in Direction:
                if not self.engine.policies_selecting(i, direction):
                    findings.append(
                        Finding(
                            FindingKind.UNPROTECTED_POD,
                            f"no NetworkPolicy selects this pod for {direction.value}: "
                            "all traffic is allowed",
                            direction=direction,
                            pod=pod.key,
                        )
                    )
        return findings
