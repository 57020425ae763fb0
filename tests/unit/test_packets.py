"""Frame decoding and per-flow aggregation shared by the sniff and pcap backends.

Frames are built with scapy and fed as bytes; expected byte counts come from scapy's
own view of the IP layer (`len(ip)`), an independent reading of the same packets.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import ARP, GRE, CookedLinux, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP, SCTPChunkInit, SCTPChunkInitAck
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Padding, Raw

from netwatch.capture.packets import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    FlowAggregator,
    Skip,
)
from netwatch.core.flow import Connection, Orientation
from netwatch.core.model import Protocol

C, S = "10.244.1.5", "10.244.2.7"
C6, S6 = "fd00:10:244:1::5", "fd00:10:244:2::7"


def eth(**fields: object) -> ScapyPacket:
    """Explicit MACs: a bare `Ether()` makes scapy resolve the IP's MAC on the network."""
    return Ether(**{"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02", **fields})


def feed(agg: FlowAggregator, frames: list[ScapyPacket], *, start: float = 100.0) -> None:
    for i, frame in enumerate(frames):
        agg.add_frame(bytes(frame), linktype=LINKTYPE_ETHERNET, timestamp=start + i)


def only(conns: list[Connection]) -> Connection:
    assert len(conns) == 1, conns
    return conns[0]


def ip_len(frames: list[ScapyPacket]) -> int:
    total = 0
    for frame in frames:
        layer = frame[IP] if IP in frame else frame[IPv6]
        total += len(layer)
    return total


def tcp_conversation(
    *, client: str = C, server: str = S, cport: int = 43512, sport: int = 8080
) -> tuple[list[ScapyPacket], list[ScapyPacket]]:
    """A handshake, a request, a larger response, and a close: (client→server, back)."""
    ip_c = IPv6 if ":" in client else IP
    out = [
        eth() / ip_c(src=client, dst=server) / TCP(sport=cport, dport=sport, flags="S"),
        eth() / ip_c(src=client, dst=server) / TCP(sport=cport, dport=sport, flags="A"),
        eth()
        / ip_c(src=client, dst=server)
        / TCP(sport=cport, dport=sport, flags="PA")
        / Raw(b"GET / HTTP/1.1\r\n\r\n"),
        eth() / ip_c(src=client, dst=server) / TCP(sport=cport, dport=sport, flags="FA"),
    ]
    back = [
        eth() / ip_c(src=server, dst=client) / TCP(sport=sport, dport=cport, flags="SA"),
        eth()
        / ip_c(src=server, dst=client)
        / TCP(sport=sport, dport=cport, flags="PA")
        / Raw(b"x" * 1200),
        eth() / ip_c(src=server, dst=client) / TCP(sport=sport, dport=cport, flags="FA"),
    ]
    return out, back


def interleave(out: list[ScapyPacket], back: list[ScapyPacket]) -> list[ScapyPacket]:
    frames: list[ScapyPacket] = []
    for i in range(max(len(out), len(back))):
        frames += out[i : i + 1] + back[i : i + 1]
    return frames


@pytest.mark.parametrize(("client", "server"), [(C, S), (C6, S6)], ids=["ipv4", "ipv6"])
def test_tcp_handshake_gives_one_syn_oriented_record_with_ip_byte_counts(
    client: str, server: str
) -> None:
    out, back = tcp_conversation(client=client, server=server)
    agg = FlowAggregator(node="node-1")
    feed(agg, interleave(out, back))
    conn = only(agg.drain())
    assert conn.five_tuple == (client, 43512, server, 8080, Protocol.TCP)
    assert conn.orientation is Orientation.SYN
    assert (conn.packets_out, conn.bytes_out) == (len(out), ip_len(out))
    assert (conn.packets_in, conn.bytes_in) == (len(back), ip_len(back))
    assert (conn.first_seen, conn.last_seen) == (100.0, 106.0)
    assert conn.node == "node-1"


def test_syn_ack_alone_orients_when_the_syn_was_missed() -> None:
    agg = FlowAggregator()
    feed(agg, [eth() / IP(src=S, dst=C) / TCP(sport=5000, dport=6000, flags="SA")])
    conn = only(agg.drain())
    assert (conn.client_ip, conn.server_ip, conn.server_port) == (C, S, 5000)
    assert conn.orientation is Orientation.SYN


