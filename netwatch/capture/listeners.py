"""The listening-socket oracle: who is the server, from the pods' own socket tables.

A TCP SYN names the client, but connections already open when the capture started (or
whose SYN fell into an earlier, lost drain) and UDP have none. The pod's network
namespace knows better than any port-number guess: a TCP socket in LISTEN on the port, an
SCTP endpoint listening, or an unconnected UDP socket bound to it makes that end the
server; a connected socket to the peer without such a listener makes it the client.

The namespace of the pod behind a host-side veth is found without touching it: the veth
announces its peer's namespace as an id (IFLA_LINK_NETNSID); each process's
`/proc/<pid>/ns/net` is asked for its id (RTM_GETNSID, `nsid_of`), and the socket tables
are read from `/proc/<pid>/net/{tcp,tcp6,udp,udp6,sctp/eps}` of any process inside it
(every pod runs at least its pause/sandbox process). `proc` is injectable for tests.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from netwatch.core.model import Protocol

_TCP_LISTEN = 0x0A
_WILDCARD = ""


def _hex_ip(text: str) -> str:
    """An address as /proc/net/{tcp,udp}[6] prints it: 32-bit words in host byte order."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(words)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return _WILDCARD if addr.is_unspecified else str(addr)


def _parse_inet(path: Path) -> Iterator[tuple[str, int, str, int, int]]:
    """(local ip, local port, remote ip, remote port, state) per line of a /proc/net table."""
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        local, remote, state = fields[1], fields[2], fields[3]
        lip, lport = local.split(":")
        rip, rport = remote.split(":")
        yield _hex_ip(lip), int(lport, 16), _hex_ip(rip), int(rport, 16), int(state, 16)


def _parse_sctp_eps(path: Path) -> Iterator[tuple[str, int]]:
    # ENDPT SOCK STY SST HBKT LPORT UID INODE LADDRS...
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return
    for line in lines:
        fields = line.split()
        if len(fields) < 9:
            continue
        port = int(fields[5])
        for addr in fields[8:]:
            ip = ipaddress.ip_address(addr)
            yield (_WILDCARD if ip.is_unspecified else str(ip)), port


@dataclass(frozen=True, slots=True)
class SocketTable:
    """The sockets of one network namespace that matter for orientation."""

    tcp_listen: frozenset[tuple[str, int]] = frozenset()
    tcp_active: frozenset[tuple[str, int, str, int]] = frozenset()
    udp_unconnected: frozenset[tuple[str, int]] = frozenset()
    udp_connected: frozenset[tuple[str, int, str, int]] = frozenset()
    sctp_listen: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def read(cls, net_dir: Path) -> SocketTable:
        """Parse `<net_dir>/{tcp,tcp6,udp,udp6,sctp/eps}` (a /proc/<pid>/net directory)."""
        tcp_listen, tcp_active = set(), set()
        udp_unconnected, udp_connected = set(), set()
        for name in ("tcp", "tcp6"):
            for lip, lport, rip, rport, state in _parse_inet(net_dir / name):
                if state == _TCP_LISTEN:
                    tcp_listen.add((lip, lport))
                else:
                    tcp_active.add((lip, lport, rip, rport))
        for name in ("udp", "udp6"):
            for lip, lport, rip, rport, _state in _parse_inet(net_dir / name):
                if rport == 0 and rip == _WILDCARD:
                    udp_unconnected.add((lip, lport))
                else:
                    udp_connected.add((lip, lport, rip, rport))
        return cls(
            tcp_listen=frozenset(tcp_listen),
            tcp_active=frozenset(tcp_active),
            udp_unconnected=frozenset(udp_unconnected),
            udp_connected=frozenset(udp_connected),
            sctp_listen=frozenset(_parse_sctp_eps(net_dir / "sctp" / "eps")),
        )

    @staticmethod
    def _bound(table: frozenset[tuple[str, int]], ip: str, port: int) -> bool:
        return (ip, port) in table or (_WILDCARD, port) in table

    def serves(self, protocol: Protocol, ip: str, port: int) -> bool:
        """A listener (TCP/SCTP) or an unconnected bound socket (UDP) on ip:port."""
        if protocol is Protocol.TCP:
            return self._bound(self.tcp_listen, ip, port)
        if protocol is Protocol.UDP:
            return self._bound(self.udp_unconnected, ip, port)
        if protocol is Protocol.SCTP:
            return self._bound(self.sctp_listen, ip, port)
        return False

    def connected(self, protocol: Protocol, ip: str, port: int, peer: tuple[str, int]) -> bool:
        """A socket from ip:port to the peer (TCP: any non-LISTEN state; UDP: connect()ed)."""
        table = self.tcp_active if protocol is Protocol.TCP else self.udp_connected
        pip, pport = peer
        return (ip, port, pip, pport) in table or (_WILDCARD, port, pip, pport) in table


class End(enum.Enum):
    POD = "pod"
    PEER = "peer"

    @property
    def other(self) -> End:
        return End.PEER if self is End.POD else End.POD


