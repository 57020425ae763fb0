"""The one interface every capture backend implements.

A source is drained periodically by its owner (the agent, or `netwatch capture`). Each
drain returns the connections that changed since the previous drain, with the counters
accumulated *in that interval* (deltas), so a consumer adds them up and a restart in the
middle neither loses nor double-counts. File sources return everything on the first
drain and report exhaustion through `finished`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

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


@runtime_checkable
class Journaled(Protocol):
    """A source whose drained data survives a crash until its owner acknowledges it.

    The owner's protocol (the agent, `netwatch.agent.state`): after each `drain()`, count
    the records, checkpoint the counters together with `position`, then
    `acknowledge(position)`; after a restart, restore the checkpoint and `recover()` its
    position before the first drain, which then also returns what the crashed process had
    taken from the kernel but not yet counted.
    """

    @property
    def position(self) -> int:
        """Identifies what the last `drain()` returned (monotonic; 0 before any)."""
        ...

    def recover(self, position: int) -> int:
        """Queue everything after `position` for the next drain; returns the entry count."""
        ...

    def acknowledge(self, position: int) -> None:
        """Everything up to `position` is durably counted; it may be forgotten."""
        ...


@runtime_checkable
class Parted(Protocol):
    """A source whose drain can be consumed in parts, so the owner never holds a whole
    busy drain's records at once (the eBPF backend: one kernel batch per part)."""

    def drain_parts(self) -> Iterator[Sequence[Connection]]:
        """`drain()` in parts; consume it whole (the drain ends with the last part)."""
        ...
