"""The listening-socket oracle: /proc socket tables (a fake /proc on disk) and the verdicts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netwatch.capture.listeners import (
    End,
    HostSockets,
    NetnsDirectory,
    SocketTable,
    server_by_sockets,
)
from netwatch.core.model import Protocol

TCP_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n"
)
TCP = TCP_HEADER + (
    # 0.0.0.0:8080 LISTEN; 10.244.1.3:8080 <- 10.244.1.2:40000 ESTABLISHED
    "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 11 1\n"
    "   1: 0301F40A:1F90 0201F40A:9C40 01 00000000:00000000 00:00000000 00000000 0 0 12 1\n"
)
TCP6 = TCP_HEADER + (
    # [::]:9090 LISTEN, and a v4-mapped established socket ::ffff:10.244.1.3:9090
    "   0: 00000000000000000000000000000000:2382 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000 0 0 21 1\n"
    "   1: 0000000000000000FFFF00000301F40A:2382 0000000000000000FFFF00000201F40A:C350 01 "
    "00000000:00000000 00:00000000 00000000 0 0 22 1\n"
)
UDP = TCP_HEADER + (
    # 0.0.0.0:45000 unconnected; 10.244.1.3:50000 connected to 10.96.0.10:53
    "  10: 00000000:AFC8 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 31 2\n"
    "  11: 0301F40A:C350 0A00600A:0035 01 00000000:00000000 00:00000000 00000000 0 0 32 2\n"
)
SCTP_EPS = (
    " ENDPT     SOCK   STY SST HBKT LPORT   UID INODE LADDRS\n"
    " ffff88810a2a9000 ffff888100c3c000 2   10  29   3868      0 41 10.244.1.3\n"
)


def fake_net(root: Path) -> Path:
    net = root / "net"
    (net / "sctp").mkdir(parents=True)
    for name, text in (("tcp", TCP), ("tcp6", TCP6), ("udp", UDP), ("udp6", TCP_HEADER)):
        (net / name).write_text(text)
    (net / "sctp" / "eps").write_text(SCTP_EPS)
    return net


def test_proc_tables_are_parsed_with_wildcards_and_v4_mapped_addresses(tmp_path: Path) -> None:
    table = SocketTable.read(fake_net(tmp_path))
    assert table.tcp_listen == {("", 8080), ("", 9090)}
    assert ("10.244.1.3", 8080, "10.244.1.2", 40000) in table.tcp_active
    assert ("10.244.1.3", 9090, "10.244.1.2", 50000) in table.tcp_active
    assert table.udp_unconnected == {("", 45000)}
    assert table.udp_connected == {("10.244.1.3", 50000, "10.96.0.10", 53)}
    assert table.sctp_listen == {("10.244.1.3", 3868)}
    assert table.serves(Protocol.TCP, "10.244.1.3", 8080)
    assert table.serves(Protocol.SCTP, "10.244.1.3", 3868)
    assert not table.serves(Protocol.SCTP, "10.244.1.9", 3868)


def test_missing_tables_read_as_empty(tmp_path: Path) -> None:
    assert SocketTable.read(tmp_path / "absent") == SocketTable()


LISTENER = SocketTable(tcp_listen=frozenset({("", 80)}))
CLIENT = SocketTable(tcp_active=frozenset({("10.0.0.1", 40000, "10.0.0.2", 80)}))
EMPTY = SocketTable()
BOUND = SocketTable(udp_unconnected=frozenset({("", 80)}))
BOUND_PEER = SocketTable(udp_unconnected=frozenset({("", 40000)}))


@pytest.mark.parametrize(
    ("protocol", "pod_table", "peer_table", "first", "expected"),
    [
        (Protocol.TCP, LISTENER, None, None, End.POD),
        (Protocol.TCP, LISTENER, EMPTY, None, End.POD),
        (Protocol.TCP, EMPTY, SocketTable(tcp_listen=frozenset({("", 40000)})), None, End.PEER),
        (Protocol.TCP, None, CLIENT.__class__(tcp_active=frozenset({("", 40000, "10.0.0.2", 80)})),
         None, End.POD),
        (Protocol.TCP, EMPTY, EMPTY, None, None),
        (Protocol.TCP, None, None, None, None),
        (Protocol.UDP, BOUND, None, None, End.POD),
        (Protocol.UDP, BOUND, None, End.PEER, End.PEER),  # pod sent first: a sendto() client
        (Protocol.UDP, BOUND, BOUND_PEER, End.POD, End.POD),
        (Protocol.UDP, BOUND, BOUND_PEER, None, None),
        (Protocol.ICMP, BOUND, None, None, None),
    ],
)  # fmt: skip
def test_server_by_sockets_truth_table(
    protocol: Protocol,
    pod_table: SocketTable | None,
    peer_table: SocketTable | None,
    first: End | None,
    expected: End | None,
) -> None:
    got = server_by_sockets(
        protocol=protocol,
        pod=("10.0.0.2", 80),
        peer=("10.0.0.1", 40000),
        pod_table=pod_table,
        peer_table=peer_table,
        first_packet_to=first,
    )
    assert got is expected


def test_netns_directory_finds_a_process_per_namespace(tmp_path: Path) -> None:
    """/proc/<pid>/ns/net are plain files here: their inode stands for the namespace."""
    proc = tmp_path / "proc"
    (proc / "self" / "ns").mkdir(parents=True)
    (proc / "self" / "ns" / "net").write_text("")
    for pid in ("100", "200"):
        (proc / pid / "ns").mkdir(parents=True)
        (proc / pid / "ns" / "net").write_text(pid)
        fake_net(proc / pid)
    by_inode = {os.stat(proc / "200" / "ns" / "net").st_ino: 7}
    directory = NetnsDirectory(
        nsid_of=lambda fd: by_inode.get(os.fstat(fd).st_ino), proc=proc, rescan_interval_s=0
    )
    assert directory.pid_for(7) == 200
    assert directory.pid_for(8) is None
    table = directory.sockets(7)
    assert table is not None and table.serves(Protocol.TCP, "10.244.1.3", 8080)


def test_host_sockets_finds_the_namespace_owning_an_address(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    net = fake_net(proc / "300")
    (proc / "300" / "ns").mkdir()
    (proc / "300" / "ns" / "net").write_text("")
    (net / "fib_trie").write_text(
        "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.244.1.3\n        /32 host LOCAL\n"
        "     |-- 127.0.0.1\n        /32 host LOCAL\n"
    )
    (net / "if_inet6").write_text("fd000000000000000000000000000002 04 40 00 82     eth0\n")
    oracle = HostSockets(proc=proc)
    assert oracle("10.244.1.3", 8080, Protocol.TCP)
    assert oracle("fd00::2", 45000, Protocol.UDP)
    assert not oracle("10.244.1.3", 8081, Protocol.TCP)
    assert not oracle("10.9.9.9", 8080, Protocol.TCP)