@pytest.mark.parametrize(
    ("first_sport", "first_dport", "server_port"),
    [
        (40000, 8080, 8080),  # ephemeral client, registered server
        (8080, 40000, 8080),  # first packet seen is the reply: still the lower port
        (443, 51000, 443),  # well-known
        (53, 1053, 53),  # well-known faces non-well-known
        (22, 80, 22),  # both well-known: the lower
        (5000, 6000, 6000),  # both registered: the first packet's destination
        (50000, 60000, 60000),  # both ephemeral: the first packet's destination
        (60000, 50000, 50000),
    ],
)
def test_heuristic_orientation_rule(first_sport: int, first_dport: int, server_port: int) -> None:
    agg = FlowAggregator()
    first = eth() / IP(src=C, dst=S) / TCP(sport=first_sport, dport=first_dport, flags="A")
    reply = eth() / IP(src=S, dst=C) / TCP(sport=first_dport, dport=first_sport, flags="A")
    feed(agg, [first, reply])
    conn = only(agg.drain())
    assert conn.server_port == server_port
    assert conn.orientation is Orientation.HEURISTIC
    assert conn.packets_out == conn.packets_in == 1


@pytest.mark.parametrize(
    ("listeners", "server_port", "orientation"),
    [
        ({(S, 40001)}, 40001, Orientation.SOCKET),  # a UDP server on a high port
        ({(C, 40000)}, 40000, Orientation.SOCKET),  # first packet came from the server
        ({(C, 40000), (S, 40001)}, 40001, Orientation.HEURISTIC),  # ambiguous
        (set(), 40001, Orientation.HEURISTIC),
    ],
)
def test_listening_oracle_orients_udp_on_high_ports(
    listeners: set[tuple[str, int]], server_port: int, orientation: Orientation
) -> None:
    asked: list[tuple[str, int, Protocol]] = []

    def listening(ip: str, port: int, proto: Protocol) -> bool:
        asked.append((ip, port, proto))
        return (ip, port) in listeners

    agg = FlowAggregator(listening=listening)
    feed(
        agg,
        [
            eth() / IP(src=C, dst=S) / UDP(sport=40000, dport=40001) / Raw(b"q" * 30),
            eth() / IP(src=S, dst=C) / UDP(sport=40001, dport=40000) / Raw(b"r" * 300),
            eth() / IP(src=C, dst=S) / UDP(sport=40000, dport=40001) / Raw(b"q" * 30),
        ],
    )
    conn = only(agg.drain())
    assert (conn.server_port, conn.orientation) == (server_port, orientation)
    assert {a[2] for a in asked} == {Protocol.UDP}
    assert len(asked) == 2, "the oracle is asked once per side, when the flow is new"


def test_udp_request_response_is_one_flow() -> None:
    query = eth() / IP(src=C, dst=S) / UDP(sport=41234, dport=53) / Raw(b"q" * 40)
    answer = eth() / IP(src=S, dst=C) / UDP(sport=53, dport=41234) / Raw(b"a" * 120)
    agg = FlowAggregator()
    feed(agg, [query, answer])
    conn = only(agg.drain())
    assert conn.five_tuple == (C, 41234, S, 53, Protocol.UDP)
    assert (conn.bytes_out, conn.bytes_in) == (len(query[IP]), len(answer[IP]))


def test_sctp_init_orients_like_a_syn() -> None:
    agg = FlowAggregator()
    feed(
        agg,
        [
            eth() / IP(src=C, dst=S) / SCTP(sport=50000, dport=38412) / SCTPChunkInit(),
            eth() / IP(src=S, dst=C) / SCTP(sport=38412, dport=50000) / SCTPChunkInitAck(),
        ],
    )
    conn = only(agg.drain())
    assert conn.five_tuple == (C, 50000, S, 38412, Protocol.SCTP)
    assert conn.orientation is Orientation.SYN


@pytest.mark.parametrize(
    ("query", "reply", "client", "server", "request_type"),
    [
        (IP(src=C, dst=S) / ICMP(type=8, id=77), IP(src=S, dst=C) / ICMP(type=0, id=77), C, S, 8),
        (
            IPv6(src=C6, dst=S6) / ICMPv6EchoRequest(id=77),
            IPv6(src=S6, dst=C6) / ICMPv6EchoReply(id=77),
            C6,
            S6,
            128,
        ),
    ],
    ids=["icmp", "icmpv6"],
)
def test_icmp_echo_is_keyed_by_identifier_and_request_type(
    query: ScapyPacket, reply: ScapyPacket, client: str, server: str, request_type: int
) -> None:
    agg = FlowAggregator()
    feed(agg, [eth() / query, eth() / reply, eth() / query, eth() / reply])
    conn = only(agg.drain())
    assert conn.five_tuple == (client, 77, server, request_type, Protocol.ICMP)
    assert (conn.packets_out, conn.packets_in) == (2, 2)
    assert conn.orientation is Orientation.SYN


