"""Rendering of `netwatch whatif`: the JSON/YAML document and the table.

`-o json`: `{"ok", "replace", "include_denied", "checked", "denied_connections",
"not_evaluated", "already_denied", "still_denied", "denied": [group, ...]}`, where a group
is `{"client", "server", "port", "protocol", "count", "bytes", "first_seen", "last_seen",
"verdicts", "example"}` (`verdicts`: what today's policies said about those records).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from netwatch.core.whatif import WhatIf
from netwatch.render.suggest import group_to_dict, render_groups_table


def whatif_to_dict(w: WhatIf, *, replace: bool, include_denied: bool) -> dict[str, Any]:
    return {
        "ok": w.ok,
        "replace": replace,
        "include_denied": include_denied,
        "checked": w.checked,
        "denied_connections": w.denied_connections,
        "not_evaluated": w.not_evaluated,
        "already_denied": w.already_denied,
        "still_denied": w.still_denied,
        "denied": [group_to_dict(g) for g in w.denied],
    }


def render_whatif_table(w: WhatIf, *, replace: bool, console: Console) -> None:
    how = "instead of the existing policies" if replace else "next to the existing policies"
    if w.ok:
        console.print(
            f"[green]Nothing observed would be denied[/] by the proposed policies ({how}): "
            f"{w.checked} connection(s) checked."
        )
    else:
        console.print(
            f"[bold red]{w.denied_connections} observed connection(s) would be denied[/] by "
            f"the proposed policies ({how}), in {len(w.denied)} group(s); "
            f"{w.checked} checked:"
        )
        render_groups_table(list(w.denied), console)
    if w.already_denied:
        console.print(
            f"{w.already_denied} connection(s) are denied by today's policies already "
            f"(not judged; --include-denied judges them); the proposal denies "
            f"{w.still_denied} of them too."
        )
    if w.not_evaluated:
        console.print(f"{w.not_evaluated} connection(s) not evaluated (unknown endpoint or ICMP).")
