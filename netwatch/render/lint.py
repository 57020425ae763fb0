"""Rendering of lint findings: the `{"findings": [...]}` JSON contract and a table.

Every finding carries `kind`, `policy`, `direction`, `rule` and `message` (null where
they do not apply, DESIGN §4); kind-specific keys follow: `pod`, `contained_in`
(`{"policy", "direction", "rule"}` for redundant rules, `{"policy"}` for redundant
policies), and `source`/`object`/`field` for invalid objects.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table

from netwatch.core.lint import Finding, FindingKind

_SEVERITY = {
    FindingKind.INVALID_OBJECT: "bold red",
    FindingKind.DNS_EGRESS_BLOCKED: "bold red",
    FindingKind.EMPTY_POLICY: "yellow",
    FindingKind.EMPTY_RULE: "yellow",
    FindingKind.VACUOUS_CONFIG: "yellow",
    FindingKind.REDUNDANT_POLICY: "cyan",
    FindingKind.REDUNDANT_RULE: "cyan",
    FindingKind.UNPROTECTED_POD: "magenta",
}


def finding_to_dict(f: Finding) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": f.kind.value,
        "policy": f.policy,
        "direction": f.direction.value if f.direction else None,
        "rule": f.rule,
        "message": f.message,
    }
    if f.pod is not None:
        out["pod"] = f.pod
    if f.contained_in is not None:
        out["contained_in"] = {
            "policy": f.contained_in.policy,
            "direction": f.contained_in.direction.value,
            "rule": f.contained_in.rule,
        }
    if f.contained_in_policy is not None:
        out["contained_in"] = {"policy": f.contained_in_policy}
    if f.problem is not None:
        out["source"] = f.problem.source
        out["object"] = f.problem.obj
        out["field"] = f.problem.field
    return out


def lint_to_dict(findings: list[Finding]) -> dict[str, Any]:
    return {"findings": [finding_to_dict(f) for f in findings]}


def _where(f: Finding) -> str:
    if f.problem is not None:
        return f"{f.problem.source}: {f.problem.obj}" + (
            f": {f.problem.field}" if f.problem.field else ""
        )
    parts = [f.policy or f.pod or ""]
    if f.policy and f.pod:
        parts.append(f"pod {f.pod}")
    if f.direction is not None:
        rule = f"[{f.rule}]" if f.rule is not None else ""
        parts.append(f"{f.direction.value}{rule}")
    return " ".join(p for p in parts if p)


def render_lint_table(findings: list[Finding], console: Console) -> None:
    if not findings:
        console.print("[green]No findings.[/]")
        return
    table = Table(show_header=True, header_style="bold", expand=False)
    table.add_column("kind", no_wrap=True)
    table.add_column("where", overflow="fold")
    table.add_column("message")
    for f in findings:
        style = _SEVERITY[f.kind]
        table.add_row(f"[{style}]{f.kind.value}[/]", _where(f), f.message)
    console.print(table)
    counts = Counter(f.kind.value for f in findings)
    console.print(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
