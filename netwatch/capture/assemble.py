"""Per-veth observations → oriented, counted-once `Connection` records.

The kernel (`bpf/flows.c`) counts per (host-side veth, pod end, peer end). This module
decides, per conversation, who is the client and which observation reports it.

Orientation, best evidence first (the record says which was used):
  1. `syn`: a TCP SYN without ACK (also an SCTP INIT, an ICMP echo request) was seen —
     its sender is the client. Remembered for the conversation's later drains.
  2. `socket`: the listening/bound sockets of the pods' namespaces (`listeners.py`), or
     the node's conntrack entry of a Service connection (its original direction is the
     opener; see `conntrack.py`).
  3. `heuristic`: nothing better — the port rule shared with the sniff/pcap backends
     (`packets.heuristic_server_is_low`), else the receiver of the first packet seen.

Counted once, cluster-wide (DESIGN §2) — every node applies the same rule to what its
own pod veths saw:
  * the node hosting the SERVER pod reports the connection (its observation on the
    server pod's veth is "server-side");
  * the client pod's node reports it only when the server is NOT a cluster pod (an
    external address, a node, a hostNetwork endpoint, an unresolved Service).
  A pod→pod connection is seen on two veths (one node or two) and reported once, by the
  server's veth; pod→world once, by the client's veth. Which IPs are cluster pods comes
  from `is_cluster_pod` (pod CIDRs, a cluster snapshot, the agent's inventory) plus the
  pods seen on this node's veths. ClusterIP destinations are first resolved to their
  backend (conntrack), so a Service connection to a pod is reported by the backend's node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from netwatch.capture.conntrack import ConntrackReader, Dnat, Query
from netwatch.capture.listeners import End, SocketTable, server_by_sockets
from netwatch.capture.packets import heuristic_server_is_low
from netwatch.core.flow import Connection, Orientation
from netwatch.core.model import Protocol

_FIN, _RST = 0x01, 0x04
_TRANSPORTS = (Protocol.TCP, Protocol.UDP, Protocol.SCTP)
Endpoint = tuple[str, int]
ConnId = tuple[Protocol, Endpoint, Endpoint]


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


@dataclass(slots=True)
class _Memory:
    server: Endpoint
    orientation: Orientation
    last_seen: float
    closed: bool = False


@dataclass(slots=True)
class AssemblyStats:
    reported: int = 0
    suppressed: int = 0
    """Observations another observer (the server's veth) reports: counted-once rule."""
    dnat_resolved: int = 0
    orientation: dict[str, int] = field(default_factory=dict)


def conn_id(protocol: Protocol, a: Endpoint, b: Endpoint) -> ConnId:
    return (protocol, a, b) if a <= b else (protocol, b, a)


@dataclass(frozen=True, slots=True)
class _Resolved:
    obs: Observation
    peer: Endpoint
    """The peer after DNAT resolution (the backend for a Service connection)."""
    dnat: Dnat | None


class Assembler:
    def __init__(
        self,
        *,
        node: str | None,
        is_cluster_pod: Callable[[str], bool] = lambda _ip: False,
        sockets: Callable[[int], SocketTable | None] = lambda _ifindex: None,
        conntrack: ConntrackReader | None = None,
        idle_s: float = 120.0,
        closed_grace_s: float = 5.0,
    ) -> None:
        self._node = node
        self._is_cluster_pod = is_cluster_pod
        self._sockets = sockets
        self._conntrack = conntrack
        self._idle_s = idle_s
        self._closed_grace_s = closed_grace_s
        self._local_pods: dict[str, int] = {}
        """Pod IP → ifindex of its host-side veth (learned from the pod ends seen)."""
        self._memory: dict[ConnId, _Memory] = {}
        self._dnat_pre: dict[Query, tuple[Dnat | None, float]] = {}
        self._dnat_post: dict[ConnId, tuple[Dnat, float]] = {}
        self.stats = AssemblyStats()
        self._pruned_at = 0.0

    @property
    def local_pods(self) -> dict[str, int]:
        return dict(self._local_pods)

    def is_pod(self, ip: str) -> bool:
        return ip in self._local_pods or self._is_cluster_pod(ip)

    def assemble(self, observations: Sequence[Observation]) -> list[Connection]:
        if not observations:
            return []
        for obs in observations:
            self._local_pods[obs.pod_ip] = obs.ifindex
        resolved = self._resolve_services(observations)
        groups: dict[ConnId, list[_Resolved]] = {}
        for r in resolved:
            groups.setdefault(conn_id(r.obs.protocol, r.obs.pod, r.peer), []).append(r)
        out: list[Connection] = []
        for cid, members in groups.items():
            server, orientation = self._orient(cid, members)
            for r in members:
                conn = self._report(r, server=server, orientation=orientation, cid=cid)
                if conn is None:
                    self.stats.suppressed += 1
                else:
                    self.stats.reported += 1
                    out.append(conn)
        self._prune(max(o.last_seen for o in observations))
        return out

    # -- ClusterIP ------------------------------------------------------------------
    def _resolve_services(self, observations: Sequence[Observation]) -> list[_Resolved]:
        pending: dict[Query, None] = {}
        queries: list[Query | None] = []
        for obs in observations:
            query = None
            if (
                self._conntrack is not None
                and obs.protocol in _TRANSPORTS
                and not self.is_pod(obs.peer_ip)
            ):
                query = Query(obs.protocol, obs.pod_ip, obs.pod_port, obs.peer_ip, obs.peer_port)
                if query not in self._dnat_pre:
                    pending[query] = None
            queries.append(query)
        if pending and self._conntrack is not None:
            for query, dnat in self._conntrack.resolve(pending).items():
                self._dnat_pre[query] = (dnat, 0.0)
        out: list[_Resolved] = []
        for obs, query in zip(observations, queries, strict=True):
            dnat = None
            if query is not None:
                dnat, _ = self._dnat_pre[query]
                self._dnat_pre[query] = (dnat, obs.last_seen)
            if dnat is None:
                out.append(_Resolved(obs=obs, peer=obs.peer, dnat=None))
                continue
            self.stats.dnat_resolved += 1
            backend = (dnat.backend_ip, dnat.backend_port)
            self._dnat_post[conn_id(obs.protocol, obs.pod, backend)] = (dnat, obs.last_seen)
            out.append(_Resolved(obs=obs, peer=backend, dnat=dnat))
        return out

    # -- orientation ----------------------------------------------------------------
    def _orient(self, cid: ConnId, members: list[_Resolved]) -> tuple[Endpoint, Orientation]:
        last = max(r.obs.last_seen for r in members)
        closed = any(
            (r.obs.tcp_flags_from_pod | r.obs.tcp_flags_to_pod) & _RST
            or (r.obs.tcp_flags_from_pod & _FIN and r.obs.tcp_flags_to_pod & _FIN)
            for r in members
        )
        decided = self._decide(cid, members)
        server, orientation = decided
        self._memory[cid] = _Memory(
            server=server, orientation=orientation, last_seen=last, closed=closed
        )
        name = orientation.value
        self.stats.orientation[name] = self.stats.orientation.get(name, 0) + 1
        return decided

    def _decide(self, cid: ConnId, members: list[_Resolved]) -> tuple[Endpoint, Orientation]:
        for r in sorted(members, key=lambda m: m.obs.first_seen):
            if r.obs.opener_from_pod:
                return r.peer, Orientation.SYN
            if r.obs.opener_to_pod:
                return r.obs.pod, Orientation.SYN
        remembered = self._memory.get(cid)
        if remembered is not None:
            return remembered.server, remembered.orientation
        for r in members:
            if r.dnat is not None:  # conntrack's original direction: the pod opened it
                return r.peer, Orientation.SOCKET
        for r in members:
            end = self._by_sockets(r)
            if end is not None:
                return (r.obs.pod if end is End.POD else r.peer), Orientation.SOCKET
        return self._heuristic(cid, members), Orientation.HEURISTIC

    def _by_sockets(self, r: _Resolved) -> End | None:
        obs = r.obs
        peer_ifindex = self._local_pods.get(obs.peer_ip)
        first = None
        if obs.began_in_capture:
            first = End.POD if obs.first_to_pod else End.PEER
        return server_by_sockets(
            protocol=obs.protocol,
            pod=obs.pod,
            peer=r.peer,
            pod_table=self._sockets(obs.ifindex),
            peer_table=self._sockets(peer_ifindex) if peer_ifindex is not None else None,
            first_packet_to=first,
        )

    @staticmethod
    def _heuristic(cid: ConnId, members: list[_Resolved]) -> Endpoint:
        _proto, a, b = cid
        low, high = (a, b) if a[1] <= b[1] else (b, a)
        if low[1] != high[1] and heuristic_server_is_low(low_port=low[1], high_port=high[1]):
            return low
        first = min(members, key=lambda m: m.obs.first_seen)
        return first.obs.pod if first.obs.first_to_pod else first.peer

    # -- counted once -----------------------------------------------------------------
    def _report(
        self, r: _Resolved, *, server: Endpoint, orientation: Orientation, cid: ConnId
    ) -> Connection | None:
        obs = r.obs
        pod_is_server = obs.pod == server
        if not pod_is_server and self.is_pod(server[0]):
            return None  # the server pod's veth reports it (here or on its node)
        dnat = r.dnat
        if dnat is None and pod_is_server:
            post = self._dnat_post.get(cid)
            dnat = post[0] if post is not None else None
        if pod_is_server:
            client, srv = r.peer, obs.pod
            out = (obs.packets_to_pod, obs.bytes_to_pod)
            back = (obs.packets_from_pod, obs.bytes_from_pod)
        else:
            client, srv = obs.pod, r.peer
            out = (obs.packets_from_pod, obs.bytes_from_pod)
            back = (obs.packets_to_pod, obs.bytes_to_pod)
        return Connection(
            client_ip=client[0],
            client_port=client[1],
            server_ip=srv[0],
            server_port=srv[1],
            protocol=obs.protocol,
            first_seen=obs.first_seen,
            last_seen=obs.last_seen,
            packets_out=out[0],
            bytes_out=out[1],
            packets_in=back[0],
            bytes_in=back[1],
            orientation=orientation,
            node=self._node,
            interface=obs.interface,
            service_ip=dnat.service_ip if dnat is not None else None,
            service_port=dnat.service_port if dnat is not None else None,
        )

    def _prune(self, now: float) -> None:
        if now - self._pruned_at < 5.0:
            return
        self._pruned_at = now
        idle = now - self._idle_s
        closed = now - self._closed_grace_s
        self._memory = {
            k: m
            for k, m in self._memory.items()
            if m.last_seen >= idle and not (m.closed and m.last_seen < closed)
        }
        self._dnat_pre = {k: v for k, v in self._dnat_pre.items() if v[1] >= idle}
        self._dnat_post = {k: v for k, v in self._dnat_post.items() if v[1] >= idle}


def merge_key(conn: Connection) -> ConnId:
    """Identity of a conversation independent of its orientation (for summing deltas)."""
    return conn_id(
        conn.protocol, (conn.client_ip, conn.client_port), (conn.server_ip, conn.server_port)
    )
