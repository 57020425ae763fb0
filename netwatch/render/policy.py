"""Rendering of `netwatch policy check|matrix`: the documented JSON shapes and tables.

`check` JSON (DESIGN §4) — the contract keys are `allowed`, `egress`, `ingress`, each side
with `isolated` and `allowed_by`; netwatch adds `allowed`, `isolated_by` and `exempt` per
side and echoes the question (`src`, `dst`, `port`, `protocol`) so a saved answer stands
on its own.
"""

from __future__ import annotations

import json
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from netwatch.core.engine import Matrix, SideVerdict, Verdict
from netwatch.core.model import Protocol

MAX_GRID_PODS = 40


def side_to_dict(side: SideVerdict) -> dict[str, Any]:
    return {
        "isolated": side.isolated,
        "allowed": side.allowed,
        "allowed_by": [{"policy": r.policy, "rule": r.rule} for r in side.allowed_by],
        "isolated_by": list(side.isolated_by),
        "exempt": side.exempt.value if side.exempt else None,
    }


def check_to_dict(
    verdict: Verdict, *, src: str, dst: str, port: int, protocol: Protocol
) -> dict[str, Any]:
    return {
        "allowed": verdict.allowed,
        "src": src,
        "dst": dst,
        "port": port,
        "protocol": protocol.value,
        "egress": side_to_dict(verdict.egress),
        "ingress": side_to_dict(verdict.ingress),
    }


def _side_text(side: SideVerdict, what: str) -> Text:
    if side.exempt is not None:
        return Text(f"allowed ({side.exempt.value}: policy cannot block it)", style="green")
    if not side.isolated:
        return Text(f"allowed (not isolated for {what}: no policy selects it)", style="green")
    if side.allowed_by:
        rules = ", ".join(str(r) for r in side.allowed_by)
        return Text(f"allowed by {rules}", style="green")
    return Text(
        f"DENIED: isolated by {', '.join(side.isolated_by)}; no rule admits it", style="bold red"
    )


def render_check_table(data: dict[str, Any], verdict: Verdict, console: Console) -> None:
    word = Text("ALLOWED", style="bold green") if verdict.allowed else Text("DENIED", "bold red")
    console.print(
        Text.assemble(word, f"  {data['src']} → {data['dst']}  {data['protocol']}/{data['port']}")
    )
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("side")
    table.add_column("decision")
    table.add_row("egress (client)", _side_text(verdict.egress, "egress"))
    table.add_row("ingress (server)", _side_text(verdict.ingress, "ingress"))
    console.print(table)


def write_matrix_json(matrix: Matrix, out: IO[str]) -> None:
    """Stream the matrix JSON; a 1,000-pod matrix is a million pairs, so no dict per pair."""
    keys = [json.dumps(p.key) for p in matrix.pods]
    # Per destination, both possible endings of a pair, built once: a row is then one
    # join over precomputed strings instead of an f-string per pair.
    endings = {
        "1": [f'{k}, "allowed": true}}' for k in keys],
        "0": [f'{k}, "allowed": false}}' for k in keys],
    }
    out.write(f'{{"port": {matrix.port}, "protocol": "{matrix.protocol.value}", "pairs": [')
    for i, row in enumerate(matrix.rows):
        sep = f', {{"src": {keys[i]}, "dst": '
        chunk = sep.join([endings[c][j] for j, c in enumerate(row)])
        if chunk:
            out.write(("" if i == 0 else ", ") + sep[2:] + chunk)
    out.write("]}\n")


def matrix_to_dict(matrix: Matrix) -> dict[str, Any]:
    return {
        "port": matrix.port,
        "protocol": matrix.protocol.value,
        "pairs": [
            {"src": a.key, "dst": matrix.pods[j].key, "allowed": c == "1"}
            for a, row in zip(matrix.pods, matrix.rows, strict=True)
            for j, c in enumerate(row)
        ],
    }


def render_matrix_table(matrix: Matrix, console: Console) -> None:
    n = len(matrix.pods)
    allowed = sum(row.count("1") for row in matrix.rows)
    console.print(
        f"[bold]{matrix.protocol.value}/{matrix.port}[/]: {n} pods, {n * n} ordered pairs, "
        f"[green]{allowed} allowed[/], [red]{n * n - allowed} denied[/]"
    )
    if n == 0:
        return
    if n > MAX_GRID_PODS:
        console.print(f"(grid shown for at most {MAX_GRID_PODS} pods; use -o json for pairs)")
        return
    table = Table(title="rows: client (src) → columns: server (dst)", box=None)
    table.add_column("src \\ dst", style="bold")
    for j in range(n):
        table.add_column(str(j), justify="center")
    for i, row in enumerate(matrix.rows):
        cells = [Text("✓", "green") if c == "1" else Text("✗", "red") for c in row]
        table.add_row(f"{i} {matrix.pods[i].key}", *cells)
    console.print(table)
