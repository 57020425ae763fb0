"""The eBPF backend on a minimal node of our own: IPv6, and every map-drain fallback.

The lab is IPv4-only; `ebpf_fixtures.mini_node` builds a routed node with two pods that
have both address families. Each drain method (batch lookup-and-delete, per-key
lookup-and-delete, lookup then delete) must give the figures tcpdump saw.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.privileged.ebpf_fixtures import (
    Capture,
    Tcpdump,
    assert_clean,
    find,
    mini_node,
    pcap_counts,
    peers,
    record_view,
    require_privileges,
    view,
)

pytestmark = [pytest.mark.privileged, pytest.mark.slow]


@pytest.mark.parametrize("drain_method", ["batch", "per-key", "lookup-delete"])
def test_ipv4_and_ipv6_connections_match_tcpdump_with_every_drain_method(
    drain_method: str, tmp_path: Path
) -> None:
    require_privileges()
    with mini_node() as node, peers() as p:
        client_pod, server_pod = node.pods
        p.server(server_pod.netns, "0.0.0.0:7070", ":::7071")
        capture = Capture(
            node.netns, tmp_path=tmp_path, name="mini", node="mini",
            args=["--drain-method", drain_method],
        ).start()  # fmt: skip
        dump = Tcpdump(node.netns, server_pod.interface, tmp_path / "server.pcap")
        try:
            cli = p.client(client_pod.netns)
            flows = []
            for family, host, port in (
                ("v4", server_pod.ipv4, 7070),
                ("v6", server_pod.ipv6, 7071),
            ):
                cport = int(cli("tcp_open", f"t{family}", host, port)[0])
                cli("tcp_send", f"t{family}", 4000)
                cli("tcp_close", f"t{family}")
                uport = int(cli("udp_open", f"u{family}", host, port, 1)[0])
                for _ in range(3):
                    cli("udp_send", f"u{family}", 300)
                flows += [("TCP", host, cport, port), ("UDP", host, uport, port)]
            time.sleep(1.0)
        finally:
            counts = pcap_counts(dump.stop())
            result = capture.stop()
        assert result.returncode == 0, result.stderr
        assert result.stats["drain_method"] == drain_method
        assert len(result.records) == len(flows)
        for protocol, host, cport, sport in flows:
            client_ip = client_pod.ipv6 if ":" in host else client_pod.ipv4
            recs = find(result.records, protocol=protocol, client_port=cport, server_port=sport)
            assert len(recs) == 1, (protocol, host, result.records)
            assert (recs[0]["client_ip"], recs[0]["server_ip"]) == (client_ip, host)
            truth = view(counts, protocol=protocol, client=(client_ip, cport), server=(host, sport))
            assert record_view(recs[0]) == truth
            assert recs[0]["orientation"] == ("syn" if protocol == "TCP" else "socket")
            assert recs[0]["interface"] == server_pod.interface
        assert_clean(node.netns)


def test_a_busy_connection_is_one_map_entry_per_veth_per_drain(tmp_path: Path) -> None:
    """Below half full the map is left to the drain: a connection sending every 200 ms
    is drained as one entry per veth, not one per 250 ms pass — and still counted as
    tcpdump saw it."""
    require_privileges()
    with mini_node() as node, peers() as p:
        client_pod, server_pod = node.pods
        p.server(server_pod.netns, "0.0.0.0:7070")
        capture = Capture(
            node.netns, tmp_path=tmp_path, name="busy", node="mini",
            args=["--drain-interval", "60"],
        ).start()  # fmt: skip
        dump = Tcpdump(node.netns, server_pod.interface, tmp_path / "server.pcap")
        try:
            cli = p.client(client_pod.netns)
            cport = int(cli("tcp_open", "t", server_pod.ipv4, 7070)[0])
            for _ in range(12):
                cli("tcp_send", "t", 1000)
                time.sleep(0.2)
            cli("tcp_close", "t")
            time.sleep(1.0)
        finally:
            counts = pcap_counts(dump.stop())
            result = capture.stop()
        assert result.returncode == 0, result.stderr
        # drained at the stop: the connection's entry on each of the two pod veths
        assert result.stats["drained_entries"] == 2, result.stats
        [rec] = find(result.records, protocol="TCP", client_port=cport, server_port=7070)
        truth = view(counts, protocol="TCP", client=(client_pod.ipv4, cport),
                     server=(server_pod.ipv4, 7070))  # fmt: skip
        assert record_view(rec) == truth
        assert_clean(node.netns)


def test_a_capture_that_falls_behind_keeps_its_backlog_bounded(tmp_path: Path) -> None:
    """Nobody drains (a starved owner): the emptier takes at most a backlog of twice the
    map, then leaves the entries to the kernel map, whose LRU evicts what does not fit
    — counted as lost, said in the log — instead of the process growing without bound."""
    require_privileges()
    with mini_node() as node, peers() as p:
        client_pod, server_pod = node.pods
        p.server(server_pod.netns, "0.0.0.0:7070")
        capture = Capture(
            node.netns, tmp_path=tmp_path, name="behind", node="mini",
            args=["--map-size", "64", "--drain-interval", "600"],
        ).start()  # fmt: skip
        try:
            cli = p.client(client_pod.netns)
            for i in range(300):  # 300 UDP flows: 600 entries, one per flow per veth
                cli("udp_open", f"u{i}", server_pod.ipv4, 7070, 1)
                cli("udp_send", f"u{i}", 32)
                if i % 50 == 49:
                    time.sleep(0.6)  # let the emptier's 250 ms checks see the map fill
        finally:
            result = capture.stop()
        assert result.returncode == 0, result.stderr
        stats = result.stats
        assert stats["emptier_paused"] > 0, stats
        # the limit, plus at most one pass of the emptier: what the map held then
        assert 128 <= stats["max_backlog_entries"] <= 128 + stats["max_pass_entries"], stats
        assert stats["max_pass_entries"] <= 64 + 16, stats  # an LRU map of 64 (+ slack)
        assert stats["evicted_entries"] > 0 and stats["lost_packets"] > 0, stats
        assert "capture falling behind" in result.stderr
        assert_clean(node.netns)
