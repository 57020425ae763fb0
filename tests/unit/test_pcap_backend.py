"""The pcap backend on real capture files written by scapy, intact and damaged.

Damaged files are made the way they happen: a capture cut short (disk full, copy
interrupted, tcpdump killed) or bytes garbled in a record header or pcapng block.
"""

from __future__ import annotations

import gzip
import logging
import re
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw
from scapy.utils import PcapNgWriter, PcapWriter

from netwatch.capture.base import FlowSource
from netwatch.capture.packets import Skip
from netwatch.capture.pcap import PcapError, PcapSource
from netwatch.core.flow import Connection, Orientation
from netwatch.core.model import Protocol

C, S, DNS, WEB = "10.244.1.5", "10.244.2.7", "10.244.0.10", "10.244.3.3"
C6, S6 = "fd00:10:244:1::5", "fd00:10:244:2::7"
T0 = 1764250000.0


def eth(**fields: object) -> ScapyPacket:
    """Explicit MACs: a bare `Ether()` makes scapy resolve the IP's MAC on the network."""
    return Ether(**{"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02", **fields})


def tcp(src: str, dst: str, sport: int, dport: int, flags: str, payload: int = 0) -> ScapyPacket:
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    packet = eth() / ip / TCP(sport=sport, dport=dport, flags=flags)
    return packet / Raw(b"p" * payload) if payload else packet


def conversation() -> list[ScapyPacket]:
    """A realistic little capture, in time order."""
    frames = [
        # TCP handshake, request, a response in two segments, close.
        tcp(C, S, 43512, 8080, "S"),
        tcp(S, C, 8080, 43512, "SA"),
        tcp(C, S, 43512, 8080, "A"),
        tcp(C, S, 43512, 8080, "PA", 300),
        tcp(S, C, 8080, 43512, "A", 1448),
        tcp(S, C, 8080, 43512, "PA", 1552),
        tcp(C, S, 43512, 8080, "FA"),
        tcp(S, C, 8080, 43512, "FA"),
        # Mid-stream TCP (capture started late): the first packet seen is the server's.
        tcp(WEB, C, 443, 50123, "PA", 900),
        tcp(C, WEB, 50123, 443, "A"),
        # DNS over UDP.
        eth() / IP(src=C, dst=DNS) / UDP(sport=51320, dport=53) / Raw(b"q" * 33),
        eth() / IP(src=DNS, dst=C) / UDP(sport=53, dport=51320) / Raw(b"a" * 93),
        # Link-layer chatter that is not IP.
        eth(dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, psrc=C, pdst=S),
        eth() / ARP(op=2, psrc=S, pdst=C),
        # IPv6 TCP.
        tcp(C6, S6, 40100, 8080, "S"),
        tcp(S6, C6, 8080, 40100, "SA"),
        tcp(C6, S6, 40100, 8080, "PA", 100),
        # ICMP echo.
        eth() / IP(src=C, dst=S) / ICMP(type=8, id=4660, seq=1) / Raw(b"e" * 56),
        eth() / IP(src=S, dst=C) / ICMP(type=0, id=4660, seq=1) / Raw(b"e" * 56),
        # A VLAN-tagged UDP exchange on a high port.
        eth() / Dot1Q(vlan=42) / IP(src=C, dst=S) / UDP(sport=47000, dport=9999) / Raw(b"v" * 10),
    ]
    for i, frame in enumerate(frames):
        frame.time = T0 + i * 0.25
    return frames


def ip_len(frame: ScapyPacket) -> int:
    return len(frame[IP]) if IP in frame else len(frame[IPv6])


def expected() -> list[Connection]:
    f = conversation()

    def total(indices: list[int]) -> int:
        return sum(ip_len(f[i]) for i in indices)

    def at(i: int) -> float:
        return T0 + i * 0.25

    return [
        Connection(C, 43512, S, 8080, Protocol.TCP, at(0), at(7),
                   4, total([0, 2, 3, 6]), 4, total([1, 4, 5, 7]), Orientation.SYN),
        Connection(C, 50123, WEB, 443, Protocol.TCP, at(8), at(9),
                   1, total([9]), 1, total([8]), Orientation.HEURISTIC),
        Connection(C, 51320, DNS, 53, Protocol.UDP, at(10), at(11),
                   1, 61, 1, 121, Orientation.HEURISTIC),
        Connection(C6, 40100, S6, 8080, Protocol.TCP, at(14), at(16),
                   2, total([14, 16]), 1, 60, Orientation.SYN),
        Connection(C, 4660, S, 8, Protocol.ICMP, at(17), at(18),
                   1, 84, 1, 84, Orientation.SYN),
        Connection(C, 47000, S, 9999, Protocol.UDP, at(19), at(19),
                   1, 38, 0, 0, Orientation.HEURISTIC),
    ]  # fmt: skip


