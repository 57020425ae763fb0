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

Two paths, one decision. `assemble(observations)` decides a conversation (orientation,
reporter, Service) and remembers it, keyed by `conv_key` — both ends' packed addresses
and ports, smaller end first, so the two veths of a conversation share it.
`assemble_entries(batch)` takes the kernel's packed entries (`layout.Batch`) and, for
a conversation already decided whose entry carries nothing new (no opener, FIN or RST
bits), applies the remembered decision straight from the unpacked fields: a suppressed
entry costs a dict lookup, a reported one a `Connection`. Everything else is decoded
into an `Observation` and goes through `assemble`. On a busy node nearly every entry of
every drain is such a repeat (100,000 open connections ≈ 200,000 entries per 5 s drain),
and this is what keeps the agent's drain in step with them (benchmarks/agent_ebpf.py).
A remembered "the server is not a pod" is re-asked whenever the pods known change
(`pods_version`, the veths learned here), so a pod appearing at a remembered address
moves the report to its veth as the slow path would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from netwatch.capture.conntrack import ConntrackReader, Dnat, Query
from netwatch.capture.layout import F_OPENER_FROM_POD, F_OPENER_TO_POD, KEY, VALUE, Batch
from netwatch.capture.listeners import End, SocketTable, server_by_sockets
from netwatch.capture.observation import (
    CACHE_MAX,
    ENDS,
    PROTOCOLS,
    Addresses,
    ConnId,
    Endpoint,
    Observation,
    conv_key,
    observation,
    protocol_number,
)
from netwatch.capture.packets import heuristic_server_is_low
from netwatch.core.flow import Connection, Orientation
from netwatch.core.model import Protocol

_FIN, _RST = 0x01, 0x04
_TRANSPORTS = (Protocol.TCP, Protocol.UDP, Protocol.SCTP)
_OPENERS = F_OPENER_FROM_POD | F_OPENER_TO_POD
_NEWS = _OPENERS | (_FIN | _RST) | ((_FIN | _RST) << 8)
"""Flag bits that may change a remembered decision: such entries take the slow path."""


@dataclass(slots=True)
class _Memory:
    """What was decided about one conversation (`conv_key`), for its later entries."""

    server: Endpoint
    server_first: bool
    """The server is the first end of the conversation's key."""
    orientation: Orientation
    last_seen: float
    closed: bool = False
    service: Dnat | None = None
    """The Service the client addressed (a ClusterIP connection), for the server side."""
    server_pod: bool = False
    """The server is a pod: its veth reports, a client-side entry is suppressed."""
    version: tuple[int, int] = (0, 0)
    """The pods known when `server_pod` was last asked (`Assembler._version`)."""


@dataclass(slots=True)
class AssemblyStats:
    reported: int = 0
    suppressed: int = 0
    """Entries another observer (the server's veth) reports: counted-once rule."""
    dnat_resolved: int = 0
    orientation: dict[str, int] = field(default_factory=dict)
    """Reported records by how they were oriented."""


@dataclass(frozen=True, slots=True)
class _Resolved:
    obs: Observation
    peer: Endpoint
    """The peer after DNAT resolution (the backend for a Service connection)."""
    dnat: Dnat | None
    cid: ConnId
    pod_first: bool
    """The pod end is the first end of `cid`."""


