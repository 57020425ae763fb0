"""Raw frames → per-5-tuple `Connection` deltas; shared by the `sniff` and `pcap` backends.

Frames are decoded from bytes with `struct`, not dissected by scapy: dissecting a TCP
frame with scapy took ~250 µs on this project's machines, decoding and counting it here
~6 µs, and the sniff backend must keep up with a node. Scapy still does
the I/O (AF_PACKET sockets, pcap/pcapng framing); this module only needs header fields.

Counting (DESIGN §5): a packet counts as its whole IP packet — IPv4 total length, IPv6
payload length + 40 — whatever link layer, VLAN tags or snap length the capture point
had, so a pod veth, a bridge and a pcap of either agree. Non-IP frames (ARP, LLDP, …),
other IP protocols (GRE, ESP, OSPF, …), truncated headers and fragments whose first
fragment was not seen are not counted; each is tallied in `FlowAggregator.skipped`.

Keys: TCP, UDP and SCTP by addresses and ports. ICMP by the echo/query identifier and
the request type: `client_port` is the identifier (0 for messages that carry none),
`server_port` the ICMP type of the request (8 echo; 128 ICMPv6 echo), so a request and
its reply are one record. ICMP is kept but never policy-evaluated.

Orientation, best first:

- `syn`: the protocol's own opening message was seen — TCP SYN without ACK (its sender
  is the client) or SYN+ACK (its sender is the server), SCTP INIT / INIT ACK, an ICMP
  query or its reply. Seen later on a known flow (port reuse), it re-orients the flow.
- `socket`: the caller's `listening(ip, port, protocol)` oracle says exactly one side
  listens on its port (connections open before capture started, UDP).
- `heuristic`, in this order: a port below 1024 facing one at or above 1024 is the
  server (both below 1024: the lower); else a port below 32768 facing one in the
  ephemeral range (≥ 32768, Linux's default `ip_local_port_range` starts there) is the
  server; otherwise (both in 1024-32767 or both ephemeral, or ICMP without a query) the
  sender of the first packet seen is the client.

Time comes from packet timestamps only; `first_seen` is the first packet of the flow ever
seen (it stays on every delta record), `last_seen` the latest one.
"""

from __future__ import annotations

import enum
import socket
import struct
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from netwatch.core.flow import Connection, Orientation
from netwatch.core.model import Protocol

ListeningOracle = Callable[[str, int, Protocol], bool]
"""`listening(ip, port, protocol)`: does the host owning `ip` listen on / bind `port`?"""

# Link types (tcpdump.org/linktypes.html); AF_PACKET hardware types map onto them.
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_RAW_IP_LINKTYPES = frozenset({LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6})

_ETH_IPV4, _ETH_IPV6 = 0x0800, 0x86DD
_VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100})
_IPV6_EXT = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_TCP, _UDP, _SCTP, _ICMP = 6, 17, 132, 1
PROTOCOLS = {_TCP: Protocol.TCP, _UDP: Protocol.UDP, _SCTP: Protocol.SCTP, _ICMP: Protocol.ICMP}
"""IANA protocol number → Protocol. Flows are keyed by the number: hashing an Enum member
runs Python code, and the key is hashed for every packet."""
_HEADER_NEEDED = {_TCP: 14, _UDP: 4, _SCTP: 13}  # bytes of transport header read
# ICMP query reply type → request type, per IP version.
_ICMP4_REPLIES = {0: 8, 14: 13, 16: 15, 18: 17}
_ICMP6_REPLIES = {129: 128}
_ICMP4_REQUESTS = frozenset(_ICMP4_REPLIES.values())
_ICMP6_REQUESTS = frozenset(_ICMP6_REPLIES.values())
_U16 = struct.Struct("!H")


class Skip(enum.Enum):
    """Why a frame was not counted."""

    NON_IP = "non-ip"
    LINKTYPE = "unsupported-linktype"
    IP_PROTOCOL = "other-ip-protocol"
    TRUNCATED = "truncated"
    FRAGMENT = "orphan-fragment"


class Hint(enum.IntEnum):
    """What the packet itself says about its sender."""

    NONE = 0
    CLIENT = 1
    SERVER = 2


class Packet(NamedTuple):
    """The fields of one IP packet that aggregation needs; addresses stay packed.

    A NamedTuple, not a frozen dataclass: one is built per packet, and a frozen
    dataclass's `__init__` costs several times more."""

    src: bytes
    dst: bytes
    sport: int
    dport: int
    ipproto: int
    """IANA number; ICMPv6 (58) is folded into ICMP (1)."""
    length: int
    hint: Hint = Hint.NONE

    @property
    def protocol(self) -> Protocol:
        return PROTOCOLS[self.ipproto]


