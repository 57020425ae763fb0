"""The eBPF backend in the one-node lab, every figure checked against tcpdump.

The capture runs as `netwatch capture --netns <node>` (TC programs on the pods' host-side
veths); tcpdump writes every pod veth meanwhile. For each connection the lab's traffic
driver scripted, exactly one record must exist, oriented as the driver knows it, and its
packets and bytes must equal what tcpdump saw for that 5-tuple on the veth the record
names. Own echo servers/clients (`ebpf_fixtures.PHASE_CLIENT`) drive the cases the
driver cannot: connections opened before the capture, a capture restart, LRU overflow,
a pod appearing and vanishing mid-capture.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netwatch import lab
from netwatch.lab.lab import LabHandle
from netwatch.lab.manifest import ExpectedConnection
from tests.privileged.ebpf_fixtures import (
    REPO,
    BusyTraffic,
    Capture,
    Tcpdump,
    assert_clean,
    find,
    merged,
    our_filters,
    pcap_counts,
    peers,
    record_view,
    require_privileges,
    run,
    view,
)

pytestmark = [pytest.mark.privileged, pytest.mark.slow]


@pytest.fixture(scope="module")
def one_node() -> Iterator[LabHandle]:
    require_privileges()
    with lab.up(REPO / "fixtures" / "lab" / "one-node.yaml") as handle:
        yield handle


def _veths(handle: LabHandle) -> list[str]:
    return sorted(p.interface for p in handle.pods.values() if p.interface)


def _endpoints(c: ExpectedConnection) -> tuple[tuple[str, int], tuple[str, int]]:
    if c.protocol == "ICMP":  # capture keys: (identifier, request type 8)
        return (c.client.peer.ip, int(c.extra["icmp_id"])), (c.server.peer.ip, 8)
    return (c.client.peer.ip, c.client.port), (c.server.peer.ip, c.server.port)


def test_every_scripted_connection_is_one_record_equal_to_tcpdump(
    one_node: LabHandle, tmp_path: Path
) -> None:
    node = one_node.nodes["node-1"]
    capture = Capture(
        node.netns, tmp_path=tmp_path, name="cap", args=["--cluster", str(one_node.snapshot_path)]
    ).start()
    dumps = {v: Tcpdump(node.netns, v, tmp_path / f"{v}.pcap") for v in _veths(one_node)}
    try:
        manifest = one_node.run_traffic()
        time.sleep(1.0)
    finally:
        pcaps = {v: d.stop() for v, d in dumps.items()}
        result = capture.stop()
    assert result.returncode == 0, result.stderr
    counts = {v: pcap_counts(p) for v, p in pcaps.items()}
    assert len(result.records) == len(manifest.connections), result.records

    for c in manifest.connections:
        client, server = _endpoints(c)
        recs = find(
            result.records,
            protocol=c.protocol,
            client_ip=client[0],
            client_port=client[1],
            server_ip=server[0],
            server_port=server[1],
        )
        assert len(recs) == 1, (c.step, client, server, result.records)
        rec = recs[0]
        assert rec["node"] == c.reporter == "node-1"
        # reported on the server pod's veth (every server here is a pod but the internet)
        owner = c.server.peer if c.server.peer.interface else c.client.peer
        assert rec["interface"] == owner.interface
        truth = view(counts[rec["interface"]], protocol=c.protocol, client=client, server=server)
        assert record_view(rec) == truth, (c.step, rec)
        if c.packets_out is not None:  # UDP, DNS, ICMP: the driver knows the exact figures
            assert record_view(rec) == (c.packets_out, c.ip_bytes_out, c.packets_in, c.ip_bytes_in)
        expected_orientation = {"TCP": "syn", "UDP": "socket", "ICMP": "syn"}[c.protocol]
        assert rec["orientation"] == expected_orientation, (c.step, rec)
        if c.service is not None:
            assert (rec.get("service_ip"), rec.get("service_port")) == (
                c.service.ip,
                c.service.port,
            )
        else:
            assert "service_ip" not in rec
    assert result.stats["lost_packets"] == 0
    assert result.stats["evicted_entries"] == 0
    assert_clean(node.netns)


def test_clusterip_traffic_lands_on_the_backend_pod_and_target_port(
    one_node: LabHandle, tmp_path: Path
) -> None:
    node = one_node.nodes["node-1"]
    service = one_node.services["demo/web"]
    backends = {p.ip: p for p in one_node.pods.values() if p.labels.get("app") == "web"}
    capture = Capture(node.netns, tmp_path=tmp_path, name="svc").start()
    try:
        manifest = one_node.run_traffic(
            [{"name": "svc", "kind": "tcp", "from": "demo/client", "to": "service:demo/web",
              "port": 80, "request": 150, "response": 7000, "connections": 6}]
        )  # fmt: skip
        time.sleep(1.0)
    finally:
        result = capture.stop()
    assert result.returncode == 0, result.stderr
    assert len(result.records) == 6
    for rec, c in zip(
        sorted(result.records, key=lambda r: r["client_port"]),
        sorted(manifest.connections, key=lambda c: c.client.port),
        strict=True,
    ):
        assert rec["server_ip"] == c.server.peer.ip and rec["server_ip"] in backends
        assert rec["server_port"] == 8080  # the target port, not the Service port
        assert rec["service_ip"] == service.cluster_ip and rec["service_port"] == 80
        assert rec["interface"] == backends[rec["server_ip"]].interface
    assert not find(result.records, server_ip=service.cluster_ip)
    assert_clean(node.netns)


def test_connections_open_before_capture_are_oriented_by_listening_sockets(
    one_node: LabHandle, tmp_path: Path
) -> None:
    """TCP with no SYN in sight, UDP on a high port with connected and sendto() clients."""
    node = one_node.nodes["node-1"]
    client_pod, server_pod = one_node.pod("demo/client"), one_node.pod("demo/echo")
    with peers() as p:
        p.server(server_pod.netns, "0.0.0.0:9090", "0.0.0.0:45001")
        cli = p.client(client_pod.netns)
        tcp_port = int(cli("tcp_open", "c1", server_pod.ip, 9090)[0])
        cli("tcp_send", "c1", 100)
        sendto_port = int(cli("udp_open", "u1", server_pod.ip, 45001, 0)[0])
        cli("udp_send", "u1", 50)
        connected_port = int(cli("udp_open", "u2", server_pod.ip, 45001, 1)[0])
        cli("udp_send", "u2", 60)

        capture = Capture(node.netns, tmp_path=tmp_path, name="pre").start()
        dump = Tcpdump(node.netns, server_pod.interface or "", tmp_path / "server.pcap")
        try:
            cli("tcp_send", "c1", 3000)
            for _ in range(3):
                cli("udp_send", "u1", 70)
            for _ in range(2):
                cli("udp_send", "u2", 80)
            cli("tcp_close", "c1")
            time.sleep(1.0)
        finally:
            counts = pcap_counts(dump.stop())
            result = capture.stop()
    assert result.returncode == 0, result.stderr
    for protocol, cport, sport in (
        ("TCP", tcp_port, 9090),
        ("UDP", sendto_port, 45001),
        ("UDP", connected_port, 45001),
    ):
        client, server = (client_pod.ip, cport), (server_pod.ip, sport)
        recs = find(result.records, protocol=protocol, client_port=cport, server_port=sport)
        assert len(recs) == 1, (protocol, cport, result.records)
        assert recs[0]["client_ip"] == client_pod.ip and recs[0]["server_ip"] == server_pod.ip
        assert recs[0]["orientation"] == "socket"
        assert record_view(recs[0]) == view(counts, protocol=protocol, client=client, server=server)
    assert_clean(node.netns)


def test_a_capture_restart_mid_traffic_neither_loses_nor_double_counts(
    one_node: LabHandle, tmp_path: Path
) -> None:
    node = one_node.nodes["node-1"]
    client_pod, server_pod = one_node.pod("demo/client"), one_node.pod("demo/web[0]")
    with peers() as p:
        p.server(server_pod.netns, "0.0.0.0:9091")
        cli = p.client(client_pod.netns)
        dumps = [
            Tcpdump(node.netns, pod.interface or "", tmp_path / f"{pod.name}.pcap")
            for pod in (client_pod, server_pod)
        ]
        first = Capture(node.netns, tmp_path=tmp_path, name="first", args=["--persist"]).start()

        traffic = BusyTraffic(cli, server_pod.ip, 9091, pause=0.02)
        try:
            time.sleep(2.0)
            a = first.stop()  # SIGTERM: final drain written; programs and maps stay
            assert our_filters(node.netns), "--persist must leave the programs attached"
            time.sleep(0.5)  # traffic meanwhile is counted into the pinned maps
            second = Capture(node.netns, tmp_path=tmp_path, name="second").start()
            time.sleep(2.0)
        finally:
            try:
                traffic.stop()
            finally:
                time.sleep(1.0)
                pcaps = [d.stop() for d in dumps]
        b = second.stop()
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert a.records and b.records
    # the server pod's veth reports pod-to-pod connections: compare with its tcpdump
    truth = pcap_counts(pcaps[1])
    got = merged(a.records + b.records)
    expected = {}
    for (proto, sip, sport, dip, dport), _ in truth.items():
        if dport == 9091:
            expected[(proto, sip, sport, dip, dport)] = view(
                truth, protocol=proto, client=(sip, sport), server=(dip, dport)
            )
    assert got == expected
    assert len(expected) > 10
    assert b.stats["lost_packets"] == 0 and b.stats["evicted_entries"] == 0
    assert_clean(node.netns)


def test_lru_overflow_is_reported_in_the_counters(one_node: LabHandle, tmp_path: Path) -> None:
    node = one_node.nodes["node-1"]
    client_pod, server_pod = one_node.pod("demo/client"), one_node.pod("demo/echo")
    capture = Capture(
        node.netns,
        tmp_path=tmp_path,
        name="lru",
        args=["--map-size", "16", "--drain-interval", "60"],
    ).start()
    with peers() as p:
        cli = p.client(client_pod.netns)
        cli("udp_spray", server_pod.ip, 20000, 400)  # 400 flows, 16 slots, no drain meanwhile
        time.sleep(0.5)
    result = capture.stop()
    assert result.returncode == 0, result.stderr
    stats = result.stats
    assert stats["evicted_entries"] > 0
    assert stats["lost_packets"] > 0
    # everything the kernel counted is either drained or reported lost
    assert stats["drained_packets"] + stats["lost_packets"] == stats["kernel"]["packets"]
    assert "evicted_entries" in result.stderr
    assert_clean(node.netns)


def test_pods_appearing_and_vanishing_mid_capture(one_node: LabHandle, tmp_path: Path) -> None:
    """A veth created during the capture gets the programs; deleting it mid-capture
    neither stops the capture nor loses what was counted on it."""
    node = one_node.nodes["node-1"]
    client_pod = one_node.pod("demo/client")
    tag = f"{int(time.time() * 1000) % 0xFFFF:04x}"
    pod_ns, host_if, pod_ip = f"nwebpf{tag}", f"nwe{tag}", "10.244.1.250"
    capture = Capture(node.netns, tmp_path=tmp_path, name="hotplug", args=["-v"]).start()
    dump = Tcpdump(node.netns, client_pod.interface or "", tmp_path / "client.pcap")
    created = False
    try:
        with peers() as p:
            run("ip", "netns", "add", pod_ns)
            created = True
            run("ip", "-n", node.netns, "link", "add", host_if, "type", "veth",
                "peer", "name", "eth0", "netns", pod_ns)  # fmt: skip
            host_mac = run("ip", "-n", node.netns, "-br", "link", "show", host_if).split()[2]
            pod_mac = run("ip", "-n", pod_ns, "-br", "link", "show", "eth0").split()[2]
            for cmd in (
                ["-n", pod_ns, "link", "set", "lo", "up"],
                ["-n", pod_ns, "link", "set", "eth0", "up"],
                ["-n", node.netns, "link", "set", host_if, "up"],
                ["-n", pod_ns, "addr", "add", f"{pod_ip}/32", "dev", "eth0"],
                ["-n", pod_ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"],
                ["-n", pod_ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"],
                ["-n", pod_ns, "neigh", "replace", "169.254.1.1", "lladdr", host_mac, "dev",
                 "eth0", "nud", "permanent"],
                ["-n", node.netns, "route", "add", f"{pod_ip}/32", "dev", host_if],
                ["-n", node.netns, "neigh", "replace", pod_ip, "lladdr", pod_mac, "dev", host_if,
                 "nud", "permanent"],
            ):  # fmt: skip
                run("ip", *cmd)
            deadline = time.monotonic() + 10
            while f"{host_if}/ingress" not in our_filters(node.netns):
                assert time.monotonic() < deadline, "the new veth was not attached"
                time.sleep(0.1)
            p.server(pod_ns, "0.0.0.0:9093")
            cli = p.client(client_pod.netns)
            port = int(cli("tcp_open", "c", pod_ip, 9093)[0])
            cli("tcp_send", "c", 2500)
            cli("tcp_close", "c")
            time.sleep(0.2)
            p.close()
            run("ip", "netns", "del", pod_ns)  # the veth vanishes with its namespace
            created = False
            time.sleep(1.0)
            assert capture.proc is not None and capture.proc.poll() is None
    finally:
        if created:
            run("ip", "netns", "del", pod_ns, check=False)
        counts = pcap_counts(dump.stop())
        result = capture.stop()
    assert result.returncode == 0, result.stderr
    assert f"attached to {host_if}" in result.stderr
    assert f"interface {host_if} vanished" in result.stderr
    recs = find(result.records, server_ip=pod_ip, server_port=9093, client_port=port)
    assert len(recs) == 1 and recs[0]["interface"] == host_if
    truth = view(counts, protocol="TCP", client=(client_pod.ip, port), server=(pod_ip, 9093))
    assert record_view(recs[0]) == truth
    assert_clean(node.netns)


def test_sigkill_leaves_no_filters_once_the_next_capture_exits(
    one_node: LabHandle, tmp_path: Path
) -> None:
    """A killed capture cannot clean up; the next one takes over its programs and maps."""
    node = one_node.nodes["node-1"]
    first = Capture(node.netns, tmp_path=tmp_path, name="killed").start()
    first.kill()
    assert our_filters(node.netns)
    second = Capture(node.netns, tmp_path=tmp_path, name="after").start()
    result = second.stop(signal.SIGINT)
    assert result.returncode == 0, result.stderr
    assert_clean(node.netns)
