"""Summing drained deltas into one record per connection (what `netwatch capture` writes).

Every `FlowSource.drain()` returns deltas; a capture that reports at the end adds them up
per conversation. The key ignores orientation (a conversation oriented by `socket` in one
drain and by `syn` in another is one conversation); the best-evidenced orientation wins
and decides client and server.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from netwatch.capture.observation import MergeKey, merge_key
from netwatch.core.flow import Connection, Orientation

_RANK = {Orientation.SYN: 0, Orientation.SOCKET: 1, Orientation.HEURISTIC: 2}


def merge(a: Connection, b: Connection) -> Connection:
    """One record for two deltas of the same conversation."""
    if _RANK[b.orientation] < _RANK[a.orientation]:
        a, b = b, a
    if (b.client_ip, b.client_port) != (a.client_ip, a.client_port):
        b = b.reversed()
    return replace(
        a,
        first_seen=min(a.first_seen, b.first_seen),
        last_seen=max(a.last_seen, b.last_seen),
        packets_out=a.packets_out + b.packets_out,
        bytes_out=a.bytes_out + b.bytes_out,
        packets_in=a.packets_in + b.packets_in,
        bytes_in=a.bytes_in + b.bytes_in,
        interface=a.interface or b.interface,
        service_ip=a.service_ip or b.service_ip,
        service_port=a.service_port if a.service_ip else b.service_port,
    )


class Accumulator:
    def __init__(self) -> None:
        self._conns: dict[tuple[MergeKey, str | None], Connection] = {}

    def add(self, conns: Iterable[Connection]) -> None:
        for conn in conns:
            key = (merge_key(conn), conn.node)
            prev = self._conns.get(key)
            self._conns[key] = conn if prev is None else merge(prev, conn)

    def __len__(self) -> int:
        return len(self._conns)

    def connections(self) -> list[Connection]:
        """Sorted by first_seen, then 5-tuple: deterministic output."""
        return sorted(
            self._conns.values(),
            key=lambda c: (c.first_seen, c.client_ip, c.client_port, c.server_ip, c.server_port),
        )