def write_pcap(path: Path, frames: list[ScapyPacket], *, nano: bool = False) -> Path:
    with PcapWriter(str(path), nano=nano) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def write_pcapng(path: Path, frames: list[ScapyPacket], *, ifname: str = "veth1a2b") -> Path:
    writer = PcapNgWriter(str(path))
    for frame in frames:
        frame.sniffed_on = ifname
        writer.write(frame)
    writer.close()
    return path


def record_offsets(data: bytes) -> list[int]:
    """Byte offset of each record of a classic (little-endian) pcap file."""
    offsets, pos = [], 24
    while pos < len(data):
        offsets.append(pos)
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    return offsets


def block_offsets(data: bytes, block_type: int) -> list[int]:
    """Byte offset of each pcapng block of one type (little-endian file)."""
    offsets, pos = [], 0
    while pos < len(data):
        kind, length = struct.unpack_from("<II", data, pos)
        if kind == block_type:
            offsets.append(pos)
        pos += length
    return offsets


def counted(conns: list[Connection] | tuple[Connection, ...]) -> tuple[int, int]:
    return (
        sum(c.packets_out + c.packets_in for c in conns),
        sum(c.bytes_out + c.bytes_in for c in conns),
    )


def ip_frames(frames: list[ScapyPacket]) -> tuple[int, int]:
    ips = [f for f in frames if IP in f or IPv6 in f]
    return len(ips), sum(ip_len(f) for f in ips)


def read(path: Path, **kwargs: object) -> tuple[list[Connection], PcapSource]:
    source = PcapSource(path, **kwargs)  # type: ignore[arg-type]
    return list(source.drain()), source


# --- intact files --------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["pcap", "pcap-nanoseconds", "pcapng", "pcap.gz"])
def test_reads_every_connection_of_a_capture(form: str, tmp_path: Path) -> None:
    frames = conversation()
    if form == "pcapng":
        path = write_pcapng(tmp_path / "c.pcapng", frames)
    else:
        path = write_pcap(tmp_path / "c.pcap", frames, nano=form == "pcap-nanoseconds")
    if form == "pcap.gz":
        path = tmp_path / "c.pcap.gz"
        path.write_bytes(gzip.compress((tmp_path / "c.pcap").read_bytes()))
    conns, source = read(path, node="node-1", interface="eth9")
    interface = "veth1a2b" if form == "pcapng" else "eth9"
    want = [replace(c, node="node-1", interface=interface) for c in expected()]
    # pcap stores microseconds (or ns): compare times approximately, the rest exactly.
    assert [replace(c, first_seen=0, last_seen=0) for c in conns] == [
        replace(c, first_seen=0, last_seen=0) for c in want
    ]
    for got, exp in zip(conns, want, strict=True):
        assert got.first_seen == pytest.approx(exp.first_seen, abs=1e-6)
        assert got.last_seen == pytest.approx(exp.last_seen, abs=1e-6)
    assert source.error is None
    assert source.records == len(frames)
    assert source.aggregator.skipped == {Skip.NON_IP: 2}
    assert source.finished
    assert source.drain() == []


def test_is_a_flow_source(tmp_path: Path) -> None:
    source: FlowSource = PcapSource(write_pcap(tmp_path / "c.pcap", conversation()))
    assert not source.finished
    source.close()
    source.close()
    assert source.finished


def test_listening_oracle_is_consulted(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "c.pcap", conversation()[-1:])

    def listening(ip: str, port: int, proto: Protocol) -> bool:
        return (ip, port, proto) == (C, 47000, Protocol.UDP)

    conns, _ = read(path, listening=listening)
    assert (conns[0].server_ip, conns[0].server_port) == (C, 47000)
    assert conns[0].orientation is Orientation.SOCKET


# --- damaged files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cut_into_record", "extra"),
    [(5, 10), (5, 16 + 10), (19, 16 + 5)],
    ids=["mid-header", "mid-data", "mid-data-of-last"],
)
def test_truncated_pcap_names_the_offset_and_keeps_what_came_before(
    cut_into_record: int, extra: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frames = conversation()
    data = write_pcap(tmp_path / "full.pcap", frames).read_bytes()
    offset = record_offsets(data)[cut_into_record]
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[: offset + extra])
    with caplog.at_level(logging.WARNING, logger="netwatch.capture.pcap"):
        conns, source = read(path)
    assert source.error is not None
    assert source.error.offset == offset
    assert str(source.error).startswith(f"{path}: corrupt at byte {offset}: ")
    assert counted(conns) == ip_frames(frames[:cut_into_record])
    assert f"corrupt at byte {offset}" in caplog.text
    assert "returning the" in caplog.text