class _Fragment(NamedTuple):
    """A fragment of an IP datagram; only the first one carries the transport header."""

    key: tuple[bytes, bytes, int, int]
    first: Packet | None
    length: int


def _ip_offset(data: bytes, linktype: int) -> int | Skip:
    """Offset of the IP header in a frame, or why there is none."""
    if linktype == LINKTYPE_ETHERNET:
        if len(data) < 14:
            return Skip.TRUNCATED
        ethertype, off = _U16.unpack_from(data, 12)[0], 14
        while ethertype in _VLAN_TPIDS:
            if len(data) < off + 4:
                return Skip.TRUNCATED
            ethertype, off = _U16.unpack_from(data, off + 2)[0], off + 4
    elif linktype == LINKTYPE_LINUX_SLL:
        if len(data) < 16:
            return Skip.TRUNCATED
        ethertype, off = _U16.unpack_from(data, 14)[0], 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if len(data) < 20:
            return Skip.TRUNCATED
        ethertype, off = _U16.unpack_from(data, 0)[0], 20
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(data) < 4:
            return Skip.TRUNCATED
        family = int.from_bytes(data[:4], "big" if linktype == LINKTYPE_LOOP else "little")
        ethertype = _ETH_IPV4 if family == 2 else _ETH_IPV6 if family in (10, 24, 28, 30) else 0
        off = 4
    elif linktype in _RAW_IP_LINKTYPES:
        return 0
    else:
        return Skip.LINKTYPE
    return off if ethertype in (_ETH_IPV4, _ETH_IPV6) else Skip.NON_IP


def decode_frame(data: bytes, *, linktype: int) -> Packet | _Fragment | Skip:
    """Decode one captured frame; `_Fragment` for IP fragments (joined by the aggregator)."""
    off = _ip_offset(data, linktype)
    if isinstance(off, Skip):
        return off
    if len(data) < off + 1:
        return Skip.TRUNCATED
    version = data[off] >> 4
    if version == 4:
        return _decode_ipv4(data, off)
    if version == 6:
        return _decode_ipv6(data, off)
    return Skip.NON_IP


def _decode_ipv4(data: bytes, off: int) -> Packet | _Fragment | Skip:
    if len(data) < off + 20:
        return Skip.TRUNCATED
    ihl = (data[off] & 0x0F) * 4
    if ihl < 20:
        return Skip.TRUNCATED
    total = _U16.unpack_from(data, off + 2)[0] or len(data) - off  # 0: TSO/BIG TCP
    frag = _U16.unpack_from(data, off + 6)[0]
    src, dst = data[off + 12 : off + 16], data[off + 16 : off + 20]
    ipproto = data[off + 9]
    if frag & 0x3FFF:  # more-fragments flag or a non-zero offset
        key = (src, dst, ipproto, _U16.unpack_from(data, off + 4)[0])
        if frag & 0x1FFF:
            return _Fragment(key=key, first=None, length=total)
        first = _decode_l4(data, off + ihl, src=src, dst=dst, ipproto=ipproto, length=total)
        return first if isinstance(first, Skip) else _Fragment(key, first, total)
    return _decode_l4(data, off + ihl, src=src, dst=dst, ipproto=ipproto, length=total)


def _decode_ipv6(data: bytes, off: int) -> Packet | _Fragment | Skip:
    if len(data) < off + 40:
        return Skip.TRUNCATED
    payload = _U16.unpack_from(data, off + 4)[0]
    length = payload + 40 if payload else len(data) - off  # 0: jumbogram
    nh, l4 = data[off + 6], off + 40
    src, dst = data[off + 8 : off + 24], data[off + 24 : off + 40]
    fragment: tuple[int, int] | None = None  # (offset field, identification)
    while nh in _IPV6_EXT or nh in (44, 51):
        if len(data) < l4 + 8:
            return Skip.TRUNCATED
        if nh == 44:
            fragment = (_U16.unpack_from(data, l4 + 2)[0], int.from_bytes(data[l4 + 4 : l4 + 8]))
            nh, l4 = data[l4], l4 + 8
        elif nh == 51:  # AH counts its length in 4-byte units, minus 2
            nh, l4 = data[l4], l4 + (data[l4 + 1] + 2) * 4
        else:
            nh, l4 = data[l4], l4 + (data[l4 + 1] + 1) * 8
    ipproto = 1 if nh == 58 else nh  # ICMPv6 decodes like ICMP (types differ)
    if fragment is not None:
        key = (src, dst, nh, fragment[1])
        if fragment[0] & 0xFFF8:
            return _Fragment(key=key, first=None, length=length)
        first = _decode_l4(data, l4, src=src, dst=dst, ipproto=ipproto, length=length)
        return first if isinstance(first, Skip) else _Fragment(key, first, length)
    return _decode_l4(data, l4, src=src, dst=dst, ipproto=ipproto, length=length)