class Assembler:
    def __init__(
        self,
        *,
        node: str | None,
        is_cluster_pod: Callable[[str], bool] = lambda _ip: False,
        pods_version: Callable[[], int] = lambda: 0,
        sockets: Callable[[int], SocketTable | None] = lambda _ifindex: None,
        conntrack: ConntrackReader | None = None,
        idle_s: float = 120.0,
        closed_grace_s: float = 5.0,
    ) -> None:
        """`pods_version` changes whenever `is_cluster_pod` may answer differently."""
        self._node = node
        self._is_cluster_pod = is_cluster_pod
        self._pods_version = pods_version
        self._sockets = sockets
        self._conntrack = conntrack
        self._idle_s = idle_s
        self._closed_grace_s = closed_grace_s
        self._local_pods: dict[str, int] = {}
        """Pod IP → ifindex of its host-side veth (learned from the pod ends seen)."""
        self._local_version = 0
        self._last_version = (0, 0)
        self._memory: dict[ConnId, _Memory] = {}
        self._dnat_pre: dict[Query, tuple[Dnat | None, float]] = {}
        self._dnat_post: dict[ConnId, tuple[Dnat, float]] = {}
        self._servers: dict[Endpoint, Endpoint] = {}
        """One shared tuple per server end (most conversations share a few)."""
        self.addresses = Addresses()
        self.stats = AssemblyStats()
        self._pruned_at = 0.0
        self._latest = 0.0
        """The newest `last_seen` assembled (epoch seconds): the clock of pruning."""

    @property
    def local_pods(self) -> dict[str, int]:
        return dict(self._local_pods)

    def is_pod(self, ip: str) -> bool:
        return ip in self._local_pods or self._is_cluster_pod(ip)

    def _version(self) -> tuple[int, int]:
        """One shared tuple while nothing changes (every memory holds a reference)."""
        version = (self._local_version, self._pods_version())
        if version != self._last_version:
            self._last_version = version
        return self._last_version

    def _cid(self, protocol: Protocol, a: Endpoint, b: Endpoint) -> tuple[ConnId, bool]:
        family, a_addr = self.addresses.packed(a[0])
        _, b_addr = self.addresses.packed(b[0])
        return conv_key(family, protocol_number(protocol, family), a_addr, a[1], b_addr, b[1])

    # -- the kernel's entries -----------------------------------------------------------
    def assemble_entries(
        self,
        batch: Batch,
        *,
        names: Callable[[int], str | None],
        epoch_offset_ns: int,
        start_ns: int,
        defer: list[tuple[bytes, bytes]] | None = None,
    ) -> list[Connection]:
        """`assemble` for packed kernel entries; remembered conversations skip decoding
        (see the module doc). Times: kernel monotonic ns + `epoch_offset_ns` = epoch ns.

        With `defer`, an entry of a conversation not decided yet that carries no opener
        bits is appended there (packed) instead: the owner assembles those last, once
        the other parts of the drain — which may hold the same conversation's SYN — are
        in. The drain's batches come in hash order, so without this a short
        connection's last ACK would often come first and be oriented from the socket
        tables (slow on a node with tens of thousands of sockets) or by port guess.
        Call `end_drain()` after the drain's last batch."""
        keys, values, _count = batch
        memory_get, text, pack = self._memory.get, self.addresses.text, ENDS.pack
        version = self._version()
        node, stats, counts = self._node, self.stats, self.stats.orientation
        slow: list[Observation] = []
        out: list[Connection] = []
        latest = 0
        for key, value in zip(KEY.iter_unpack(keys), VALUE.iter_unpack(values), strict=True):
            pod_a, peer_a, pod_p, peer_p, ifindex, number, family = key
            p_from, p_to, b_from, b_to, first_ns, last_ns, flags = value
            if number not in PROTOCOLS:
                continue
            latest = max(latest, last_ns)
            if (pod_a, pod_p) <= (peer_a, peer_p):
                m = memory_get(pack(family, number, pod_a, pod_p, peer_a, peer_p))
                pod_first = True
            else:
                m = memory_get(pack(family, number, peer_a, peer_p, pod_a, pod_p))
                pod_first = False
            if m is None and defer is not None and not flags & _OPENERS:
                defer.append((KEY.pack(*key), VALUE.pack(*value)))
                continue
            if m is None or flags & _NEWS:
                slow.append(observation(key, value, text, names, epoch_offset_ns, start_ns))
                continue
            last = (last_ns + epoch_offset_ns) / 1e9
            m.last_seen = max(m.last_seen, last)
            if pod_first is m.server_first:  # the pod is the server: its veth reports
                client = (text(peer_a, family), peer_p)
                sent, back, service = (p_to, b_to), (p_from, b_from), m.service
            else:
                if m.server_pod or (m.version != version and self._recheck(m, version)):
                    stats.suppressed += 1
                    continue
                client = (text(pod_a, family), pod_p)
                sent, back, service = (p_from, b_from), (p_to, b_to), None
            server = m.server
            out.append(
                Connection(
                    client[0],
                    client[1],
                    server[0],
                    server[1],
                    PROTOCOLS[number],
                    (first_ns + epoch_offset_ns) / 1e9,
                    last,
                    sent[0],
                    sent[1],
                    back[0],
                    back[1],
                    m.orientation,
                    node,
                    names(ifindex),
                    service.service_ip if service is not None else None,
                    service.service_port if service is not None else None,
                )
            )
            name = m.orientation.value
            counts[name] = counts.get(name, 0) + 1
        stats.reported += len(out)
        if latest:
            self._latest = max(self._latest, (latest + epoch_offset_ns) / 1e9)
        if slow:
            out.extend(self.assemble(slow, prune=False))
        return out

    def end_drain(self) -> None:
        """Forget idle and closed conversations — once per drain, after its last batch
        (never between two, where a conversation's later entries may still come)."""
        self._prune(self._latest)

    def _recheck(self, m: _Memory, version: tuple[int, int]) -> bool:
        m.server_pod = self.is_pod(m.server[0])
        m.version = version
        return m.server_pod

    # -- decoded observations -------------------------------------------------------------
    def assemble(
        self, observations: Sequence[Observation], *, prune: bool = True
    ) -> list[Connection]:
        """Orient, resolve and count once (the module doc); `prune=False`: a drain's
        batch, pruned by `end_drain()` instead."""
        if not observations:
            return []
        local = self._local_pods
        for obs in observations:
            if local.get(obs.pod_ip) != obs.ifindex:
                local[obs.pod_ip] = obs.ifindex
                self._local_version += 1
        resolved = self._resolve_services(observations)
        groups: dict[ConnId, list[_Resolved]] = {}
        for r in resolved:
            groups.setdefault(r.cid, []).append(r)
        out: list[Connection] = []
        counts = self.stats.orientation
        for cid, members in groups.items():
            memory = self._orient(cid, members)
            for r in members:
                conn = self._report(r, memory)
                if conn is None:
                    self.stats.suppressed += 1
                else:
                    self.stats.reported += 1
                    name = memory.orientation.value
                    counts[name] = counts.get(name, 0) + 1
                    out.append(conn)
        newest = max(o.last_seen for o in observations)
        self._latest = max(self._latest, newest)
        if prune:
            self._prune(self._latest)
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
                cid, pod_first = self._cid(obs.protocol, obs.pod, obs.peer)
                out.append(_Resolved(obs, obs.peer, None, cid, pod_first))
                continue
            self.stats.dnat_resolved += 1
            backend = (dnat.backend_ip, dnat.backend_port)
            cid, pod_first = self._cid(obs.protocol, obs.pod, backend)
            self._dnat_post[cid] = (dnat, obs.last_seen)
            out.append(_Resolved(obs, backend, dnat, cid, pod_first))
        return out

    # -- orientation ----------------------------------------------------------------
    def _orient(self, cid: ConnId, members: list[_Resolved]) -> _Memory:
        last = max(r.obs.last_seen for r in members)
        closed = any(
            (r.obs.tcp_flags_from_pod | r.obs.tcp_flags_to_pod) & _RST
            or (r.obs.tcp_flags_from_pod & _FIN and r.obs.tcp_flags_to_pod & _FIN)
            for r in members
        )
        server, orientation = self._decide(cid, members)
        server = self._servers.setdefault(server, server)
        if len(self._servers) > CACHE_MAX:
            self._servers.clear()
        first = members[0]
        server_first = first.pod_first if server == first.obs.pod else not first.pod_first
        post = self._dnat_post.get(cid)
        memory = self._memory[cid] = _Memory(
            server=server,
            server_first=server_first,
            orientation=orientation,
            last_seen=last,
            closed=closed,
            service=post[0] if post is not None else None,  # the server side names it
            server_pod=self.is_pod(server[0]),
            version=self._version(),
        )
        return memory

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
        return self._heuristic(members), Orientation.HEURISTIC

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
    def _heuristic(members: list[_Resolved]) -> Endpoint:
        a, b = members[0].obs.pod, members[0].peer
        low, high = (a, b) if a[1] <= b[1] else (b, a)
        if low[1] != high[1] and heuristic_server_is_low(low_port=low[1], high_port=high[1]):
            return low
        first = min(members, key=lambda m: m.obs.first_seen)
        return first.obs.pod if first.obs.first_to_pod else first.peer

    # -- counted once -----------------------------------------------------------------
    def _report(self, r: _Resolved, memory: _Memory) -> Connection | None:
        obs = r.obs
        pod_is_server = obs.pod == memory.server
        if not pod_is_server and memory.server_pod:
            return None  # the server pod's veth reports it (here or on its node)
        dnat = r.dnat
        if dnat is None and pod_is_server:
            dnat = memory.service
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
            orientation=memory.orientation,
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
        self._dnat_post = {
            k: v for k, v in self._dnat_post.items() if v[1] >= idle or k in self._memory
        }