@pytest.mark.parametrize(
    ("field_offset", "value", "reason"),
    [
        (8, 0x7FFFFFF0, "claims 2147483632 captured bytes"),  # caplen
        (12, 10, "captured of 10 bytes on the wire"),  # wirelen < caplen
        (4, 2_000_000, "impossible sub-second timestamp"),  # usec
    ],
    ids=["caplen", "wirelen", "usec"],
)
def test_garbled_pcap_record_header_is_reported_at_its_offset(
    field_offset: int, value: int, reason: str, tmp_path: Path
) -> None:
    frames = conversation()
    data = bytearray(write_pcap(tmp_path / "full.pcap", frames).read_bytes())
    offset = record_offsets(bytes(data))[9]
    struct.pack_into("<I", data, offset + field_offset, value)
    path = tmp_path / "garbled.pcap"
    path.write_bytes(bytes(data))
    conns, source = read(path)
    assert source.error is not None
    assert source.error.offset == offset
    assert reason in str(source.error)
    assert counted(conns) == ip_frames(frames[:9])


def test_trailing_garbage_after_the_last_record_is_reported(tmp_path: Path) -> None:
    frames = conversation()
    data = write_pcap(tmp_path / "full.pcap", frames).read_bytes()
    path = tmp_path / "tail.pcap"
    path.write_bytes(data + b"not a record")
    conns, source = read(path)
    assert source.error is not None and source.error.offset == len(data)
    assert counted(conns) == ip_frames(frames)


def test_truncated_pcapng_block_is_reported_at_its_offset(tmp_path: Path) -> None:
    frames = conversation()
    data = write_pcapng(tmp_path / "full.pcapng", frames).read_bytes()
    offset = block_offsets(data, 6)[12]  # enhanced packet blocks
    path = tmp_path / "cut.pcapng"
    path.write_bytes(data[: offset + 30])
    conns, source = read(path)
    assert source.error is not None and source.error.offset == offset
    assert "block truncated or malformed" in str(source.error)
    assert counted(conns) == ip_frames(frames[:12])


def test_garbled_pcapng_block_length_is_reported_at_its_offset(tmp_path: Path) -> None:
    frames = conversation()
    data = bytearray(write_pcapng(tmp_path / "full.pcapng", frames).read_bytes())
    offset = block_offsets(bytes(data), 6)[4]
    struct.pack_into("<I", data, offset + 4, 0xFFFFFF00)  # absurd total length
    path = tmp_path / "garbled.pcapng"
    path.write_bytes(bytes(data))
    conns, source = read(path)
    assert source.error is not None and source.error.offset == offset
    assert counted(conns) == ip_frames(frames[:4])


def test_truncated_gzip_names_the_decompressed_offset(tmp_path: Path) -> None:
    frames = conversation()
    data = write_pcap(tmp_path / "full.pcap", frames).read_bytes()
    packed = gzip.compress(data)
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(packed[: len(packed) - 40])
    conns, source = read(path)
    assert source.error is not None
    assert "of the decompressed data" in str(source.error)
    assert 0 < counted(conns)[0] < ip_frames(frames)[0]


def test_strict_mode_raises_instead_of_returning_a_partial_result(tmp_path: Path) -> None:
    data = write_pcap(tmp_path / "full.pcap", conversation()).read_bytes()
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:-5])
    source = PcapSource(path, strict=True)
    with pytest.raises(PcapError, match=r"cut\.pcap: corrupt at byte \d+: record truncated"):
        source.drain()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a pcap or pcapng capture (empty file)"),
        (b"hello, this is a text file\n", "not a pcap or pcapng capture"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "not a pcap or pcapng capture"),  # header cut short
    ],
    ids=["empty", "text", "short-header"],
)
def test_files_that_are_not_captures_fail_at_once(
    content: bytes, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(content)
    with pytest.raises(PcapError, match=re.escape(message)) as info:
        PcapSource(path)
    assert str(info.value).startswith(str(path))


def test_missing_file_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(PcapError, match="No such file"):
        PcapSource(tmp_path / "nope.pcap")