def test_icmp_reply_alone_still_names_the_requester_as_client() -> None:
    agg = FlowAggregator()
    feed(agg, [eth() / IP(src=S, dst=C) / ICMP(type=0, id=9)])
    assert only(agg.drain()).five_tuple == (C, 9, S, 8, Protocol.ICMP)


def test_icmp_error_messages_are_keyed_by_type_from_their_sender() -> None:
    agg = FlowAggregator()
    feed(agg, [eth() / IPv6(src=S6, dst=C6) / ICMPv6DestUnreach() / IPv6() / UDP()])
    assert only(agg.drain()).five_tuple == (S6, 0, C6, 1, Protocol.ICMP)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (eth() / ARP(), Skip.NON_IP),
        (eth(type=0x88CC) / Raw(b"\x02\x07" + b"\x00" * 30), Skip.NON_IP),  # LLDP
        (eth() / IP(src=C, dst=S) / GRE() / Raw(b"x" * 20), Skip.IP_PROTOCOL),
        (eth() / IP(src=C, dst=S, proto=6) / Raw(b"\x01\x02"), Skip.TRUNCATED),
    ],
    ids=["arp", "lldp", "gre", "truncated-tcp"],
)
def test_frames_that_are_not_counted_are_tallied(frame: ScapyPacket, reason: Skip) -> None:
    agg = FlowAggregator()
    feed(agg, [frame, eth() / IP(src=C, dst=S) / UDP(sport=40000, dport=53)])
    assert len(agg.drain()) == 1
    assert agg.skipped == {reason: 1}
    assert agg.frames == 2


def test_vlan_tags_and_ethernet_padding_do_not_change_the_counts() -> None:
    core = IP(src=C, dst=S) / TCP(sport=40000, dport=80, flags="S")
    assert len(bytes(eth() / core)) < 60
    frames = [
        eth() / core / Padding(b"\x00" * 6),  # padded to the Ethernet minimum
        eth() / Dot1Q(vlan=10) / core,
        eth() / Dot1AD(vlan=20) / Dot1Q(vlan=10) / core,  # QinQ
    ]
    agg = FlowAggregator()
    for frame in frames:
        agg.add_frame(bytes(frame), linktype=LINKTYPE_ETHERNET, timestamp=1.0)
    conn = only(agg.drain())
    assert (conn.packets_out, conn.bytes_out) == (3, 3 * len(core))


def test_a_snap_length_cut_still_counts_the_whole_ip_packet() -> None:
    frame = eth() / IP(src=C, dst=S) / UDP(sport=40000, dport=9000) / Raw(b"z" * 1400)
    agg = FlowAggregator()
    agg.add_frame(bytes(frame)[:96], linktype=LINKTYPE_ETHERNET, timestamp=1.0)
    assert only(agg.drain()).bytes_out == len(frame[IP]) == 1428


def test_ipv6_extension_headers_are_walked_and_counted() -> None:
    packet = IPv6(src=C6, dst=S6) / IPv6ExtHdrHopByHop() / TCP(sport=40000, dport=443, flags="S")
    agg = FlowAggregator()
    agg.add_frame(bytes(eth() / packet), linktype=LINKTYPE_ETHERNET, timestamp=1.0)
    conn = only(agg.drain())
    assert conn.five_tuple == (C6, 40000, S6, 443, Protocol.TCP)
    assert conn.bytes_out == len(packet) == 40 + 8 + 20


