"""ClusterIP → backend: the node's conntrack table tells where a Service connection went.

What each observer sees (kube-proxy iptables/nftables DNAT runs in the node namespace's
PREROUTING, i.e. after the client pod's packet crossed its veth):

* the CLIENT pod's host-side veth (TC ingress) sees the pre-DNAT tuple
  `client → ClusterIP:port`, and the replies already un-NATed (`ClusterIP:port → client`);
* the SERVER pod's veth sees the post-DNAT tuple `client → backend:targetPort`;
* conntrack in the client's node namespace holds both: original tuple (pre-DNAT) and reply
  tuple (`backend:targetPort → client`).

So a client-side observation whose destination is no pod is looked up here by its
original tuple; a different reply source means DNAT and gives the backend. The server's
node (which reports the connection, see `assemble.py`) learns the Service from that
mapping when client and server share the node; across nodes the server's conntrack has no
NAT and the record carries no `service_ip` (the identity layer can still tell Services
from EndpointSlices). Read from `/proc/<self>/net/nf_conntrack` (DESIGN §9: it exists);
each drain reads it at most once and only when some destination needs resolving.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from netwatch.core.model import Protocol

DEFAULT_PATH = Path("/proc/self/net/nf_conntrack")


@dataclass(frozen=True, slots=True)
class Query:
    protocol: Protocol
    client_ip: str
    client_port: int
    dest_ip: str
    dest_port: int


@dataclass(frozen=True, slots=True)
class Dnat:
    service_ip: str
    service_port: int
    backend_ip: str
    backend_port: int


def _conntrack_ip(ip: str) -> str:
    """The kernel prints IPv6 with %pI6: every group, zero-padded."""
    addr = ipaddress.ip_address(ip)
    return addr.exploded if addr.version == 6 else str(addr)


def _tuple_after(line: bytes, start: int) -> tuple[str, int] | None:
    """(src, sport) of the first `src= dst= sport= dport=` tuple at or after `start`."""
    i = line.find(b"src=", start)
    if i < 0:
        return None
    fields = dict(part.split(b"=", 1) for part in line[i:].split(b" ", 4)[:4] if b"=" in part)
    try:
        return str(ipaddress.ip_address(fields[b"src"].decode())), int(fields[b"sport"])
    except (KeyError, ValueError):
        return None


class ConntrackReader:
    def __init__(self, path: Path = DEFAULT_PATH) -> None:
        self.path = path
        self.reads = 0

    @property
    def available(self) -> bool:
        return self.path.exists()

    def resolve(self, queries: Iterable[Query]) -> dict[Query, Dnat | None]:
        """DNAT per query (None: tracked without DNAT, or not tracked at all)."""
        wanted = list(queries)
        if not wanted:
            return {}
        try:
            table = self.path.read_bytes()
        except OSError:
            return dict.fromkeys(wanted)
        self.reads += 1
        return {q: self._lookup(table, q) for q in wanted}

    @staticmethod
    def _lookup(table: bytes, q: Query) -> Dnat | None:
        needle = (
            f"src={_conntrack_ip(q.client_ip)} dst={_conntrack_ip(q.dest_ip)} "
            f"sport={q.client_port} dport={q.dest_port} "
        ).encode()
        proto = q.protocol.value.lower().encode()
        pos = table.find(needle)
        while pos >= 0:
            start = table.rfind(b"\n", 0, pos) + 1
            end = table.find(b"\n", pos)
            line = table[start : end if end >= 0 else len(table)]
            head = line.split(None, 3)
            # the original tuple is the first one on the line
            if len(head) > 2 and head[2] == proto and line.find(b"src=") == pos - start:
                reply = _tuple_after(line, pos - start + len(needle))
                if reply is None:
                    return None
                backend_ip, backend_port = reply
                if (backend_ip, backend_port) == (q.dest_ip, q.dest_port):
                    return None
                return Dnat(
                    service_ip=q.dest_ip,
                    service_port=q.dest_port,
                    backend_ip=backend_ip,
                    backend_port=backend_port,
                )
            pos = table.find(needle, pos + 1)
        return None
