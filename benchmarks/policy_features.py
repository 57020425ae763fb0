"""Which DESIGN §3 features a set of NetworkPolicy objects uses, counted per policy.

Why separate from the templates: the README's feature table must describe the policies
as written to the file, not as the templates intended, so this reads the YAML shapes
back (an ipBlock "covers pod IPs" only if its CIDR minus excepts meets 10.244.0.0/16).
"""

from __future__ import annotations

import ipaddress
from collections import Counter

from synthetic_inventory import POD_NET, Obj


def policy_features(policies: list[Obj]) -> Counter[str]:
    """How many policies use each DESIGN §3 feature, read back from the objects.

    Counted from the YAML shapes rather than from template names, so the README's
    feature table stays true if templates change.
    """
    out: Counter[str] = Counter()
    for pol in policies:
        spec = pol["spec"]
        seen: set[str] = set()
        types = spec.get("policyTypes")
        if types is None:
            seen.add("policyTypes omitted")
        for direction, peers_key in (("ingress", "from"), ("egress", "to")):
            rules = spec.get(direction)
            declared = direction.capitalize() in (types or [])
            if declared and not rules:
                seen.add(f"{direction}: isolates, no rule (deny)")
            if rules and len(rules) > 1:
                seen.add("several rules in one direction")
            for rule in rules or []:
                peers = rule.get(peers_key) or []
                ports = rule.get("ports") or []
                if not peers:
                    seen.add("rule without peers (all sources/destinations)")
                if not ports:
                    seen.add("rule without ports (all ports)")
                if len(ports) > 1:
                    seen.add("several ports in one rule")
                for peer in peers:
                    _peer_features(peer, seen)
                for port in ports:
                    _port_features(port, seen)
        for sel in _selectors(spec):
            for expr in sel.get("matchExpressions", []):
                seen.add(f"matchExpressions {expr['operator']}")
        out.update(seen)
    return out


def _peer_features(peer: Obj, seen: set[str]) -> None:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        net = ipaddress.ip_network(block["cidr"], strict=False)
        seen.add("ipBlock peer")
        if block.get("except"):
            seen.add("ipBlock with except")
        excepts = [ipaddress.ip_network(e, strict=False) for e in block.get("except", [])]
        hidden = any(isinstance(e, ipaddress.IPv4Network) and POD_NET.subnet_of(e) for e in excepts)
        if net.overlaps(POD_NET) and not hidden:
            seen.add("ipBlock covering pod IPs")
        if str(net) != block["cidr"]:
            seen.add("ipBlock CIDR with host bits")
    elif "namespaceSelector" in peer and "podSelector" in peer:
        seen.add("namespaceSelector AND podSelector peer")
    elif "namespaceSelector" in peer:
        seen.add("namespaceSelector-only peer")
    else:
        seen.add("podSelector-only peer")


def _port_features(port: Obj, seen: set[str]) -> None:
    if not port:
        seen.add("`ports: [{}]` (every TCP port)")
    if isinstance(port.get("port"), str):
        seen.add("named port")
    if "endPort" in port:
        seen.add("endPort range")
    if "protocol" not in port:
        seen.add("port without protocol (TCP)")
    if port.get("protocol") in ("UDP", "SCTP"):
        seen.add(f"{port['protocol']} port")


def _selectors(spec: Obj) -> list[Obj]:
    found = [spec.get("podSelector") or {}]
    for direction, key in (("ingress", "from"), ("egress", "to")):
        for rule in spec.get(direction) or []:
            for peer in rule.get(key) or []:
                found += [peer[k] for k in ("podSelector", "namespaceSelector") if peer.get(k)]
    return found
