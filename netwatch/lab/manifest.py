"""What the traffic driver sent, connection by connection: the oracle capture is judged by.

A `TrafficManifest` lists every connection a traffic script attempted: both ends (pod,
node or internet host, with namespace, veth and node), the Service when it went through
a ClusterIP, payload bytes each way, and — where they are deterministic (UDP, DNS, ICMP:
one datagram per request and per reply, no fragmentation) — packets and whole-IP-packet
bytes each way. TCP packet counts depend on segmentation and ACK timing, so they are
None; compare TCP packets with what tcpdump counted on the same veth instead.

`verified` says the server's own log agrees with the client (same bytes each way, same
datagram count); `server_view` is that log entry — after NAT, its `peer` is the address
the server saw (a node IP when pod egress was masqueraded).

Counted once (DESIGN §2). Every node's agent watches the host-side veths of its own
pods, so a pod-to-pod connection is visible on two veths (both on one node, or one on
each of two nodes). `reporting_node` is the rule that makes the cluster count it once:

1. the server is a pod with its own veth → the server pod's node reports it (that node
   can see the pod's listening sockets, so orientation is exact, and the tuple it sees
   is already post-DNAT: backend pod and target port);
2. otherwise, the client is a pod with its own veth (server is the internet, a node or
   a hostNetwork pod) → the client pod's node reports it;
3. neither end has a pod veth (node↔node, hostNetwork↔internet) → no veth capture sees
   it; `reporter` is None.

A node therefore drops what it sees on a client pod's veth whenever the server address
is a non-hostNetwork pod IP or a ClusterIP with pod endpoints. The capture layer
implements the rule; the manifest's `reporter` is the independent expectation the
two-node lab tests compare against.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from netwatch.lab.plan import Peer, ServiceRef

IP_UDP_HEADERS = 28
"""IPv4 (20, no options) + UDP (8): added to each datagram's payload for IP bytes."""
IP_ICMP_HEADERS = 28
"""IPv4 (20) + ICMP echo header (8)."""


def reporting_node(client: Peer, server: Peer | None) -> str | None:
    """The one node whose agent reports this connection (see the module docstring)."""
    if server is not None and server.kind == "pod" and not server.host_network:
        return server.node
    if client.kind == "pod" and not client.host_network:
        return client.node
    return None


@dataclass(frozen=True)
class Side:
    """One end of a connection in the manifest."""

    peer: Peer
    port: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.peer), "port": self.port}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Side:
        fields = {k: v for k, v in data.items() if k != "port"}
        return cls(Peer(**fields), int(data["port"]))


@dataclass(frozen=True)
class ExpectedConnection:
    id: str
    """Hex connection id carried in the request header (DNS/ICMP: client-side only)."""
    step: str
    kind: str
    """Traffic kind: tcp, udp, icmp, dns or churn."""
    protocol: str
    """TCP, UDP or ICMP."""
    client: Side
    server: Side
    """Post-DNAT: the backend that answered and its target port."""
    service: ServiceRef | None
    rounds: int
    payload_out: int
    """Client→server payload bytes (request headers included)."""
    payload_in: int
    packets_out: int | None
    packets_in: int | None
    ip_bytes_out: int | None
    """Whole IP packets (headers included), the unit of DESIGN §5; None for TCP."""
    ip_bytes_in: int | None
    first_seen: float
    last_seen: float
    reporter: str | None
    """The node that must report it under the counted-once rule."""
    verified: bool
    error: str | None = None
    server_view: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Kind-specific facts: DNS query/txid/rcode/answers, ICMP identifier."""

    @property
    def five_tuple(self) -> tuple[str, int, str, int, str]:
        """As the server's veth sees it: client address, backend address (post-DNAT)."""
        return (
            self.client.peer.ip,
            self.client.port,
            self.server.peer.ip,
            self.server.port,
            self.protocol,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "step": self.step,
            "kind": self.kind,
            "protocol": self.protocol,
            "client": self.client.to_dict(),
            "server": self.server.to_dict(),
            "service": asdict(self.service) if self.service else None,
            "rounds": self.rounds,
            "payload_out": self.payload_out,
            "payload_in": self.payload_in,
            "packets_out": self.packets_out,
            "packets_in": self.packets_in,
            "ip_bytes_out": self.ip_bytes_out,
            "ip_bytes_in": self.ip_bytes_in,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "reporter": self.reporter,
            "verified": self.verified,
            "error": self.error,
            "server_view": dict(self.server_view) if self.server_view else None,
            **dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExpectedConnection:
        known = {
            "id", "step", "kind", "protocol", "client", "server", "service", "rounds",
            "payload_out", "payload_in", "packets_out", "packets_in", "ip_bytes_out",
            "ip_bytes_in", "first_seen", "last_seen", "reporter", "verified", "error",
            "server_view",
        }  # fmt: skip
        return cls(
            id=data["id"],
            step=data["step"],
            kind=data["kind"],
            protocol=data["protocol"],
            client=Side.from_dict(data["client"]),
            server=Side.from_dict(data["server"]),
            service=ServiceRef(**data["service"]) if data.get("service") else None,
            rounds=data["rounds"],
            payload_out=data["payload_out"],
            payload_in=data["payload_in"],
            packets_out=data["packets_out"],
            packets_in=data["packets_in"],
            ip_bytes_out=data["ip_bytes_out"],
            ip_bytes_in=data["ip_bytes_in"],
            first_seen=data["first_seen"],
            last_seen=data["last_seen"],
            reporter=data["reporter"],
            verified=data["verified"],
            error=data.get("error"),
            server_view=data.get("server_view"),
            extra={k: v for k, v in data.items() if k not in known},
        )


@dataclass(frozen=True)
class StepSummary:
    name: str
    kind: str
    started: float
    ended: float
    connections: int
    failed: int
    """Connections with an error or not confirmed by the server."""
    rate: float | None = None
    """churn: connections started per second, as achieved."""


@dataclass(frozen=True)
class TrafficManifest:
    run_id: str
    scenario: str
    steps: tuple[StepSummary, ...]
    connections: tuple[ExpectedConnection, ...]

    def step(self, name: str) -> list[ExpectedConnection]:
        return [c for c in self.connections if c.step == name]

    def failures(self) -> list[ExpectedConnection]:
        return [c for c in self.connections if c.error or not c.verified]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "run_id": self.run_id,
            "scenario": self.scenario,
            "steps": [asdict(s) for s in self.steps],
            "connections": [c.to_dict() for c in self.connections],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrafficManifest:
        return cls(
            run_id=data["run_id"],
            scenario=data["scenario"],
            steps=tuple(StepSummary(**s) for s in data["steps"]),
            connections=tuple(ExpectedConnection.from_dict(c) for c in data["connections"]),
        )

    @classmethod
    def from_json(cls, text: str) -> TrafficManifest:
        return cls.from_dict(json.loads(text))