def _decode_l4(
    data: bytes, off: int, *, src: bytes, dst: bytes, ipproto: int, length: int
) -> Packet | Skip:
    if ipproto == _ICMP:
        return _decode_icmp(data, off, src=src, dst=dst, length=length)
    need = _HEADER_NEEDED.get(ipproto)
    if need is None:
        return Skip.IP_PROTOCOL
    if len(data) < off + need:
        return Skip.TRUNCATED
    sport, dport = struct.unpack_from("!HH", data, off)
    hint = Hint.NONE
    if ipproto == _TCP:
        flags = data[off + 13]
        if flags & 0x02:  # SYN: alone from the client, with ACK from the server
            hint = Hint.SERVER if flags & 0x10 else Hint.CLIENT
    elif ipproto == _SCTP:
        chunk = data[off + 12]  # first chunk type: 1 INIT, 2 INIT ACK
        hint = Hint.CLIENT if chunk == 1 else Hint.SERVER if chunk == 2 else Hint.NONE
    return Packet(src, dst, sport, dport, ipproto, length, hint)


def _decode_icmp(data: bytes, off: int, *, src: bytes, dst: bytes, length: int) -> Packet | Skip:
    if len(data) < off + 8:
        return Skip.TRUNCATED
    icmp_type, ident = data[off], _U16.unpack_from(data, off + 4)[0]
    v6 = len(src) == 16
    replies, requests = (
        (_ICMP6_REPLIES, _ICMP6_REQUESTS) if v6 else (_ICMP4_REPLIES, _ICMP4_REQUESTS)
    )
    if icmp_type in requests:
        return Packet(src, dst, ident, icmp_type, _ICMP, length, Hint.CLIENT)
    if icmp_type in replies:  # mirrored: the replier "sends from" the request type
        return Packet(src, dst, replies[icmp_type], ident, _ICMP, length, Hint.SERVER)
    return Packet(src, dst, 0, icmp_type, _ICMP, length, Hint.NONE)


def heuristic_server_is_low(*, low_port: int, high_port: int) -> bool | None:
    """The port rule of the module docstring for `low_port <= high_port`; None: no opinion."""
    if low_port < 1024:
        return True
    if low_port < 32768 <= high_port:
        return True
    return None


class _Flow:
    """State of one conversation: endpoint `a` is the lower of the two in key order."""

    __slots__ = (
        "bytes_ab",
        "bytes_ba",
        "client_is_a",
        "first",
        "last",
        "orientation",
        "pkts_ab",
        "pkts_ba",
    )

    def __init__(self, *, timestamp: float, client_is_a: bool, orientation: Orientation) -> None:
        self.first = self.last = timestamp
        self.client_is_a, self.orientation = client_is_a, orientation
        self.pkts_ab = self.bytes_ab = self.pkts_ba = self.bytes_ba = 0


_FlowKey = tuple[str | None, int, bytes, int, bytes, int]


