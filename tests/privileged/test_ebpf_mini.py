"""The eBPF backend on a minimal node of our own: IPv6, and every map-drain fallback.

The lab is IPv4-only; `ebpf_fixtures.mini_node` builds a routed node with two pods that
have both address families. Each drain method (batch lookup-and-delete, per-key
lookup-and-delete, lookup then delete) must give the figures tcpdump saw.
"""

from __future__ import annotations

import subprocess
import sys
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


SINK = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
time.sleep(120)  # never reads: datagrams are counted on the veths, then dropped here
"""

BLAST = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], int(sys.argv[2])))
payload, sent, end = b"x" * 32, 0, time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    for _ in range(1000):
        try:
            s.send(payload)
            sent += 1
        except OSError:
            pass
print(sent)
"""


def test_no_packet_is_lost_to_a_drain_racing_a_busy_flow(tmp_path: Path) -> None:
    """One UDP flow as fast as Python sends, drained every 20 ms for 5 s: every drain
    empties a map the programs no longer write to (the other one is active, and the
    membarrier waited out any program still running), so not one increment may land in
    an entry being copied and deleted — lost stays 0 and what was drained equals what
    the programs counted. With one map drained in place, a few packets per run fell
    into that window (and then into `lost_packets`)."""
    require_privileges()
    with mini_node() as node, peers() as p:
        client_pod, server_pod = node.pods
        sink = subprocess.Popen(
            ["ip", "netns", "exec", server_pod.netns, sys.executable, "-c", SINK, "7171"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        p.procs.append(sink)  # type: ignore[arg-type]
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        capture = Capture(
            node.netns, tmp_path=tmp_path, name="race", node="mini",
            args=["--drain-interval", "0.02"],
        ).start()  # fmt: skip
        try:
            blast = subprocess.run(
                ["ip", "netns", "exec", client_pod.netns, sys.executable, "-c", BLAST,
                 server_pod.ipv4, "7171", "5"],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            sent = int(blast.stdout)
            time.sleep(0.5)
        finally:
            result = capture.stop()
        assert result.returncode == 0, result.stderr
        stats = result.stats
        assert stats["drains"] >= 100, stats
        assert stats["lost_packets"] == 0 and stats["lost_bytes"] == 0, stats
        assert stats["drained_packets"] == stats["kernel"]["packets"], stats
        assert stats["drained_bytes"] == stats["kernel"]["bytes"], stats
        [rec] = find(result.records, protocol="UDP", server_port=7171)
        assert sent > 50_000 and 0.9 * sent <= rec["packets_out"] <= sent, (sent, rec)
        assert rec["bytes_out"] == rec["packets_out"] * (20 + 8 + 32)
        assert_clean(node.netns)
