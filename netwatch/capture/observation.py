"""What one drained kernel entry says, and the keys that name a conversation.

`Observation` is an entry decoded (a conversation as seen on one host-side veth);
`Addresses` turns the kernel's packed addresses into shared text and back; `conv_key`
names a conversation the same from either of its veths (packed: both ends, smaller
first), `merge_key` the same for a finished `Connection`. `observation()` decodes the
fields `layout.KEY`/`VALUE` unpack to. Neighbours: `layout` (the bytes), `assemble`
(what is decided per conversation).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from netwatch.capture.layout import F_FIRST_TO_POD, F_OPENER_FROM_POD, F_OPENER_TO_POD
from netwatch.core.flow import Connection
from netwatch.core.model import Protocol

PROTOCOLS = {
    6: Protocol.TCP,
    17: Protocol.UDP,
    132: Protocol.SCTP,
    1: Protocol.ICMP,
    58: Protocol.ICMP,
}
"""IP protocol numbers of `struct flow_key.proto` that are connections; others are skipped."""
_NUMBERS = {Protocol.TCP: 6, Protocol.UDP: 17, Protocol.SCTP: 132, Protocol.ICMP: 1}
ENDS = struct.Struct(">BB16sH16sH")
"""A `conv_key`: family, protocol number, then both ends (address, port), smaller first."""
CACHE_MAX = 65536
"""Entries a per-address cache holds before it starts over (a scan must not grow it)."""
Endpoint = tuple[str, int]
ConnId = bytes
"""`conv_key`: family, protocol number, then both ends (address, port), smaller first."""
MergeKey = tuple[Protocol, Endpoint, Endpoint]


@dataclass(frozen=True, slots=True)
class Observation:
    """One drained kernel entry: a conversation as seen on one host-side veth."""

    ifindex: int
    interface: str | None
    protocol: Protocol
    pod_ip: str
    pod_port: int
    peer_ip: str
    peer_port: int
    packets_from_pod: int
    bytes_from_pod: int
    packets_to_pod: int
    bytes_to_pod: int
    first_seen: float
    last_seen: float
    tcp_flags_from_pod: int = 0
    tcp_flags_to_pod: int = 0
    opener_from_pod: bool = False
    opener_to_pod: bool = False
    first_to_pod: bool = False
    began_in_capture: bool = False
    """The kernel entry was created after this capture started (its first packet is known)."""

    @property
    def pod(self) -> Endpoint:
        return (self.pod_ip, self.pod_port)

    @property
    def peer(self) -> Endpoint:
        return (self.peer_ip, self.peer_port)


class Addresses:
    """Packed kernel addresses ↔ text, cached: a node talks to few addresses, often.

    The text of an address is one shared `str` however many records carry it (memory),
    and converting it costs a dict lookup instead of `inet_ntop` (time). Bounded: a
    cache past `CACHE_MAX` addresses (a scan) starts over.
    """

    def __init__(self) -> None:
        self._text: tuple[dict[bytes, str], dict[bytes, str]] = ({}, {})
        self._packed: dict[str, tuple[int, bytes]] = {}

    def text(self, addr: bytes, family: int) -> str:
        cache = self._text[family == 6]
        found = cache.get(addr)
        if found is None:
            if len(cache) >= CACHE_MAX:
                cache.clear()
            if family == 6:
                found = socket.inet_ntop(socket.AF_INET6, addr)
            else:
                found = socket.inet_ntop(socket.AF_INET, addr[:4])
            cache[addr] = found
        return found

    def packed(self, ip: str) -> tuple[int, bytes]:
        """(family, the 16 bytes `struct flow_key` holds) of a textual address."""
        found = self._packed.get(ip)
        if found is None:
            if len(self._packed) >= CACHE_MAX:
                self._packed.clear()
            if ":" in ip:
                found = (6, socket.inet_pton(socket.AF_INET6, ip))
            else:
                found = (4, socket.inet_pton(socket.AF_INET, ip).ljust(16, b"\0"))
            self._packed[ip] = found
        return found


def conv_key(  # noqa: PLR0917 - mirrors the key fields, called once per entry
    family: int, number: int, a_addr: bytes, a_port: int, b_addr: bytes, b_port: int
) -> tuple[ConnId, bool]:
    """A conversation's identity, the same from either end; True when `a` comes first."""
    if (a_addr, a_port) <= (b_addr, b_port):
        return ENDS.pack(family, number, a_addr, a_port, b_addr, b_port), True
    return ENDS.pack(family, number, b_addr, b_port, a_addr, a_port), False


def protocol_number(protocol: Protocol, family: int) -> int:
    """The IP protocol number `struct flow_key.proto` holds for `protocol`."""
    return 58 if protocol is Protocol.ICMP and family == 6 else _NUMBERS[protocol]


def observation(  # noqa: PLR0917 - the fields of one entry, called per decoded entry
    key: tuple[bytes, bytes, int, int, int, int, int],
    value: tuple[int, ...],
    text: Callable[[bytes, int], str],
    names: Callable[[int], str | None],
    epoch_offset_ns: int,
    start_ns: int,
) -> Observation:
    """The entry `KEY.unpack`/`VALUE.unpack` gave, with epoch times (kernel monotonic
    ns + `epoch_offset_ns`) and `text` for addresses (`Addresses.text`)."""
    pod_a, peer_a, pod_p, peer_p, ifindex, number, family = key
    p_from, p_to, b_from, b_to, first_ns, last_ns, flags = value
    return Observation(
        ifindex,
        names(ifindex),
        PROTOCOLS[number],
        text(pod_a, family),
        pod_p,
        text(peer_a, family),
        peer_p,
        p_from,
        b_from,
        p_to,
        b_to,
        (first_ns + epoch_offset_ns) / 1e9,
        (last_ns + epoch_offset_ns) / 1e9,
        flags & 0xFF,
        (flags >> 8) & 0xFF,
        bool(flags & F_OPENER_FROM_POD),
        bool(flags & F_OPENER_TO_POD),
        bool(flags & F_FIRST_TO_POD),
        first_ns >= start_ns,
    )


def merge_key(conn: Connection) -> MergeKey:
    """Identity of a conversation independent of its orientation (for summing deltas)."""
    a, b = (conn.client_ip, conn.client_port), (conn.server_ip, conn.server_port)
    return (conn.protocol, a, b) if a <= b else (conn.protocol, b, a)
