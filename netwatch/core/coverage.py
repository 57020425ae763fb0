"""Exact containment of what rules admit, for redundancy analysis.

For one *subject* pod (the pod a policy selects: the server for ingress, the client for
egress) a rule admits a set of (peer, protocol, port) triples. Peers are the cluster's
selectable pods (a bitset) plus every address that is not a pod IP (an `ipset`). The
port space is cut into *atoms* — intervals on which every rule involved behaves the same
(numeric ranges, and singleton atoms at every number a named port resolves to) — so
"A is a subset of B1 | ... | Bn" becomes, per atom, one bitset test and one interval difference.

This is semantics over the snapshot's pods, not over selector text: two rules are
"contained" if no pod or address in this cluster tells them apart (DESIGN §3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from netwatch.core import ipset
from netwatch.core.bitset import Bits
from netwatch.core.engine import PolicyEngine, parse_ip
from netwatch.core.model import POLICY_PROTOCOLS, Direction, NamespaceName, Pod, Protocol
from netwatch.core.policy import PortSpec, Rule

MAX_PORT = 65535


@dataclass(frozen=True, slots=True)
class Scoped:
    """A rule with the namespace its selectors are relative to."""

    rule: Rule
    namespace: NamespaceName


EVERYTHING = Scoped(Rule(), NamespaceName(""))
"""All peers on all ports: what an un-isolated pod allows."""


@dataclass(frozen=True, slots=True)
class Atom:
    protocol: Protocol
    lo: int
    hi: int


class Coverage:
    """Containment questions about rules, answered against one engine's pod index."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine
        points = set()
        for pod in engine.pods:
            for addr in pod.ips:
                ip = _parse(addr)
                if ip is not None:
                    points.add(ip)
        self.pod_points: list[int] = sorted(points)
        self._ip_cache: dict[Rule, ipset.IPSet] = {}
        self._named_numbers: dict[tuple[str, Protocol], set[int]] = {}
        for pod in engine.pods:
            for cp in pod.container_ports:
                if cp.name:
                    self._named_numbers.setdefault((cp.name, cp.protocol), set()).add(cp.port)

    # ---------------------------------------------------------------- peers

    def rule_ips(self, rule: Rule) -> ipset.IPSet:
        """Addresses the rule admits as IP peers (§3.3: no peers listed → every address)."""
        cached = self._ip_cache.get(rule)
        if cached is None:
            if rule.peers is None:
                cached = ipset.EVERY_IP
            else:
                cached = ipset.union(
                    *(ipset.from_block(p.ip_block) for p in rule.peers if p.ip_block)
                )
            self._ip_cache[rule] = cached
        return cached

    # ---------------------------------------------------------------- atoms

    def atoms(self, rules: Sequence[Scoped], *, direction: Direction, subject: Pod) -> list[Atom]:
        cuts: dict[Protocol, set[int]] = {p: {1, MAX_PORT + 1} for p in POLICY_PROTOCOLS}
        for scoped in rules:
            for spec in scoped.rule.ports:
                for n in self._spec_numbers(spec, direction=direction, subject=subject):
                    cuts[spec.protocol].update((n, n + 1))
                if isinstance(spec.port, int):
                    cuts[spec.protocol].add((spec.end_port or spec.port) + 1)
        out: list[Atom] = []
        for proto in POLICY_PROTOCOLS:
            edges = sorted(c for c in cuts[proto] if 1 <= c <= MAX_PORT + 1)
            out.extend(Atom(proto, a, b - 1) for a, b in pairwise(edges))
        return out

    def _spec_numbers(self, spec: PortSpec, *, direction: Direction, subject: Pod) -> list[int]:
        if isinstance(spec.port, int):
            return [spec.port]
        if isinstance(spec.port, str):
            if direction is Direction.INGRESS:
                return list(subject.named_ports(spec.port, spec.protocol))
            return sorted(self._named_numbers.get((spec.port, spec.protocol), ()))
        return []

    # ---------------------------------------------------------------- admission

    def admitted(
        self, scoped: Scoped, atom: Atom, *, direction: Direction, subject: Pod
    ) -> tuple[Bits, ipset.IPSet]:
        """(pods, addresses) the rule admits on `atom` for `subject`."""
        rule, engine = scoped.rule, self.engine
        numeric = rule.all_ports or any(
            isinstance(s.port, int | None) and engine.port_matches(s, atom.lo, atom.protocol, None)
            for s in rule.ports
        )
        peers = engine.rule_peer_pods(rule, scoped.namespace)
        if numeric:
            return peers, self.rule_ips(rule)
        named = [s for s in rule.ports if isinstance(s.port, str) and s.protocol is atom.protocol]
        if not named:
            return 0, ipset.EMPTY
        if direction is Direction.INGRESS:
            # §3.5: resolved on the destination, which for ingress is the subject pod.
            # Any source may be an address: the port is the subject's, not the peer's.
            if any(engine.port_matches(s, atom.lo, atom.protocol, subject) for s in named):
                return peers, self.rule_ips(rule)
            return 0, ipset.EMPTY
        bits = 0
        for s in named:
            bits |= engine.named_port_pods(str(s.port), atom.protocol, atom.lo)
        # §3.5: named ports never match an IP destination.
        return peers & bits, ipset.EMPTY

    def covered(
        self,
        target: Scoped,
        others: Sequence[Scoped],
        *,
        direction: Direction,
        subject: Pod,
    ) -> bool:
        """Whether everything `target` admits for `subject` is admitted by some of `others`.

        The subject's traffic to itself (always allowed, §3.7) is deliberately *not* left
        out: callers answer for a whole class of pods through one representative, and
        only a pod-independent question is valid for all of them.
        """
        for atom in self.atoms([target, *others], direction=direction, subject=subject):
            t_pods, t_ips = self.admitted(target, atom, direction=direction, subject=subject)
            if not t_pods and not t_ips:
                continue
            o_pods = 0
            o_ips: list[ipset.IPSet] = []
            for other in others:
                p, i = self.admitted(other, atom, direction=direction, subject=subject)
                o_pods |= p
                if i:
                    o_ips.append(i)
            if t_pods & ~o_pods:
                return False
            if t_ips:
                missing = ipset.difference(t_ips, ipset.union(*o_ips))
                # Pod IPs are judged as pods above, not as addresses.
                if missing and not ipset.only_points(missing, self.pod_points):
                    return False
        return True

    def admits_nothing(self, scoped: Scoped) -> bool:
        """Whether the rule's peers select no pod and no address at all."""
        rule = scoped.rule
        if rule.peers is None:
            return False
        pods = self.engine.rule_peer_pods(rule, scoped.namespace)
        return not pods and not self.rule_ips(rule)


def _parse(addr: str) -> int | None:
    ip = parse_ip(addr)
    return None if ip is None else ipset.ip_key(ip)
