"""The sniff backend on real veths, checked packet for packet against tcpdump.

Two network namespaces made here (`nwsniff…`), joined by veth pairs; a server in one, a
client in the other, real TCP and UDP (IPv4 and IPv6) between them and nowhere else.
tcpdump writes what it saw on the same veth; its file, dissected by scapy, is the truth
the sniff backend's records must equal. Everything is removed in finalizers.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.utils import rdpcap

from netwatch.capture.pcap import PcapSource
from netwatch.capture.sniff import SniffError, SniffSource
from netwatch.core.flow import Connection, Orientation
from netwatch.core.model import Protocol

pytestmark = pytest.mark.privileged

TCP_PORT, UDP_PORT = 8080, 45000  # the UDP server sits in the ephemeral range on purpose
REQUEST, RESPONSE, DATAGRAM, ANSWER = 5000, 20000, 100, 700

SERVER = f"""
import socket, sys, threading
def tcp(sock):
    while True:
        conn, _ = sock.accept()
        got = 0
        while got < {REQUEST}:
            got += len(conn.recv(65536))
        conn.sendall(b"s" * {RESPONSE})
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass
        conn.close()
def udp(sock):
    while True:
        _, peer = sock.recvfrom(65536)
        sock.sendto(b"a" * {ANSWER}, peer)
