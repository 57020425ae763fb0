"""Rendering of `netwatch inventory`: the `{"endpoints": [...]}` JSON contract and a table.

Each endpoint has the contract keys (DESIGN §4) `ip`, `kind` (`pod`, `service`, `node`,
`external`), `namespace`, `name`, `workload`, `workload_kind` — null where they do not
apply — then `uid`, `node` and `labels`. Externals are named by their configured CIDR or
`world`; a hostNetwork pod's IP is its node.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from netwatch.core.identity import Identity, IdentityKind

_KIND_STYLE = {
    IdentityKind.POD: "green",
    IdentityKind.SERVICE: "cyan",
    IdentityKind.NODE: "magenta",
    IdentityKind.EXTERNAL: "yellow",
}


def endpoint_to_dict(ip: str, who: Identity) -> dict[str, Any]:
    return {
        "ip": ip,
        "kind": who.kind.value,
        "namespace": who.namespace,
        "name": who.name,
        "workload": who.workload.name if who.workload else None,
        "workload_kind": who.workload.kind.value if who.workload else None,
        "uid": who.uid,
        "node": who.node,
        "labels": dict(who.labels),
    }


def inventory_to_dict(entries: Sequence[tuple[str, Identity]]) -> dict[str, Any]:
    return {"endpoints": [endpoint_to_dict(ip, who) for ip, who in entries]}


def format_time(at: float) -> str:
    """RFC 3339 in UTC, whole seconds unless the time has a fraction."""
    moment = datetime.fromtimestamp(at, UTC)
    spec = "seconds" if at == int(at) else "milliseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def render_inventory_table(
    entries: Sequence[tuple[str, Identity]], *, at: float, console: Console
) -> None:
    if not entries:
        console.print(f"No pod, Service or node IPs known at {format_time(at)}.")
        return
    table = Table(
        title=f"IP identities at {format_time(at)}",
        show_header=True,
        header_style="bold",
        box=None,
        pad_edge=False,
    )
    for column in ("ip", "kind", "namespace", "name", "workload", "node"):
        table.add_column(column, no_wrap=column in ("ip", "kind"))
    for ip, who in entries:
        workload = f"{who.workload.kind.value}/{who.workload.name}" if who.workload else ""
        table.add_row(
            ip,
            f"[{_KIND_STYLE[who.kind]}]{who.kind.value}[/]",
            who.namespace or "",
            who.name,
            workload,
            who.node or "",
        )
    console.print(table)
