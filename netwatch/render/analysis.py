"""Rendering of `netwatch analyze`: the DESIGN §6 JSON contract and the human report.

JSON (`-o json|yaml`), exactly three keys:

- `summary.verdicts`: connection records per verdict (`allowed`, `denied`,
  `unrestricted`, `unknown`, always all four);
- `connections`: groups sorted by client, server, protocol, port, verdict, Service, each
  `{"client", "server", "port", "protocol", "verdict", "egress", "ingress", "count",
  "bytes"}`. `client`/`server` carry the enriched-record keys `kind`, `namespace`,
  `name`, `workload`, `workload_kind`, `service` (`name` is the pod when one pod made up
  the group, else null); `egress`/`ingress` are `policy check`'s side objects with rules
  merged over the group, null for ICMP and unknown verdicts;
- `findings`: observed-traffic findings (`unexpected-flow`, `unprotected-workload`,
  `unused-rule`, `overly-broad-rule`) then the lint findings, each with `kind` and
  `message` plus its own keys (see the README).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from netwatch.core.analysis import (
    ALL_PORTS,
    AnalysisResult,
    AnyFinding,
    Breadth,
    ConnectionGroup,
    EndpointView,
    FlowFinding,
    FlowFindingKind,
)
from netwatch.core.attribution import VerdictKind
from netwatch.render.lint import finding_to_dict
from netwatch.render.policy import side_to_dict

VERDICT_STYLE = {
    VerdictKind.ALLOWED: "green",
    VerdictKind.DENIED: "bold red",
    VerdictKind.UNRESTRICTED: "yellow",
    VerdictKind.UNKNOWN: "magenta",
}
DEFAULT_TOP = 20
FINDINGS_PER_KIND = 10


# ------------------------------------------------------------------ JSON


def endpoint_to_dict(view: EndpointView) -> dict[str, Any]:
    return {
        "kind": view.kind,
        "namespace": view.namespace,
        "name": view.name,
        "workload": view.workload,
        "workload_kind": view.workload_kind,
        "service": view.service,
    }


def group_to_dict(g: ConnectionGroup) -> dict[str, Any]:
    return {
        "client": endpoint_to_dict(g.client),
        "server": endpoint_to_dict(g.server),
        "port": g.port,
        "protocol": g.protocol.value,
        "verdict": g.verdict.value,
        "egress": side_to_dict(g.egress) if g.egress is not None else None,
        "ingress": side_to_dict(g.ingress) if g.ingress is not None else None,
        "count": g.count,
        "bytes": g.bytes,
    }


def _breadth(b: Breadth) -> dict[str, Any]:
    return {
        "workloads": b.workloads,
        "pods": b.pods,
        "addresses": "all" if b.addresses is None else b.addresses,
        "ports": "all" if b.ports == ALL_PORTS else b.ports,
    }


def flow_finding_to_dict(f: FlowFinding) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": f.kind.value}
    match f.kind:
        case FlowFindingKind.UNEXPECTED_FLOW:
            out |= {
                "client": f.client,
                "server": f.server,
                "port": f.port,
                "protocol": f.protocol.value if f.protocol else None,
            }
        case FlowFindingKind.UNPROTECTED_WORKLOAD:
            out["workload"] = f.workload
        case _:
            out |= {
                "policy": f.policy,
                "direction": f.direction.value if f.direction else None,
                "rule": f.rule,
            }
    out["message"] = f.message
    if f.count is not None:
        out["count"] = f.count
    if f.bytes is not None:
        out["bytes"] = f.bytes
    if f.first_seen is not None:
        out["first_seen"] = f.first_seen
        out["last_seen"] = f.last_seen
    if f.kind is FlowFindingKind.UNEXPECTED_FLOW:
        out["denied_by"] = [d.value for d in f.denied_by]
        out["isolated_by"] = list(f.isolated_by)
    if f.admitted is not None and f.used is not None:
        out["admitted"] = _breadth(f.admitted)
        out["used"] = _breadth(f.used)
        out["too_wide"] = list(f.too_wide)
    return out


def any_finding_to_dict(f: AnyFinding) -> dict[str, Any]:
    return flow_finding_to_dict(f) if isinstance(f, FlowFinding) else finding_to_dict(f)


def write_analysis_json(result: AnalysisResult, out: IO[str]) -> None:
    """`analysis_to_dict` as JSON, one connection and one finding per line.

    A million records can make tens of thousands of groups; the stdlib's indenting
    encoder is pure Python, so items are encoded compactly by the C encoder and only
    the outer structure is indented. Same data, same key order as `-o yaml`.
    """
    encode = json.JSONEncoder(ensure_ascii=False).encode
    verdicts = encode({k.value: n for k, n in result.verdicts.items()})
    out.write(f'{{\n  "summary": {{"verdicts": {verdicts}}},\n')
    for name, items in (
        ("connections", (group_to_dict(g) for g in result.groups)),
        ("findings", (any_finding_to_dict(f) for f in result.findings)),
    ):
        out.write(f'  "{name}": [')
        first = True
        for item in items:
            out.write("\n    " if first else ",\n    ")
            out.write(encode(item))
            first = False
        out.write("]" if first else "\n  ]")
        out.write(",\n" if name == "connections" else "\n")
    out.write("}\n")


def analysis_to_dict(result: AnalysisResult) -> dict[str, Any]:
    return {
        "summary": {"verdicts": {k.value: n for k, n in result.verdicts.items()}},
        "connections": [group_to_dict(g) for g in result.groups],
        "findings": [any_finding_to_dict(f) for f in result.findings],
    }


# ------------------------------------------------------------------ table


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _endpoint_text(view: EndpointView) -> str:
    text = view.key
    if view.kind == "pod" and view.name:
        text += f" ({view.name})"
    if view.service:
        text += f" via svc {view.service}"
    return text


def _verdict_text(v: VerdictKind) -> Text:
    return Text(v.value, style=VERDICT_STYLE[v])


def render_analysis_table(
    result: AnalysisResult,
    console: Console,
    *,
    top: int | None = DEFAULT_TOP,
    header: str | None = None,
) -> None:
    """Verdict summary, the connections table (top `top` by bytes; None: all), findings."""
    if header:
        console.print(header, highlight=False)
    total = sum(result.verdicts.values())
    summary = Table(box=None, pad_edge=False, header_style="bold")
    summary.add_column("verdict")
    summary.add_column("records", justify="right")
    summary.add_column("share", justify="right")
    for kind, n in result.verdicts.items():
        share = f"{100 * n / total:.1f}%" if total else "-"
        summary.add_row(_verdict_text(kind), f"{n:,}", share)
    console.print(summary)
    console.print()
    _connections_table(result, console, top=top)
    console.print()
    _findings(result, console, limit=None if top is None else FINDINGS_PER_KIND)


def _connections_table(result: AnalysisResult, console: Console, *, top: int | None) -> None:
    if not result.groups:
        console.print("No connection records (in the window).")
        return
    groups = sorted(result.groups, key=lambda g: -g.bytes)  # stable: ties keep JSON order
    shown = groups if top is None else groups[:top]
    title = f"Connections by workload ({len(result.groups)} groups"
    title += (
        ")" if len(shown) == len(groups) else f", top {len(shown)} by bytes; --all for every one)"
    )
    table = Table(title=title, show_header=True, header_style="bold")
    for column, justify in (
        ("client", "left"),
        ("server", "left"),
        ("port", "right"),
        ("verdict", "left"),
        ("records", "right"),
        ("bytes", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for g in shown:
        table.add_row(
            _endpoint_text(g.client),
            _endpoint_text(g.server),
            f"{g.protocol.value}/{g.port}",
            _verdict_text(g.verdict),
            f"{g.count:,}",
            human_bytes(g.bytes),
        )
    console.print(table)


def _finding_where(f: AnyFinding) -> str:
    if not isinstance(f, FlowFinding):
        if f.problem is not None:
            return f"{f.problem.source}: {f.problem.obj}"
        rule = "" if f.rule is None else f"[{f.rule}]"
        direction = f"{f.direction.value}{rule}" if f.direction else ""
        if f.policy is None:
            return f"pod {f.pod} {direction}".strip()
        pod = f" pod {f.pod}" if f.pod else ""
        return f"{f.policy} {direction}{pod}".strip()
    if f.kind is FlowFindingKind.UNEXPECTED_FLOW:
        protocol = f.protocol.value if f.protocol else ""
        return f"{f.client} -> {f.server} {protocol}/{f.port}"
    if f.kind is FlowFindingKind.UNPROTECTED_WORKLOAD:
        return f.workload or ""
    direction = f.direction.value if f.direction else ""
    return f"{f.policy} {direction}[{f.rule}]"


def _findings(result: AnalysisResult, console: Console, *, limit: int | None) -> None:
    if not result.findings:
        console.print("[green]No findings.[/]")
        return
    by_kind: dict[str, list[AnyFinding]] = defaultdict(list)
    for f in result.findings:
        by_kind[f.kind.value].append(f)
    for kind, members in by_kind.items():
        table = Table(title=f"{kind} ({len(members)})", show_header=False, box=None, pad_edge=False)
        table.add_column("where", overflow="fold", style="bold")
        table.add_column("message")
        for f in members if limit is None else members[:limit]:
            table.add_row(_finding_where(f), f.message)
        console.print(table)
        if limit is not None and len(members) > limit:
            console.print(f"  … {len(members) - limit} more (--all, or -o json)")
        console.print()