for host in sys.argv[1:]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    t = socket.socket(family, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((host, {TCP_PORT}))
    t.listen()
    u = socket.socket(family, socket.SOCK_DGRAM)
    u.bind((host, {UDP_PORT}))
    threading.Thread(target=tcp, args=(t,), daemon=True).start()
    threading.Thread(target=udp, args=(u,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = f"""
import socket, sys
host, datagrams = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.create_connection((host, {TCP_PORT}), timeout=10) as c:
    c.sendall(b"c" * {REQUEST})
    got = 0
    while chunk := c.recv(65536):
        got += len(chunk)
    assert got == {RESPONSE}, got
with socket.socket(family, socket.SOCK_DGRAM) as u:
    u.settimeout(10)
    for _ in range(datagrams):
        u.sendto(b"d" * {DATAGRAM}, (host, {UDP_PORT}))
        u.recvfrom(65536)
"""


def _require_privileges() -> None:
    problem = None
    if os.geteuid() != 0:
        problem = "needs root"
    elif shutil.which("ip") is None or shutil.which("tcpdump") is None:
        problem = "needs iproute2 and tcpdump"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"privileged test cannot run in CI: {problem}")
        pytest.skip(problem)


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@dataclass
class Link:
    """One veth pair: `a_if` in namespace A (client side), `b_if` in B (server side)."""

    a_if: str
    b_if: str
    a_ips: tuple[str, str]
    b_ips: tuple[str, str]


@dataclass
class Lab:
    ns_a: str
    ns_b: str
    links: list[Link]
    tmp: Path
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def spawn(self, ns: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.cleanups.append(lambda: _stop(proc))
        return proc

    def serve(self, link: Link) -> None:
        server = self.spawn(self.ns_b, sys.executable, "-c", SERVER, *link.b_ips)
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready", server.stderr

    def client(self, host: str, *, datagrams: int = 3) -> None:
        cmd = ["ip", "netns", "exec", self.ns_a, sys.executable, "-c", CLIENT, host]
        subprocess.run([*cmd, str(datagrams)], check=True, timeout=60)

    def tcpdump(self, link: Link) -> Callable[[], Path]:
        """Start tcpdump on the client-side veth; the returned call stops it."""
        out = self.tmp / f"{link.a_if}.pcap"
        # --immediate-mode: without it libpcap hands packets over per ring block, and
        # the block still filling when tcpdump is stopped is never written.
        cmd = ["tcpdump", "-i", link.a_if, "-n", "--immediate-mode", "-U", "-w", str(out)]
        proc = self.spawn(self.ns_a, *cmd)
        assert proc.stderr is not None
        for line in proc.stderr:  # "listening on <if>, link-type EN10MB ..."
            if "listening on" in line:
                break
        else:
            pytest.fail("tcpdump did not start")

        def stop() -> Path:
            time.sleep(0.3)
            proc.send_signal(2)
            proc.wait(timeout=10)
            return out

        return stop


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    _require_privileges()
    tag = secrets.token_hex(3)
    ns_a, ns_b = f"nwsniff{tag}a", f"nwsniff{tag}b"
    links = [
        Link(f"nws{tag}a{i}", f"nws{tag}b{i}", (f"10.213.{i}.1", f"fd00:213:{i + 1}::1"),
             (f"10.213.{i}.2", f"fd00:213:{i + 1}::2"))
        for i in range(2)
    ]  # fmt: skip
    built = Lab(ns_a, ns_b, links, tmp_path)

    def teardown() -> None:
        for cleanup in reversed(built.cleanups):
            cleanup()
        for ns in (ns_a, ns_b):  # deleting a namespace deletes its veth ends
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    request.addfinalizer(teardown)
    run("ip", "netns", "add", ns_a)
    run("ip", "netns", "add", ns_b)
    for ns in (ns_a, ns_b):
        run("ip", "-n", ns, "link", "set", "lo", "up")
    for link in links:
        run("ip", "link", "add", link.a_if, "netns", ns_a, "type", "veth",
            "peer", link.b_if, "netns", ns_b)  # fmt: skip
        for ns, dev, (v4, v6) in ((ns_a, link.a_if, link.a_ips), (ns_b, link.b_if, link.b_ips)):
            run("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            run("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            run("ip", "-n", ns, "link", "set", dev, "up")
    yield built


def truth(pcap: Path) -> Counter[tuple[str, int, str, int, str, str]]:
    """(src, sport, dst, dport, proto, 'packets'|'bytes') → count, dissected by scapy."""
    counts: Counter[tuple[str, int, str, int, str, str]] = Counter()
    for pkt in rdpcap(str(pcap)):
        ip = pkt[IP] if IP in pkt else pkt.getlayer(IPv6)
        l4 = pkt[TCP] if TCP in pkt else pkt.getlayer(UDP)
        if ip is None or l4 is None:
            continue  # ARP, neighbour discovery, MLD: not what this test sends
        size = ip.len if IP in pkt else ip.plen + 40
        key = (ip.src, l4.sport, ip.dst, l4.dport, "TCP" if TCP in pkt else "UDP")
        counts[(*key, "packets")] += 1
        counts[(*key, "bytes")] += size
    return counts


def as_counts(conns: list[Connection]) -> Counter[tuple[str, int, str, int, str, str]]:
    counts: Counter[tuple[str, int, str, int, str, str]] = Counter()
    for c in conns:
        if c.protocol not in (Protocol.TCP, Protocol.UDP):
            continue
        out = (c.client_ip, c.client_port, c.server_ip, c.server_port, c.protocol.value)
        back = (c.server_ip, c.server_port, c.client_ip, c.client_port, c.protocol.value)
        counts[(*out, "packets")] += c.packets_out
        counts[(*out, "bytes")] += c.bytes_out
        counts[(*back, "packets")] += c.packets_in
        counts[(*back, "bytes")] += c.bytes_in
    return +counts


def collect(source: SniffSource) -> list[Connection]:
    """Close (which reads the sockets' tail), then drain."""
    time.sleep(0.3)
    source.close()
    return list(source.drain())


def test_records_equal_tcpdump_on_the_same_veth(lab: Lab) -> None:
    link = lab.links[0]
    lab.serve(link)
    stop_tcpdump = lab.tcpdump(link)
    source = SniffSource([link.a_if], netns=lab.ns_a, node="lab-node")
    try:
        for host in (link.b_ips[0], link.b_ips[1]):
            lab.client(host)
        conns = collect(source)
    finally:
        source.close()
    pcap = stop_tcpdump()

    assert as_counts(conns) == +truth(pcap)
    tcp_udp = [c for c in conns if c.protocol in (Protocol.TCP, Protocol.UDP)]
    assert len(tcp_udp) == 4, "one record per connection: TCP and UDP, IPv4 and IPv6"
    for conn in tcp_udp:
        assert conn.client_ip in link.a_ips, "oriented client → server"
        assert conn.server_port == (TCP_PORT if conn.protocol is Protocol.TCP else UDP_PORT)
        assert conn.orientation is (
            Orientation.SYN if conn.protocol is Protocol.TCP else Orientation.HEURISTIC
        )
        assert (conn.node, conn.interface) == ("lab-node", link.a_if)
        assert conn.first_seen <= conn.last_seen
    assert source.lost == 0
    assert source.interfaces_lost == []

    # The pcap backend reading tcpdump's file agrees with the live capture.
    from_file = list(PcapSource(pcap, node="lab-node", interface=link.a_if).drain())
    assert as_counts(from_file) == as_counts(conns)


def test_drain_returns_deltas_while_traffic_flows(lab: Lab) -> None:
    link = lab.links[0]
    lab.serve(link)
    source = SniffSource([link.a_if], netns=lab.ns_a)
    try:
        lab.client(link.b_ips[0], datagrams=1)
        time.sleep(0.5)
        first = list(source.drain())
        assert source.drain() == [], "nothing new since the last drain"
        lab.client(link.b_ips[0], datagrams=1)
        second = collect(source)
    finally:
        source.close()
    assert {c.protocol for c in first} >= {Protocol.TCP, Protocol.UDP}
    udp = [c for c in first + second if c.protocol is Protocol.UDP]
    assert len({c.client_port for c in udp}) == 2, "each client run is a new UDP flow"
    assert all(c.packets_out == c.packets_in == 1 for c in udp), "deltas, not totals"


def test_an_interface_vanishing_mid_capture_is_survived(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    keep, doomed = lab.links
    lab.serve(keep)
    stop_tcpdump = lab.tcpdump(keep)
    source = SniffSource([keep.a_if, doomed.a_if], netns=lab.ns_a)
    try:
        lab.client(keep.b_ips[0])
        with caplog.at_level(logging.WARNING, logger="netwatch.capture.sniff"):
            run("ip", "-n", lab.ns_a, "link", "del", doomed.a_if)
            deadline = time.monotonic() + 5
            while not source.interfaces_lost and time.monotonic() < deadline:
                time.sleep(0.05)
        assert source.interfaces_lost == [doomed.a_if]
        assert not source.finished, "capture continues on the other interface"
        lab.client(keep.b_ips[1])
        conns = collect(source)
    finally:
        source.close()
    assert f"interface {doomed.a_if} vanished" in caplog.text
    assert as_counts(conns) == +truth(stop_tcpdump())


def test_all_interfaces_gone_finishes_the_source(lab: Lab) -> None:
    link = lab.links[0]
    source = SniffSource([link.a_if], netns=lab.ns_a, poll_interval=0.05)
    try:
        run("ip", "-n", lab.ns_a, "link", "del", link.a_if)
        deadline = time.monotonic() + 5
        while not source.finished and time.monotonic() < deadline:
            time.sleep(0.05)
        assert source.finished
        assert source.interfaces_lost == [link.a_if]
    finally:
        source.close()


def test_kernel_drops_are_counted_as_lost(lab: Lab) -> None:
    link = lab.links[0]
    lab.serve(link)
    stop_tcpdump = lab.tcpdump(link)
    source = SniffSource([link.a_if], netns=lab.ns_a, buffer_bytes=4096)
    try:
        # Stall the reader (it waits for this lock to count a batch) while a burst fills
        # the tiny socket buffer: what does not fit is dropped by the kernel.
        with source._lock:
            lab.client(link.b_ips[0], datagrams=300)
            time.sleep(0.2)
        conns = collect(source)
    finally:
        source.close()
    wire = sum(n for k, n in truth(stop_tcpdump()).items() if k[5] == "packets")
    counted = sum(n for k, n in as_counts(conns).items() if k[5] == "packets")
    assert source.lost > 0
    assert counted < wire
    assert counted + source.lost >= wire, "every frame missing from the records is in `lost`"


def test_unknown_interface_or_namespace_fails_at_once(lab: Lab) -> None:
    with pytest.raises(SniffError, match=f"no interface 'nope0' in network namespace {lab.ns_a}"):
        SniffSource(["nope0"], netns=lab.ns_a)
    with pytest.raises(SniffError, match="No such file"):
        SniffSource(["lo"], netns="nwsniff-does-not-exist")