class FlowAggregator:
    """Accumulates frames into per-flow counters; `drain()` hands out the deltas.

    Not thread-safe: the sniff backend serialises `add_frame` and `drain` with a lock.
    Flows idle for `idle_timeout` seconds of packet time are forgotten (only their
    orientation memory is lost; their counts have been drained by then).
    """

    def __init__(
        self,
        *,
        listening: ListeningOracle | None = None,
        node: str | None = None,
        idle_timeout: float = 300.0,
        max_fragments: int = 4096,
    ) -> None:
        self._listening = listening
        self._node = node
        self._idle_timeout = idle_timeout
        self._max_fragments = max_fragments
        self._flows: dict[_FlowKey, _Flow] = {}
        self._dirty: set[_FlowKey] = set()
        self._fragments: dict[tuple[bytes, bytes, int, int], Packet] = {}
        self._watermark = 0.0
        self.frames = 0
        """Frames offered, counted or not."""
        self.skipped: Counter[Skip] = Counter()
        """Frames not counted, by reason."""

    def add_frame(
        self, data: bytes, *, linktype: int, timestamp: float, interface: str | None = None
    ) -> None:
        """Decode one frame and count it (or tally why not)."""
        self.frames += 1
        decoded = decode_frame(data, linktype=linktype)
        if isinstance(decoded, _Fragment):
            decoded = self._join_fragment(decoded)
        if isinstance(decoded, Skip):
            self.skipped[decoded] += 1
        else:
            self.add_packet(decoded, timestamp=timestamp, interface=interface)

    def _join_fragment(self, fragment: _Fragment) -> Packet | Skip:
        if fragment.first is not None:
            if len(self._fragments) >= self._max_fragments:
                del self._fragments[next(iter(self._fragments))]  # oldest datagram first
            self._fragments[fragment.key] = fragment.first
            return fragment.first
        first = self._fragments.get(fragment.key)
        if first is None:
            return Skip.FRAGMENT
        return Packet(
            first.src, first.dst, first.sport, first.dport, first.ipproto, fragment.length
        )

    def add_packet(self, pkt: Packet, *, timestamp: float, interface: str | None = None) -> None:
        """Count one decoded packet in its flow, creating and orienting the flow if new."""
        sender_is_a = (pkt.src, pkt.sport) <= (pkt.dst, pkt.dport)
        if sender_is_a:
            key = (interface, pkt.ipproto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        else:
            key = (interface, pkt.ipproto, pkt.dst, pkt.dport, pkt.src, pkt.sport)
        flow = self._flows.get(key)
        if flow is None:
            client_is_a, orientation = self._orient(pkt, sender_is_a=sender_is_a)
            flow = self._flows[key] = _Flow(
                timestamp=timestamp, client_is_a=client_is_a, orientation=orientation
            )
        elif pkt.hint is not Hint.NONE:
            flow.client_is_a = sender_is_a == (pkt.hint is Hint.CLIENT)
            flow.orientation = Orientation.SYN
        if sender_is_a:
            flow.pkts_ab += 1
            flow.bytes_ab += pkt.length
        else:
            flow.pkts_ba += 1
            flow.bytes_ba += pkt.length
        flow.first = min(flow.first, timestamp)
        flow.last = max(flow.last, timestamp)
        self._watermark = max(self._watermark, timestamp)
        self._dirty.add(key)

    def _orient(self, pkt: Packet, *, sender_is_a: bool) -> tuple[bool, Orientation]:
        """(is endpoint `a` the client, how that was decided) for a flow's first packet."""
        if pkt.hint is not Hint.NONE:
            return sender_is_a == (pkt.hint is Hint.CLIENT), Orientation.SYN
        if pkt.ipproto != _ICMP:
            if self._listening is not None:
                dst_listens = self._listening(_ntop(pkt.dst), pkt.dport, pkt.protocol)
                src_listens = self._listening(_ntop(pkt.src), pkt.sport, pkt.protocol)
                if dst_listens != src_listens:
                    return sender_is_a == dst_listens, Orientation.SOCKET
            low, high = sorted((pkt.sport, pkt.dport))
            if low != high and heuristic_server_is_low(low_port=low, high_port=high):
                sender_is_client = pkt.dport == low
                return sender_is_a == sender_is_client, Orientation.HEURISTIC
        return sender_is_a, Orientation.HEURISTIC

    def drain(self) -> list[Connection]:
        """Flows that saw packets since the last drain, with that interval's counts."""
        out: list[Connection] = []
        idle: list[_FlowKey] = []
        idle_before = self._watermark - self._idle_timeout
        for key, flow in self._flows.items():  # creation order: deterministic for files
            if key in self._dirty:
                out.append(self._connection(key, flow))
                flow.pkts_ab = flow.bytes_ab = flow.pkts_ba = flow.bytes_ba = 0
            elif flow.last < idle_before:
                idle.append(key)
        for key in idle:
            del self._flows[key]
        self._dirty.clear()
        return out

    def _connection(self, key: _FlowKey, flow: _Flow) -> Connection:
        interface, ipproto, a_ip, a_port, b_ip, b_port = key
        a = (_ntop(a_ip), a_port, flow.pkts_ab, flow.bytes_ab)
        b = (_ntop(b_ip), b_port, flow.pkts_ba, flow.bytes_ba)
        client, server = (a, b) if flow.client_is_a else (b, a)
        return Connection(
            client_ip=client[0],
            client_port=client[1],
            server_ip=server[0],
            server_port=server[1],
            protocol=PROTOCOLS[ipproto],
            first_seen=flow.first,
            last_seen=flow.last,
            packets_out=client[2],
            bytes_out=client[3],
            packets_in=server[2],
            bytes_in=server[3],
            orientation=flow.orientation,
            node=self._node,
            interface=interface,
        )

    @property
    def flows(self) -> int:
        """Flows remembered (pending counts or orientation memory)."""
        return len(self._flows)


def _ntop(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)
