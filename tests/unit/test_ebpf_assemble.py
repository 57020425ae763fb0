"""Orientation and the counted-once rule over per-veth observations (no kernel needed)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from netwatch.capture.assemble import Assembler
from netwatch.capture.conntrack import ConntrackReader, Dnat, Query
from netwatch.capture.listeners import SocketTable
from netwatch.capture.observation import Observation
from netwatch.core.flow import Orientation
from netwatch.core.model import Protocol

A, B, C = "10.244.1.2", "10.244.1.3", "10.244.2.9"  # two local pods, one remote pod
WORLD, SVC = "203.0.113.10", "10.96.0.20"
IF_A, IF_B = 11, 12
SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04


def obs(
    *,
    ifindex: int,
    pod: tuple[str, int],
    peer: tuple[str, int],
    protocol: Protocol = Protocol.TCP,
    sent: tuple[int, int] = (3, 300),
    received: tuple[int, int] = (2, 2000),
    t: float = 100.0,
    **flags: object,
) -> Observation:
    return Observation(
        ifindex=ifindex,
        interface=f"veth{ifindex}",
        protocol=protocol,
        pod_ip=pod[0],
        pod_port=pod[1],
        peer_ip=peer[0],
        peer_port=peer[1],
        packets_from_pod=sent[0],
        bytes_from_pod=sent[1],
        packets_to_pod=received[0],
        bytes_to_pod=received[1],
        first_seen=t,
        last_seen=t + 1,
        **flags,  # type: ignore[arg-type]
    )


def cluster_pods(ip: str) -> bool:
    return ip.startswith("10.244.")


class FakeConntrack(ConntrackReader):
    def __init__(self, mapping: dict[Query, Dnat]) -> None:
        super().__init__(Path("/nonexistent"))
        self.mapping = mapping
        self.queries: list[Query] = []

    def resolve(self, queries):  # type: ignore[no-untyped-def,override]
        wanted = list(queries)
        self.queries += wanted
        return {q: self.mapping.get(q) for q in wanted}


def test_same_node_pod_to_pod_is_reported_once_by_the_server_veth() -> None:
    asm = Assembler(node="n1", is_cluster_pod=cluster_pods)
    client_side = obs(ifindex=IF_A, pod=(A, 40000), peer=(B, 8080), opener_from_pod=True)
    server_side = obs(
        ifindex=IF_B, pod=(B, 8080), peer=(A, 40000), sent=(2, 2000), received=(3, 300),
        opener_to_pod=True,
    )  # fmt: skip
    [conn] = asm.assemble([client_side, server_side])
    assert (conn.client_ip, conn.client_port, conn.server_ip, conn.server_port) == (
        A, 40000, B, 8080,
    )  # fmt: skip
    assert conn.interface == "veth12" and conn.node == "n1"
    assert (conn.packets_out, conn.bytes_out, conn.packets_in, conn.bytes_in) == (3, 300, 2, 2000)
    assert conn.orientation is Orientation.SYN
    assert asm.stats.suppressed == 1


@pytest.mark.parametrize(
    ("peer", "cluster", "reported"),
    [
        ((C, 8080), cluster_pods, False),  # server is a pod on another node: it reports
        ((WORLD, 443), cluster_pods, True),  # server is no pod: the client's node reports
        ((C, 8080), lambda _ip: False, True),  # unknown to be a pod: reported here
    ],
)
def test_client_side_observations_follow_the_counted_once_rule(
    peer: tuple[str, int], cluster: object, reported: bool
) -> None:
    asm = Assembler(node="n1", is_cluster_pod=cluster)  # type: ignore[arg-type]
    conns = asm.assemble([obs(ifindex=IF_A, pod=(A, 40000), peer=peer, opener_from_pod=True)])
    assert len(conns) == int(reported)


def test_server_side_observation_of_a_remote_client_is_reported() -> None:
    asm = Assembler(node="n1", is_cluster_pod=cluster_pods)
    [conn] = asm.assemble([obs(ifindex=IF_B, pod=(B, 8080), peer=(C, 5555), opener_to_pod=True)])
    assert (conn.client_ip, conn.server_ip) == (C, B)
    assert (conn.packets_out, conn.bytes_out) == (2, 2000)  # what the pod received


def test_orientation_is_remembered_across_drains() -> None:
    asm = Assembler(node="n1")
    asm.assemble([obs(ifindex=IF_B, pod=(B, 40001), peer=(WORLD, 443), opener_from_pod=True)])
    [later] = asm.assemble([obs(ifindex=IF_B, pod=(B, 40001), peer=(WORLD, 443), t=200)])
    assert later.orientation is Orientation.SYN
    assert (later.client_ip, later.server_port) == (B, 443)


def test_open_tcp_connection_is_oriented_by_the_listener() -> None:
    table = SocketTable(tcp_listen=frozenset({("", 9090)}))
    asm = Assembler(node="n1", sockets=lambda ifindex: table if ifindex == IF_B else None)
    [conn] = asm.assemble([obs(ifindex=IF_B, pod=(B, 9090), peer=(WORLD, 50000))])
    assert conn.orientation is Orientation.SOCKET
    assert (conn.client_ip, conn.server_ip, conn.server_port) == (WORLD, B, 9090)


def test_open_tcp_connection_seen_from_the_client_pod() -> None:
    table = SocketTable(tcp_active=frozenset({(A, 60000, WORLD, 9999)}))
    asm = Assembler(node="n1", sockets=lambda _ifindex: table)
    # the client's ephemeral port is LOWER than the server's: the port heuristic would fail
    [conn] = asm.assemble([obs(ifindex=IF_A, pod=(A, 60000), peer=(WORLD, 9999))])
    assert conn.orientation is Orientation.SOCKET and conn.server_port == 9999


@pytest.mark.parametrize(
    ("pod_table", "peer_table", "first_to_pod", "server"),
    [
        # bound-unconnected server pod, remote client: the pod serves
        (SocketTable(udp_unconnected=frozenset({("", 45000)})), None, None, B),
        # both local and both bound: the receiver of the first datagram is the server
        (
            SocketTable(udp_unconnected=frozenset({("", 45000)})),
            SocketTable(udp_unconnected=frozenset({("", 50001)})),
            True,
            B,
        ),
        # the peer pod's socket is connect()ed to us: it is the client
        (
            SocketTable(udp_unconnected=frozenset({("", 45000)})),
            SocketTable(udp_connected=frozenset({(A, 50001, B, 45000)})),
            None,
            B,
        ),
    ],
)
def test_udp_on_a_high_port_is_oriented_by_bound_sockets(
    pod_table: SocketTable, peer_table: SocketTable | None, first_to_pod: bool | None, server: str
) -> None:
    tables = {IF_B: pod_table, IF_A: peer_table}
    asm = Assembler(node="n1", sockets=tables.get)  # type: ignore[arg-type]
    if peer_table is not None:  # teach the assembler that A is a local pod on IF_A
        asm.assemble([obs(ifindex=IF_A, pod=(A, 1), peer=(WORLD, 2), protocol=Protocol.ICMP)])
    observation = obs(
        ifindex=IF_B,
        pod=(B, 45000),
        peer=(A, 50001),
        protocol=Protocol.UDP,
        began_in_capture=first_to_pod is not None,
        first_to_pod=bool(first_to_pod),
        t=300,
    )
    conns = asm.assemble([observation])
    [conn] = [c for c in conns if c.protocol is Protocol.UDP]
    assert conn.server_ip == server and conn.orientation is Orientation.SOCKET


def test_heuristic_only_when_nothing_better() -> None:
    asm = Assembler(node="n1")
    [conn] = asm.assemble(
        [obs(ifindex=IF_A, pod=(A, 40000), peer=(WORLD, 53), protocol=Protocol.UDP)]
    )
    assert conn.orientation is Orientation.HEURISTIC and conn.server_port == 53


def test_clusterip_connection_is_reported_on_the_backend_with_its_service() -> None:
    dnat = Dnat(service_ip=SVC, service_port=80, backend_ip=B, backend_port=8080)
    conntrack = FakeConntrack({Query(Protocol.TCP, A, 40000, SVC, 80): dnat})
    asm = Assembler(node="n1", is_cluster_pod=cluster_pods, conntrack=conntrack)
    client_side = obs(ifindex=IF_A, pod=(A, 40000), peer=(SVC, 80))  # pre-DNAT, no SYN seen
    server_side = obs(ifindex=IF_B, pod=(B, 8080), peer=(A, 40000), sent=(2, 2000))
    [conn] = asm.assemble([client_side, server_side])
    assert (conn.server_ip, conn.server_port, conn.interface) == (B, 8080, "veth12")
    assert (conn.service_ip, conn.service_port) == (SVC, 80)
    assert conn.orientation is Orientation.SOCKET
    assert conntrack.queries == [Query(Protocol.TCP, A, 40000, SVC, 80)]  # pods never asked


def test_clusterip_with_a_non_pod_backend_is_reported_by_the_client_node() -> None:
    dnat = Dnat(service_ip=SVC, service_port=443, backend_ip=WORLD, backend_port=8443)
    conntrack = FakeConntrack({Query(Protocol.TCP, A, 40000, SVC, 443): dnat})
    asm = Assembler(node="n1", is_cluster_pod=cluster_pods, conntrack=conntrack)
    [conn] = asm.assemble([obs(ifindex=IF_A, pod=(A, 40000), peer=(SVC, 443))])
    assert (conn.server_ip, conn.server_port, conn.service_ip) == (WORLD, 8443, SVC)


def test_conntrack_results_are_cached_per_flow() -> None:
    conntrack = FakeConntrack({})
    asm = Assembler(node="n1", conntrack=conntrack)
    o = obs(ifindex=IF_A, pod=(A, 40000), peer=(WORLD, 443), opener_from_pod=True)
    asm.assemble([o])
    asm.assemble([replace(o, opener_from_pod=False, first_seen=150, last_seen=151)])
    assert len(conntrack.queries) == 1


def test_closed_connections_and_idle_ones_are_forgotten() -> None:
    asm = Assembler(node="n1", idle_s=60, closed_grace_s=5)
    asm.assemble(
        [obs(ifindex=IF_A, pod=(A, 40000), peer=(WORLD, 443), opener_from_pod=True,
             tcp_flags_from_pod=SYN | FIN, tcp_flags_to_pod=ACK | FIN)]
    )  # fmt: skip
    asm.assemble([obs(ifindex=IF_A, pod=(A, 40002), peer=(WORLD, 443), opener_from_pod=True,
                      t=120)])  # fmt: skip
    # 40000 closed 20 s ago: gone; re-seen without SYN it is oriented afresh (heuristic)
    [conn] = asm.assemble([obs(ifindex=IF_A, pod=(A, 40000), peer=(WORLD, 443), t=121)])
    assert conn.orientation is Orientation.HEURISTIC
