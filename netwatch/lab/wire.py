"""What lab clients and servers say to each other: the request header and DNS messages.

Standard library only: `agentlet` imports this inside every pod, and a pod process
should start in tens of milliseconds.

Every TCP round and UDP datagram a lab client sends starts with a 20-byte header that is
part of the payload (request sizes count it):

    offset 0  b"NW"       magic
           2  u8          version (1)
           3  u8          flags (unused, 0)
           4  u32         request length, header included (TCP: bytes in this round)
           8  u32         response length the server must send back (0: none)
          12  8 bytes     connection id, chosen by the client

The connection id lets the traffic driver find a connection in the server's log even
after NAT (ClusterIP DNAT, masquerade to the internet host) rewrote the addresses.
DNS has no room for it: DNS queries are matched by transaction id and source port.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"NW"
VERSION = 1
HEADER = struct.Struct("!2sBBII8s")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 20
FILL = bytes(range(256)) * 256
"""64 KiB of filler, sliced for request and response bodies."""


@dataclass(frozen=True, slots=True)
class Header:
    request: int
    response: int
    conn_id: bytes


def pack_header(*, request: int, response: int, conn_id: bytes) -> bytes:
    if request < HEADER_SIZE:
        raise ValueError(f"a request carries the {HEADER_SIZE}-byte header; got {request}")
    return HEADER.pack(MAGIC, VERSION, 0, request, response, conn_id)


def unpack_header(data: bytes) -> Header | None:
    """The header at the start of `data`, or None when it is not a lab request."""
    if len(data) < HEADER_SIZE:
        return None
    magic, version, _flags, request, response, conn_id = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or request < HEADER_SIZE:
        return None
    return Header(request, response, conn_id)


def request_bytes(*, request: int, response: int, conn_id: bytes) -> bytes:
    """A whole request (header and filler) of exactly `request` bytes; for datagrams."""
    head = pack_header(request=request, response=response, conn_id=conn_id)
    return head + filler(request - HEADER_SIZE)


def filler(size: int) -> bytes:
    if size <= len(FILL):
        return FILL[:size]
    return (FILL * (size // len(FILL) + 1))[:size]


# ------------------------------------------------------------------------- DNS

DNS_TYPE_A = 1
DNS_CLASS_IN = 1
RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4


@dataclass(frozen=True, slots=True)
class DnsQuestion:
    txid: int
    name: str
    qtype: int
    qclass: int
    flags: int
    end: int
    """Offset just past the question section."""


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    txid: int
    rcode: int
    addresses: tuple[str, ...]


def build_query(*, txid: int, name: str, qtype: int = DNS_TYPE_A) -> bytes:
    """A standard recursive query for one name."""
    header = struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0)
    return header + encode_name(name) + struct.pack("!HH", qtype, DNS_CLASS_IN)


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad DNS label in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def parse_question(message: bytes) -> DnsQuestion | None:
    """The first question of a query, or None if the message is malformed."""
    if len(message) < 12:
        return None
    txid, flags, qdcount = struct.unpack_from("!HHH", message)
    if qdcount < 1:
        return None
    labels: list[str] = []
    pos = 12
    while True:
        if pos >= len(message):
            return None
        length = message[pos]
        pos += 1
        if length == 0:
            break
        if length >= 64 or pos + length > len(message):
            return None  # no compression in questions we accept
        labels.append(message[pos : pos + length].decode("ascii", "replace").lower())
        pos += length
    if pos + 4 > len(message):
        return None
    qtype, qclass = struct.unpack_from("!HH", message, pos)
    return DnsQuestion(txid, ".".join(labels), qtype, qclass, flags, pos + 4)


def build_response(query: bytes, question: DnsQuestion, addresses: list[str] | None) -> bytes:
    """Answer `question` with A records (`addresses`), or NXDOMAIN when it is None."""
    rd = question.flags & 0x0100
    if addresses is None:
        rcode, answers = RCODE_NXDOMAIN, list[str]()
    elif question.qclass != DNS_CLASS_IN:
        rcode, answers = RCODE_NOTIMP, []
    elif question.qtype != DNS_TYPE_A:
        rcode, answers = RCODE_NOERROR, []  # the name exists, but has no such record
    else:
        rcode, answers = RCODE_NOERROR, addresses
    flags = 0x8000 | 0x0400 | rd | 0x0080 | rcode  # QR, AA, RD copied, RA
    header = struct.pack("!HHHHHH", question.txid, flags, 1, len(answers), 0, 0)
    body = query[12 : question.end]
    for address in answers:
        rdata = bytes(int(part) for part in address.split("."))
        # 0xc00c: a compression pointer to the question's name at offset 12
        body += struct.pack("!HHHIH", 0xC00C, DNS_TYPE_A, DNS_CLASS_IN, 30, 4) + rdata
    return header + body


def parse_response(message: bytes) -> DnsAnswer | None:
    """Transaction id, rcode and A-record addresses of a response to `build_query`."""
    question = parse_question(message)
    if question is None or not question.flags & 0x8000:
        return None
    (ancount,) = struct.unpack_from("!H", message, 6)
    pos = question.end
    addresses: list[str] = []
    for _ in range(ancount):
        pos = _skip_name(message, pos)
        if pos < 0 or pos + 10 > len(message):
            return None
        rtype, _rclass, _ttl, rdlength = struct.unpack_from("!HHIH", message, pos)
        pos += 10
        if pos + rdlength > len(message):
            return None
        if rtype == DNS_TYPE_A and rdlength == 4:
            addresses.append(".".join(str(b) for b in message[pos : pos + 4]))
        pos += rdlength
    return DnsAnswer(question.txid, question.flags & 0x000F, tuple(addresses))


def _skip_name(message: bytes, pos: int) -> int:
    while pos < len(message):
        length = message[pos]
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + length
        if length == 0:
            return pos
    return -1
