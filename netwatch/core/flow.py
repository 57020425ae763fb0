"""Connections: one transport conversation, oriented client→server (DESIGN §2, §5).

Every capture backend (eBPF, sniff, pcap, replay) produces these; analysis, metrics and
suggestions consume them. Policy applies to connection initiation, so the orientation —
and how it was decided — travels with the record.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from netwatch.core.model import Protocol

FlowRow = tuple[str, str, int, Protocol, float, float, int, int, str | None, int, bool]
"""One record's fields as the hot loops read them: (client_ip, server_ip, server_port,
protocol, first_seen, last_seen, bytes, packets, service_ip, client_port, guessed);
bytes and packets are both directions added up; `guessed`: the orientation is
`heuristic` (attribution may swap the ends, `Attributor.orient_row`)."""


class Orientation(enum.Enum):
    """How client and server were told apart, best first."""

    SYN = "syn"
    """A TCP SYN without ACK was seen: the sender is the client."""
    SOCKET = "socket"
    """The server side had a listening/bound socket on the port (connections already open
    when capture started, UDP)."""
    HEURISTIC = "heuristic"
    """Nothing better: e.g. the lower, well-known port is taken as the server."""


@dataclass(frozen=True, slots=True)
class Connection:
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    protocol: Protocol
    first_seen: float
    """Epoch seconds."""
    last_seen: float
    packets_out: int = 0
    """client → server; bytes count whole IP packets (IP header included, no link layer)."""
    bytes_out: int = 0
    packets_in: int = 0
    """server → client."""
    bytes_in: int = 0
    orientation: Orientation = Orientation.HEURISTIC
    node: str | None = None
    interface: str | None = None
    service_ip: str | None = None
    """Pre-DNAT destination when the observer saw a Service ClusterIP (DESIGN §2)."""
    service_port: int | None = None

    def reversed(self) -> Connection:
        """The same record seen from the other end: endpoints and directions swapped."""
        return replace(
            self,
            client_ip=self.server_ip,
            client_port=self.server_port,
            server_ip=self.client_ip,
            server_port=self.client_port,
            packets_out=self.packets_in,
            bytes_out=self.bytes_in,
            packets_in=self.packets_out,
            bytes_in=self.bytes_out,
        )

    @property
    def five_tuple(self) -> tuple[str, int, str, int, Protocol]:
        return (self.client_ip, self.client_port, self.server_ip, self.server_port, self.protocol)