def server_by_sockets(
    *,
    protocol: Protocol,
    pod: tuple[str, int],
    peer: tuple[str, int],
    pod_table: SocketTable | None,
    peer_table: SocketTable | None,
    first_packet_to: End | None = None,
) -> End | None:
    """Which end is the server according to the socket tables; None if they cannot tell.

    `first_packet_to`: the end that received the flow's first packet, when the capture
    saw the flow begin — only used to break a UDP tie (a `sendto()` client also holds an
    unconnected bound socket).
    """
    if protocol not in (Protocol.TCP, Protocol.UDP, Protocol.SCTP):
        return None
    ends = {End.POD: (pod, peer, pod_table), End.PEER: (peer, pod, peer_table)}
    serves: dict[End, bool | None] = {}
    client_only: dict[End, bool] = {}
    for end, (me, other, table) in ends.items():
        if table is None:
            serves[end] = None
            client_only[end] = False
            continue
        serves[end] = table.serves(protocol, *me)
        client_only[end] = not serves[end] and table.connected(protocol, *me, other)
    for end in End:
        if serves[end] and serves[end.other] is False:
            return end
    for end in End:
        if client_only[end]:
            return end.other
    for end in End:
        if serves[end] and serves[end.other] is None:  # the other end is not ours to read
            if protocol is Protocol.UDP and first_packet_to is end.other:
                return end.other  # it sent the first datagram from its bound socket
            return end
    if serves[End.POD] and serves[End.PEER] and first_packet_to is not None:
        return first_packet_to
    return None


class NetnsDirectory:
    """Network namespace id (as seen from ours) → a process inside it → its sockets."""

    def __init__(
        self,
        *,
        nsid_of: Callable[[int], int | None],
        proc: Path = Path("/proc"),
        rescan_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nsid_of = nsid_of
        self._proc = proc
        self._interval = rescan_interval_s
        self._clock = clock
        self._pid_by_nsid: dict[int, int] = {}
        self._known_inodes: set[int] = set()
        self._last_scan = -1e9
        self._tables: dict[int, SocketTable] = {}

    def new_generation(self) -> None:
        """Forget cached socket tables (call once per drain)."""
        self._tables.clear()

    def _scan(self) -> None:
        now = self._clock()
        if now - self._last_scan < self._interval:
            return
        self._last_scan = now
        try:
            own = (self._proc / "self" / "ns" / "net").stat().st_ino
        except OSError:
            own = -1
        seen: set[int] = set()
        for entry in os.scandir(self._proc):
            if not entry.name.isdigit():
                continue
            ns_path = Path(entry.path, "ns", "net")
            try:
                inode = ns_path.stat().st_ino
            except OSError:
                continue
            if inode == own or inode in seen:
                continue
            seen.add(inode)
            if inode in self._known_inodes:
                continue
            try:
                fd = os.open(ns_path, os.O_RDONLY)
            except OSError:
                continue
            try:
                nsid = self._nsid_of(fd)
            finally:
                os.close(fd)
            if nsid is not None:  # without an id it is no veth peer of ours (yet)
                self._known_inodes.add(inode)
                self._pid_by_nsid[nsid] = int(entry.name)

    def pid_for(self, nsid: int) -> int | None:
        pid = self._pid_by_nsid.get(nsid)
        if pid is not None and (self._proc / str(pid)).exists():
            return pid
        self._pid_by_nsid.pop(nsid, None)
        self._known_inodes.clear()  # a pid died: re-ask every namespace next scan
        self._scan()
        return self._pid_by_nsid.get(nsid)

    def sockets(self, nsid: int) -> SocketTable | None:
        if nsid in self._tables:
            return self._tables[nsid]
        pid = self.pid_for(nsid)
        if pid is None:
            return None
        table = SocketTable.read(self._proc / str(pid) / "net")
        self._tables[nsid] = table
        return table


def local_addresses(net_dir: Path) -> set[str]:
    """The namespace's own addresses: /32 LOCAL entries of fib_trie, and if_inet6."""
    found: set[str] = set()
    last: str | None = None
    try:
        for line in (net_dir / "fib_trie").read_text().splitlines():
            text = line.strip()
            if text.startswith("|-- "):
                last = text[4:]
            elif text == "/32 host LOCAL" and last is not None:
                found.add(last)
    except OSError:
        pass
    try:
        for line in (net_dir / "if_inet6").read_text().splitlines():
            if line:
                found.add(str(ipaddress.IPv6Address(bytes.fromhex(line.split()[0]))))
    except OSError:
        pass
    found.discard("127.0.0.1")
    found.discard("::1")
    return found


class HostSockets:
    """`listening(ip, port, protocol)` over every network namespace of the host.

    The sniff backend's orientation oracle (`packets.ListeningOracle`): it sees IPs, not
    veths, so the namespace is found by address — the one holding `ip` as a local
    address — and its socket table answers. Refreshed at most every `ttl_s`.
    """

    def __init__(
        self,
        *,
        proc: Path = Path("/proc"),
        ttl_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._proc = proc
        self._ttl = ttl_s
        self._clock = clock
        self._at = -1e9
        self._by_ip: dict[str, SocketTable] = {}

    def _refresh(self) -> None:
        seen: set[int] = set()
        by_ip: dict[str, SocketTable] = {}
        for entry in os.scandir(self._proc):
            if not entry.name.isdigit():
                continue
            try:
                inode = Path(entry.path, "ns", "net").stat().st_ino
            except OSError:
                continue
            if inode in seen:
                continue
            seen.add(inode)
            net = Path(entry.path, "net")
            addresses = local_addresses(net)
            if addresses:
                table = SocketTable.read(net)
                by_ip.update(dict.fromkeys(addresses, table))
        self._by_ip = by_ip
        self._at = self._clock()

    def __call__(self, ip: str, port: int, protocol: Protocol) -> bool:
        age = self._clock() - self._at
        if age > self._ttl or (ip not in self._by_ip and age > min(self._ttl, 0.5)):
            self._refresh()
        table = self._by_ip.get(ip)
        return table is not None and table.serves(protocol, ip, port)