@pytest.mark.parametrize(
    ("linktype", "wrap"),
    [
        (LINKTYPE_RAW, lambda p: p),
        (LINKTYPE_LINUX_SLL, lambda p: CookedLinux(proto=0x0800) / p),
        (LINKTYPE_LINUX_SLL2, lambda p: b"\x08\x00" + b"\x00" * 18 + bytes(p)),
        (LINKTYPE_NULL, lambda p: (2).to_bytes(4, "little") + bytes(p)),
    ],
    ids=["raw", "sll", "sll2", "null"],
)
def test_other_link_layers_decode_to_the_same_record(linktype: int, wrap: object) -> None:
    packet = IP(src=C, dst=S) / TCP(sport=40000, dport=80, flags="S")
    agg = FlowAggregator()
    agg.add_frame(bytes(wrap(packet)), linktype=linktype, timestamp=1.0)  # type: ignore[operator]
    conn = only(agg.drain())
    assert (conn.five_tuple, conn.bytes_out) == ((C, 40000, S, 80, Protocol.TCP), len(packet))


def test_unknown_link_type_is_skipped() -> None:
    agg = FlowAggregator()
    agg.add_frame(b"\x00" * 64, linktype=147, timestamp=1.0)
    assert agg.drain() == []
    assert agg.skipped == {Skip.LINKTYPE: 1}


def test_ip_fragments_join_their_first_fragment_flow() -> None:
    from scapy.layers.inet import fragment

    datagram = IP(src=C, dst=S, id=4242) / UDP(sport=40000, dport=4789) / Raw(b"f" * 3000)
    pieces = fragment(datagram, fragsize=1000)
    assert len(pieces) == 4
    agg = FlowAggregator()
    for piece in pieces:
        agg.add_frame(bytes(eth() / piece), linktype=LINKTYPE_ETHERNET, timestamp=1.0)
    orphan = IP(src=C, dst=S, id=999, frag=100) / Raw(b"o" * 100)
    agg.add_frame(bytes(eth() / orphan), linktype=LINKTYPE_ETHERNET, timestamp=2.0)
    conn = only(agg.drain())
    assert (conn.server_port, conn.packets_out) == (4789, 4)
    assert conn.bytes_out == sum(len(p) for p in pieces)
    assert agg.skipped == {Skip.FRAGMENT: 1}


def test_drain_returns_deltas_and_keeps_first_seen() -> None:
    out, back = tcp_conversation()
    agg = FlowAggregator()
    feed(agg, [out[0], back[0]], start=10.0)
    first = only(agg.drain())
    assert (first.packets_out, first.packets_in) == (1, 1)
    assert agg.drain() == [], "nothing new, nothing reported"
    feed(agg, [out[2], back[1], back[2]], start=20.0)
    second = only(agg.drain())
    assert (second.packets_out, second.bytes_out) == (1, ip_len([out[2]]))
    assert (second.packets_in, second.bytes_in) == (2, ip_len(back[1:]))
    assert (second.first_seen, second.last_seen) == (10.0, 22.0)
    assert second.orientation is Orientation.SYN, "orientation is remembered across drains"


def test_idle_flows_are_forgotten_after_the_timeout() -> None:
    agg = FlowAggregator(idle_timeout=60.0)
    feed(agg, [eth() / IP(src=C, dst=S) / UDP(sport=40000, dport=53)], start=0.0)
    agg.drain()
    feed(agg, [eth() / IP(src=C, dst=S) / UDP(sport=40001, dport=53)], start=30.0)
    agg.drain()
    assert agg.flows == 2
    feed(agg, [eth() / IP(src=C, dst=S) / UDP(sport=40002, dport=53)], start=61.0)
    agg.drain()
    assert agg.flows == 2, "the flow last seen at 0 is idle for more than 60 s"


def test_same_flow_on_two_interfaces_is_two_records() -> None:
    frame = bytes(eth() / IP(src=C, dst=S) / TCP(sport=40000, dport=80, flags="S"))
    agg = FlowAggregator()
    agg.add_frame(frame, linktype=LINKTYPE_ETHERNET, timestamp=1.0, interface="veth-a")
    agg.add_frame(frame, linktype=LINKTYPE_ETHERNET, timestamp=1.1, interface="cni0")
    assert sorted(c.interface or "" for c in agg.drain()) == ["cni0", "veth-a"]


def test_a_new_handshake_on_a_reused_tuple_reorients_the_flow() -> None:
    agg = FlowAggregator()
    feed(agg, [eth() / IP(src=C, dst=S) / TCP(sport=6000, dport=7000, flags="S")])
    assert only(agg.drain()).client_ip == C
    feed(agg, [eth() / IP(src=S, dst=C) / TCP(sport=7000, dport=6000, flags="S")])
    conn = only(agg.drain())
    assert (conn.client_ip, conn.client_port, conn.packets_out) == (S, 7000, 1)
