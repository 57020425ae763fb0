"""The one interface every capture backend implements.

A source is drained periodically by its owner (the agent, or `netwatch capture`). Each
drain returns the connections that changed since the previous drain, with the counters
accumulated *in that interval* (deltas), so a consumer adds them up and a restart in the
middle neither loses nor double-counts. File sources return everything on the first
drain and report exhaustion through `finished`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from netwatch.core.flow import Connection


class FlowSource(Protocol):
    def drain(self) -> Sequence[Connection]:
        """Connections seen since the last call, counters as deltas for that interval."""
        ...

    @property
    def finished(self) -> bool:
        """True once a file source has delivered everything (live sources: never)."""
        ...

    def close(self) -> None:
        """Detach from the kernel / close files; idempotent."""
        ...
