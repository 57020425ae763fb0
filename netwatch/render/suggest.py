"""Rendering of `netwatch suggest`: annotated manifests, the JSON report and tables.

Evidence annotations (metadata.annotations of every suggested policy; values are
strings, times RFC 3339 in UTC to the second):

- `netwatch.io/connections` — connection records behind the policy's rules;
- `netwatch.io/first-seen`, `netwatch.io/last-seen` — over those records (a policy
  without rules: when its workload was first and last seen at all);
- `netwatch.io/stability` — `learning`, or `stable` once the newest rule's first-seen
  lies a quiet period (`--quiet-period`) before the end of the observed window;
- `netwatch.io/rule-evidence` — per-rule evidence (the API has no per-rule annotations):
  compact JSON, a list in rule order, ingress rules first, each
  `{"direction", "rule", "peers", "connections", "first_seen", "last_seen"}` plus, for
  ipBlock rules, `"observed_addresses"` and `"admitted_addresses"`, and for rules a
  reviewer should narrow (`suggest --prometheus`: a whole external range, since metrics
  carry no addresses) `"review"`, the reason. `rule` is the index in the policy's
  `ingress`/`egress` list.

Every suggested policy also carries the label `netwatch.io/suggested: "true"`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from netwatch.core.cluster import NAMESPACE_NAME_LABEL
from netwatch.core.flow import Connection
from netwatch.core.model import Direction
from netwatch.core.observed import FlowGroup
from netwatch.core.policy import Peer, Rule
from netwatch.core.rulebits import Evidence
from netwatch.core.suggest import RuleEvidence, SuggestedPolicy, Suggestion
from netwatch.core.verify import Verification
from netwatch.render.policy_yaml import policy_to_manifest

ANNOTATION_PREFIX = "netwatch.io/"
SUGGESTED_LABEL = {"netwatch.io/suggested": "true"}


def rfc3339(epoch: float | None) -> str | None:
    if epoch is None or not math.isfinite(epoch):
        return None
    return datetime.fromtimestamp(math.floor(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rule_evidence(r: RuleEvidence) -> dict[str, Any]:
    out: dict[str, Any] = {
        "direction": r.direction.value,
        "rule": r.rule,
        "peers": list(r.peers),
        "connections": r.evidence.connections,
        "first_seen": rfc3339(r.evidence.first_seen),
        "last_seen": rfc3339(r.evidence.last_seen),
    }
    if r.addresses is not None:
        out["observed_addresses"] = r.addresses.observed
        out["admitted_addresses"] = r.addresses.admitted
    if r.review is not None:
        out["review"] = r.review
    return out


def evidence_annotations(s: SuggestedPolicy) -> dict[str, str]:
    out = {f"{ANNOTATION_PREFIX}connections": str(s.evidence.connections)}
    for key, value in (("first-seen", s.evidence.first_seen), ("last-seen", s.evidence.last_seen)):
        text = rfc3339(value)
        if text is not None:
            out[f"{ANNOTATION_PREFIX}{key}"] = text
    out[f"{ANNOTATION_PREFIX}stability"] = s.stability.value
    rules = [_rule_evidence(r) for r in s.rules]
    out[f"{ANNOTATION_PREFIX}rule-evidence"] = json.dumps(rules, separators=(",", ":"))
    return out


def manifest(s: SuggestedPolicy) -> dict[str, Any]:
    return policy_to_manifest(s.policy, labels=SUGGESTED_LABEL, annotations=evidence_annotations(s))


def file_name(s: SuggestedPolicy) -> str:
    """`<namespace>.<name>.yaml` (`--out DIR`)."""
    return f"{s.policy.namespace}.{s.policy.name}.yaml"


def connection_example(conn: Connection) -> dict[str, Any]:
    return {
        "client_ip": conn.client_ip,
        "client_port": conn.client_port,
        "server_ip": conn.server_ip,
        "server_port": conn.server_port,
        "first_seen": conn.first_seen,
    }


def group_to_dict(g: FlowGroup) -> dict[str, Any]:
    return {
        "client": g.client,
        "server": g.server,
        "port": g.port,
        "protocol": g.protocol.value,
        "count": g.count,
        "bytes": g.bytes,
        "first_seen": g.first_seen,
        "last_seen": g.last_seen,
        "verdicts": dict(sorted(g.verdicts.items())),
        "example": connection_example(g.example),
    }


def verification_to_dict(v: Verification) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": v.ok, "checked": v.checked, "denied": v.denied_connections}
    if v.admitted is not None:
        a = v.admitted
        out["admitted_unobserved"] = {
            "pod_pairs": a.pod_pairs,
            "workload_pairs": a.workload_pairs,
            "ports": [f"{proto.value}/{port}" for proto, port in a.ports],
            "covered_pods": a.covered_pods,
        }
    return out


def report_to_dict(
    s: Suggestion,
    *,
    verification: Verification,
    unexpected: Sequence[FlowGroup],
    total: int,
) -> dict[str, Any]:
    """The `-o json|yaml` document of `netwatch suggest` (README documents it)."""
    return {
        "mode": s.mode.value,
        "window": None if s.window is None else {"start": s.window[0], "end": s.window[1]},
        "summary": {
            "connections": total,
            "used": s.used,
            "unexpected": s.unexpected_connections,
            "skipped": dict(s.skipped),
            "policies": len(s.policies),
            "rules": sum(len(p.rules) for p in s.policies),
        },
        "verification": verification_to_dict(verification),
        "policies": [manifest(p) for p in s.policies],
        "unexpected": [group_to_dict(g) for g in unexpected],
        "warnings": list(s.warnings),
    }


# ------------------------------------------------------------------ tables


def describe_peers(rule: Rule) -> str:
    if rule.peers is None:
        return "<any>"
    return "; ".join(_peer_text(p) for p in rule.peers)


def _peer_text(peer: Peer) -> str:
    if peer.ip_block is not None:
        return peer.ip_block.describe()
    pods = peer.pod_selector.describe() if peer.pod_selector is not None else "<all>"
    ns = peer.namespace_selector
    if ns is None:
        return pods
    if len(ns.match_labels) == 1 and not ns.match_expressions:
        key, value = ns.match_labels[0]
        if key == NAMESPACE_NAME_LABEL:
            return f"{pods} in {value}"
    return f"{pods} in namespaces {ns.describe()}"


def render_suggest_table(
    s: Suggestion,
    *,
    verification: Verification,
    unexpected: Sequence[FlowGroup],
    console: Console,
) -> None:
    console.print(
        f"[bold]{len(s.policies)} suggested policies[/] ({s.mode.value}) from {s.used} "
        f"connection(s); {s.unexpected_connections} denied connection(s) not legalized"
    )
    for p in s.policies:
        policy = p.policy
        console.print(
            f"\n[bold]{policy.key}[/]  selects {policy.pod_selector.describe()}  "
            f"{p.stability.value}, {p.evidence.connections} connection(s)",
            highlight=False,
        )
        table = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
        for column in ("rule", "peers", "ports", "conns", "last seen"):
            table.add_column(column, overflow="fold")
        rules = {(r.direction, r.rule): r for r in p.rules}
        for direction in Direction:
            if direction not in policy.policy_types:
                continue
            listed = policy.rules(direction)
            if not listed:
                table.add_row(direction.value, "deny all", "", "", "")
            for i, rule in enumerate(listed):
                ev = rules.get((direction, i))
                e = ev.evidence if ev is not None else Evidence()
                table.add_row(
                    f"{direction.value}[{i}]",
                    describe_peers(rule),
                    ", ".join(spec.describe() for spec in rule.ports) or "<all>",
                    str(e.connections),
                    rfc3339(e.last_seen) or "-",
                )
        console.print(table)
    console.print()
    _print_verification(verification, console)
    if unexpected:
        console.print(
            "[bold red]Denied but observed (not legalized; --include-denied adds them):[/]"
        )
        render_groups_table(unexpected, console)


def _print_verification(v: Verification, console: Console) -> None:
    status = "[green]verified[/]" if v.ok else f"[bold red]{v.denied_connections} DENIED[/]"
    console.print(f"Verification: {status}: {v.checked} observed connection(s) checked")
    if v.admitted is not None:
        a = v.admitted
        console.print(
            f"Still admitted but never observed (on observed ports): {a.workload_pairs} "
            f"workload pair(s), {a.pod_pairs} pod pair(s) among {a.covered_pods} covered pods"
        )


def render_groups_table(groups: Sequence[FlowGroup], console: Console) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("client", "server", "port", "count", "today", "example"):
        table.add_column(column)
    for g in groups:
        ex = g.example
        table.add_row(
            g.client,
            g.server,
            f"{g.protocol.value}/{g.port}",
            str(g.count),
            ", ".join(f"{k} {v}" for k, v in sorted(g.verdicts.items())),
            f"{ex.client_ip}:{ex.client_port} → {ex.server_ip}:{ex.server_port} "
            f"at {rfc3339(ex.first_seen)}",
        )
    console.print(table)
