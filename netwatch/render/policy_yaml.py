"""Core NetworkPolicy values back to networking.k8s.io/v1 manifests (dicts and YAML).

The inverse of `netwatch.k8s.netpol`: with `netwatch.k8s.convert`, the only place that
knows the NetworkPolicy object shape, here on output. What it writes loads back through
the snapshot loader into an equal `NetworkPolicy` (tests hold it to that) and is what
`kubectl apply` takes:

- `policyTypes` is always written (Ingress before Egress), so a direction without rules
  is unambiguous deny-all and egress isolation never depends on API defaulting;
- every port entry names its protocol; selectors write `matchLabels` sorted and
  `matchExpressions` with sorted values; `{}` is written as `{}`;
- a rule admitting every peer (`peers is None`) omits `from`/`to`; one admitting every
  port omits `ports`; a direction without rules omits its list.

Key order is fixed (apiVersion, kind, metadata, spec), so output is byte-stable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import IO, Any

import yaml

from netwatch.core.model import Direction
from netwatch.core.policy import IPBlock, NetworkPolicy, Peer, PortSpec, Rule
from netwatch.core.selectors import LabelSelector

API_VERSION = "networking.k8s.io/v1"


def selector_to_dict(selector: LabelSelector) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if selector.match_labels:
        out["matchLabels"] = dict(sorted(selector.match_labels))
    if selector.match_expressions:
        exprs = []
        for req in selector.match_expressions:
            entry: dict[str, Any] = {"key": req.key, "operator": req.operator.value}
            if req.values:
                entry["values"] = sorted(req.values)
            exprs.append(entry)
        out["matchExpressions"] = exprs
    return out


def ip_block_to_dict(block: IPBlock) -> dict[str, Any]:
    out: dict[str, Any] = {"cidr": str(block.cidr)}
    if block.excepts:
        out["except"] = [str(e) for e in block.excepts]
    return out


def peer_to_dict(peer: Peer) -> dict[str, Any]:
    if peer.ip_block is not None:
        return {"ipBlock": ip_block_to_dict(peer.ip_block)}
    out: dict[str, Any] = {}
    if peer.pod_selector is not None:
        out["podSelector"] = selector_to_dict(peer.pod_selector)
    if peer.namespace_selector is not None:
        out["namespaceSelector"] = selector_to_dict(peer.namespace_selector)
    return out


def port_to_dict(spec: PortSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"protocol": spec.protocol.value}
    if spec.port is not None:
        out["port"] = spec.port
    if spec.end_port is not None:
        out["endPort"] = spec.end_port
    return out


def rule_to_dict(rule: Rule, direction: Direction) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rule.peers is not None:
        out["from" if direction is Direction.INGRESS else "to"] = [
            peer_to_dict(p) for p in rule.peers
        ]
    if rule.ports:
        out["ports"] = [port_to_dict(s) for s in rule.ports]
    return out


def policy_to_manifest(
    policy: NetworkPolicy,
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The API object for `policy`; `labels`/`annotations` are written as given."""
    metadata: dict[str, Any] = {"name": policy.name, "namespace": policy.namespace}
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    spec: dict[str, Any] = {
        "podSelector": selector_to_dict(policy.pod_selector),
        "policyTypes": [d.policy_type for d in Direction if d in policy.policy_types],
    }
    for direction in Direction:
        rules = policy.rules(direction)
        if rules:
            spec[direction.value] = [rule_to_dict(r, direction) for r in rules]
    return {"apiVersion": API_VERSION, "kind": "NetworkPolicy", "metadata": metadata, "spec": spec}


class _Dumper(yaml.SafeDumper):
    """kubectl-style list indentation; long annotation values are not folded."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def dump_manifests(manifests: Iterable[Mapping[str, Any]], out: IO[str]) -> None:
    """Multi-document YAML (`---` between documents), one document per manifest."""
    yaml.dump_all(
        [dict(m) for m in manifests],
        out,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        explicit_start=True,
        width=1 << 16,
        allow_unicode=True,
    )


def manifest_text(manifest: Mapping[str, Any]) -> str:
    """One manifest as a YAML document (for a file of its own)."""
    return yaml.dump(
        dict(manifest),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        width=1 << 16,
        allow_unicode=True,
    )
