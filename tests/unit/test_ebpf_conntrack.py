"""ClusterIP resolution from a /proc/net/nf_conntrack file."""

from __future__ import annotations

from pathlib import Path

from netwatch.capture.conntrack import ConntrackReader, Dnat, Query
from netwatch.core.model import Protocol

TABLE = """\
ipv4     2 tcp      6 116 TIME_WAIT src=10.244.2.2 dst=10.244.1.3 sport=49308 dport=8080 \
src=10.244.1.3 dst=10.244.2.2 sport=8080 dport=49308 [ASSURED] mark=0 zone=0 use=2
ipv4     2 udp      17 23 src=10.244.1.2 dst=10.96.0.10 sport=24120 dport=53 \
src=10.244.1.4 dst=10.244.1.2 sport=53 dport=24120 mark=0 zone=0 use=2
ipv4     2 tcp      6 431999 ESTABLISHED src=10.244.1.2 dst=10.96.0.20 sport=40000 dport=80 \
src=10.244.1.3 dst=10.244.1.2 sport=8080 dport=40000 [ASSURED] mark=0 zone=0 use=2
ipv6     10 tcp      6 300 ESTABLISHED src=fd00:0000:0000:0000:0000:0000:0000:0002 \
dst=fd00:0000:0000:0000:0000:0000:0096:0020 sport=41000 dport=80 \
src=fd00:0000:0000:0000:0000:0000:0000:0003 dst=fd00:0000:0000:0000:0000:0000:0000:0002 \
sport=8080 dport=41000 [ASSURED] mark=0 zone=0 use=2
"""


def reader(tmp_path: Path) -> ConntrackReader:
    path = tmp_path / "nf_conntrack"
    path.write_text(TABLE)
    return ConntrackReader(path)


def test_dnat_gives_the_backend_and_target_port(tmp_path: Path) -> None:
    q_tcp = Query(Protocol.TCP, "10.244.1.2", 40000, "10.96.0.20", 80)
    q_udp = Query(Protocol.UDP, "10.244.1.2", 24120, "10.96.0.10", 53)
    q_v6 = Query(Protocol.TCP, "fd00::2", 41000, "fd00::96:20", 80)
    got = reader(tmp_path).resolve([q_tcp, q_udp, q_v6])
    assert got[q_tcp] == Dnat("10.96.0.20", 80, "10.244.1.3", 8080)
    assert got[q_udp] == Dnat("10.96.0.10", 53, "10.244.1.4", 53)
    assert got[q_v6] == Dnat("fd00::96:20", 80, "fd00::3", 8080)


def test_no_nat_wrong_protocol_reply_tuple_or_absent_give_none(tmp_path: Path) -> None:
    queries = [
        Query(Protocol.TCP, "10.244.2.2", 49308, "10.244.1.3", 8080),  # tracked, no NAT
        Query(Protocol.UDP, "10.244.1.2", 40000, "10.96.0.20", 80),  # other protocol
        Query(Protocol.TCP, "10.244.1.3", 8080, "10.244.1.2", 40000),  # a reply tuple
        Query(Protocol.TCP, "10.244.9.9", 1, "10.96.0.1", 443),  # not tracked
    ]
    assert set(reader(tmp_path).resolve(queries).values()) == {None}


def test_an_unreadable_table_resolves_nothing(tmp_path: Path) -> None:
    r = ConntrackReader(tmp_path / "absent")
    q = Query(Protocol.TCP, "10.244.1.2", 40000, "10.96.0.20", 80)
    assert not r.available
    assert r.resolve([q]) == {q: None}
    assert r.resolve([]) == {}
