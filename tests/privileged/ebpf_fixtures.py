"""Shared helpers of the eBPF capture tests: the capture CLI, tcpdump, scripted peers.

Truth is what tcpdump wrote on the same host-side veth the programs sit on: its pcap,
read with scapy, counted per 5-tuple with the same ICMP keys and the same byte unit
(whole IP packets: frame length minus the 14-byte Ethernet header) as the capture.
Traffic runs only between namespaces the tests (or the lab they bring up) created.
Everything started here is stopped in the callers' finalizers; `assert_clean` checks
that no TC filter and no pinned map survive a capture.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.sctp import SCTP
from scapy.utils import RawPcapReader

REPO = Path(__file__).resolve().parents[2]
PIN_ROOT = Path("/sys/fs/bpf/netwatch")
ETH_HLEN = 14


def require_privileges() -> None:
    """Root, iproute2, tcpdump and bcc; missing ones skip locally and FAIL in CI."""
    problem = None
    if os.geteuid() != 0:
        problem = "needs root"
    elif not all(shutil.which(tool) for tool in ("ip", "tc", "tcpdump")):
        problem = "needs iproute2 and tcpdump"
    else:
        try:
            import bcc  # noqa: F401
        except ImportError:
            problem = "needs bcc (python3-bpfcc)"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"privileged test cannot run in CI: {problem}")
        pytest.skip(problem)


def run(*argv: str, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


def netns_inode(netns: str) -> int:
    return os.stat(f"/run/netns/{netns}").st_ino


def pin_dir_of(netns: str) -> Path:
    return PIN_ROOT / f"netns-{netns_inode(netns)}"


def _stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# -- the capture CLI -------------------------------------------------------------------


@dataclass
class CaptureResult:
    records: list[dict[str, Any]]
    stats: dict[str, Any]
    stderr: str
    returncode: int


class Capture:
    """`netwatch capture --netns NETNS` as a subprocess, started and awaited until ready."""

    def __init__(
        self,
        netns: str,
        *,
        tmp_path: Path,
        name: str,
        node: str = "node-1",
        args: Sequence[str] = (),
    ) -> None:
        self.netns = netns
        self.out = tmp_path / f"{name}.jsonl"
        self.stats_path = tmp_path / f"{name}.stats.json"
        self.err_path = tmp_path / f"{name}.stderr"
        self.argv = [
            sys.executable, "-m", "netwatch.cli.main", "capture", "--backend", "ebpf",
            "--netns", netns, "--out", str(self.out), "--stats", str(self.stats_path),
            "--node-name", node, "--drain-interval", "0.5", *args,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> Capture:
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(self.argv, stderr=err, stdout=subprocess.DEVNULL, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.err_path.read_text()
            if "capturing with" in text:
                return self
            if self.proc.poll() is not None:
                pytest.fail(f"capture exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.1)
        pytest.fail(f"capture did not start within {timeout}s:\n{self.err_path.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> CaptureResult:
        assert self.proc is not None
        _stop(self.proc, sig)
        records = [json.loads(line) for line in self.out.read_text().splitlines() if line]
        stats = json.loads(self.stats_path.read_text()) if self.stats_path.exists() else {}
        return CaptureResult(records, stats, self.err_path.read_text(), self.proc.returncode)

    def kill(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGKILL)


# -- tcpdump ---------------------------------------------------------------------------


class Tcpdump:
    """tcpdump -w on one interface of a namespace; `stop()` returns the pcap path."""

    def __init__(self, netns: str, interface: str, path: Path) -> None:
        self.path = path
        self.interface = interface
        # --immediate-mode: otherwise the ring block still filling at stop is lost
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "tcpdump", "-i", interface, "-n", "-s", "0",
             "-B", "32768", "--immediate-mode", "-U", "-w", str(path)],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "listening on" in line:
                break
        else:
            pytest.fail(f"tcpdump on {interface} did not start")

    def stop(self) -> Path:
        time.sleep(0.3)
        _stop(self.proc, signal.SIGINT)
        stderr = self.proc.stderr.read() if self.proc.stderr else ""
        assert re.search(r"^0 packets dropped by kernel", stderr, re.M), stderr
        if self.proc.stderr:
            self.proc.stderr.close()
        return self.path


# -- counting a pcap the capture's way ---------------------------------------------------

Key = tuple[str, str, int, str, int]
"""(protocol, src ip, src port, dst ip, dst port) of one direction."""
_ICMP4_QUERIES = {8: 8, 13: 13, 15: 15, 17: 17}
_ICMP4_REPLIES = {0: 8, 14: 13, 16: 15, 18: 17}


def _icmp_ports(v6: bool, icmp_type: int, ident: int) -> tuple[int, int]:
    if v6:
        if icmp_type == 128:
            return ident, 128
        if icmp_type == 129:
            return 128, ident
        return 0, icmp_type
    if icmp_type in _ICMP4_QUERIES:
        return ident, icmp_type
    if icmp_type in _ICMP4_REPLIES:
        return _ICMP4_REPLIES[icmp_type], ident
    return 0, icmp_type


def pcap_counts(path: Path) -> dict[Key, list[int]]:
    """[packets, bytes] per direction, bytes = whole IP packets (frame minus Ethernet)."""
    counts: dict[Key, list[int]] = defaultdict(lambda: [0, 0])
    from scapy.layers.l2 import Ether

    with RawPcapReader(str(path)) as reader:
        for data, meta in reader:
            frame = Ether(data)
            ip = frame.getlayer(IP) or frame.getlayer(IPv6)
            if ip is None:
                continue
            v6 = isinstance(ip, IPv6)
            if v6 and ip.nh == 58 and 130 <= int(bytes(ip.payload)[0]) <= 143:
                continue  # neighbour discovery / MLD: not conversations (flows.c skips them)
            for layer, name in ((TCP, "TCP"), (UDP, "UDP"), (SCTP, "SCTP")):
                l4 = ip.getlayer(layer)
                if l4 is not None:
                    key = (name, ip.src, l4.sport, ip.dst, l4.dport)
                    break
            else:
                raw = bytes(ip.payload)
                if (v6 and ip.nh != 58) or (not v6 and ip.getlayer(ICMP) is None):
                    continue
                sport, dport = _icmp_ports(v6, raw[0], int.from_bytes(raw[4:6], "big"))
                key = ("ICMP", ip.src, sport, ip.dst, dport)
            entry = counts[key]
            entry[0] += 1
            entry[1] += meta.wirelen - ETH_HLEN
    return dict(counts)


def view(
    counts: dict[Key, list[int]], *, protocol: str, client: tuple[str, int], server: tuple[str, int]
) -> tuple[int, int, int, int]:
    """(packets_out, bytes_out, packets_in, bytes_in) of one connection in `counts`."""
    out = counts.get((protocol, *client, *server), [0, 0])
    back = counts.get((protocol, *server, *client), [0, 0])
    return out[0], out[1], back[0], back[1]


def record_view(record: dict[str, Any]) -> tuple[int, int, int, int]:
    return (record["packets_out"], record["bytes_out"], record["packets_in"], record["bytes_in"])


def find(records: Sequence[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def merged(records: Sequence[dict[str, Any]]) -> dict[tuple[Any, ...], tuple[int, int, int, int]]:
    """Sum of counts per (protocol, client, server) over several captures' records."""
    out: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in records:
        key = (r["protocol"], r["client_ip"], r["client_port"], r["server_ip"], r["server_port"])
        for i, v in enumerate(record_view(r)):
            out[key][i] += v
    return {k: (v[0], v[1], v[2], v[3]) for k, v in out.items()}


# -- cleanliness -----------------------------------------------------------------------


def our_filters(netns: str) -> list[str]:
    """Links of `netns` still carrying a netwatch TC program."""
    found = []
    for line in run("ip", "-n", netns, "-o", "link", "show").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        for hook in ("ingress", "egress"):
            shown = run("ip", "netns", "exec", netns, "tc", "filter", "show", "dev", name, hook,
                        check=False)  # fmt: skip
            if "nw_ingress" in shown or "nw_egress" in shown:
                found.append(f"{name}/{hook}")
    return found


def assert_clean(netns: str) -> None:
    assert our_filters(netns) == []
    pins = pin_dir_of(netns)
    assert not pins.exists(), f"pinned maps left in {pins}: {list(pins.iterdir())}"


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A small tmpfs of our own at `path` (mount options: size=, nr_inodes=): a disk
    that really fills up. Unmounted (lazily: open files may remain) on exit."""
    require_privileges()
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


# -- scripted peers (own servers/clients inside lab namespaces) --------------------------

ECHO_SERVER = """
import socket, sys, threading
def tcp(sock):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()
def echo(conn):
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.close()
def udp(sock):
    while True:
        data, peer = sock.recvfrom(65536)
        sock.sendto(data, peer)
for spec in sys.argv[1:]:
    host, port = spec.rsplit(":", 1)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    t = socket.socket(family, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((host, int(port)))
    t.listen(512)
    u = socket.socket(family, socket.SOCK_DGRAM)
    u.bind((host, int(port)))
    threading.Thread(target=tcp, args=(t,), daemon=True).start()
    threading.Thread(target=udp, args=(u,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

PHASE_CLIENT = """
import socket, sys
socks = {}
def reply(*parts):
    print("ok", *parts, flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "tcp_open":
        ident, host, port = args
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.create_connection((host, int(port)), timeout=10)
        socks[ident] = s
        reply(s.getsockname()[1])
    elif cmd == "tcp_send":
        ident, n = args[0], int(args[1])
        s = socks[ident]
        s.sendall(b"t" * n)
        got = 0
        while got < n:
            got += len(s.recv(65536))
        reply(got)
    elif cmd == "tcp_close":
        s = socks.pop(args[0])
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
        s.close()
        reply()
    elif cmd == "udp_open":
        ident, host, port, connected = args
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        if connected == "1":
            s.connect((host, int(port)))
        socks[ident] = (s, (host, int(port)), connected == "1")
        reply(s.getsockname()[1])
    elif cmd == "udp_send":
        ident, n = args[0], int(args[1])
        s, target, connected = socks[ident]
        if connected:
            s.send(b"u" * n)
        else:
            s.sendto(b"u" * n, target)
        s.recvfrom(65536)
        reply()
    elif cmd == "udp_close":
        socks.pop(args[0])[0].close()
        reply()
    elif cmd == "udp_spray":
        host, first, count = args[0], int(args[1]), int(args[2])
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for port in range(first, first + count):
            s.sendto(b"s" * 20, (host, port))
        s.close()
        reply()
    elif cmd == "quit":
        reply()
        break
"""


@dataclass
class Peers:
    """Echo servers and one stdin-driven client, each in a namespace of ours."""

    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def server(self, netns: str, *endpoints: str) -> None:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", ECHO_SERVER, *endpoints],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""

    def client(self, netns: str) -> PhaseClient:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", PHASE_CLIENT],
            stdout=subprocess.PIPE, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.procs.append(proc)
        return PhaseClient(proc)

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                _stop(proc, signal.SIGKILL, timeout=10)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()


@dataclass
class PhaseClient:
    proc: subprocess.Popen[str]

    def __call__(self, *words: object) -> list[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ok":
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"client {words}: {line} {err}")
        return line[1:]


class BusyTraffic:
    """A client kept busy until `stop()`: one long TCP connection and one connected UDP
    flow carrying varied sizes, plus a new short TCP connection per round — traffic that
    is in flight whenever a capture or agent is stopped, killed or restarted."""

    def __init__(self, cli: PhaseClient, server_ip: str, port: int, *, pause: float = 0.0):
        self._cli, self._ip, self._port, self._pause = cli, server_ip, port, pause
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="busy-traffic")
        self._thread.start()

    def _run(self) -> None:
        cli = self._cli
        try:
            cli("tcp_open", "long", self._ip, self._port)
            cli("udp_open", "u", self._ip, self._port, 1)
            i = 0
            while not self._stop.is_set():
                cli("tcp_send", "long", 300 + i % 700)
                cli("udp_send", "u", 40 + i % 100)
                cli("tcp_open", f"s{i}", self._ip, self._port)
                cli("tcp_send", f"s{i}", 64)
                cli("tcp_close", f"s{i}")
                i += 1
                self._stop.wait(self._pause)
            cli("tcp_close", "long")
        except BaseException as exc:
            self._errors.append(exc)

    def stop(self) -> None:
        """End the rounds, close the long connection; raise what went wrong meanwhile."""
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the traffic client hangs"
        assert not self._errors, self._errors


@contextlib.contextmanager
def peers() -> Iterator[Peers]:
    p = Peers()
    try:
        yield p
    finally:
        p.close()


# -- a minimal node of our own (IPv4 + IPv6), for what the lab does not carry -----------


@dataclass(frozen=True)
class MiniPod:
    netns: str
    interface: str
    """Host-side veth, in the node namespace."""
    ipv4: str
    ipv6: str


@dataclass(frozen=True)
class MiniNode:
    netns: str
    pods: tuple[MiniPod, ...]


@contextlib.contextmanager
def mini_node(pods: int = 2) -> Iterator[MiniNode]:
    """`nwebpf<tag>-n` with routed pods `nwebpf<tag>-p<i>` (Calico-style /32 and /128
    routes, static neighbours both ways: no ARP/ND in the captures)."""
    tag = os.urandom(2).hex()
    node = f"nwebpf{tag}-n"
    made: list[str] = []
    try:
        run("ip", "netns", "add", node)
        made.append(node)
        run("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1")  # fmt: skip
        run("ip", "-n", node, "link", "set", "lo", "up")
        built = []
        for i in range(1, pods + 1):
            ns, host = f"nwebpf{tag}-p{i}", f"nwe{tag}h{i}"
            v4 = f"10.198.{int(tag[:2], 16)}.{i}"
            v6 = str(ipaddress.IPv6Address(f"fd98:{tag}::{i}"))  # canonical: no leading 0
            host_mac = f"ee:ee:ee:00:00:{i:02x}"
            run("ip", "netns", "add", ns)
            made.append(ns)
            run("ip", "-n", node, "link", "add", host, "address", host_mac, "type", "veth",
                "peer", "name", "eth0", "netns", ns)  # fmt: skip
            for cmd in (
                ["-n", ns, "link", "set", "lo", "up"],
                ["-n", ns, "link", "set", "eth0", "up"],
                ["-n", node, "link", "set", host, "up"],
                ["-n", ns, "addr", "add", f"{v4}/32", "dev", "eth0"],
                ["-n", ns, "addr", "add", f"{v6}/128", "dev", "eth0", "nodad"],
                ["-n", ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"],
                ["-n", ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"],
                ["-n", ns, "neigh", "replace", "169.254.1.1", "lladdr", host_mac, "dev", "eth0",
                 "nud", "permanent"],
                ["-n", ns, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"],
                ["-n", ns, "-6", "neigh", "replace", "fe80::1", "lladdr", host_mac, "dev", "eth0",
                 "nud", "permanent"],
                ["-n", node, "addr", "add", "fe80::1/64", "dev", host, "nodad"],
            ):  # fmt: skip
                run("ip", *cmd)
            pod_mac = run("ip", "-n", ns, "-br", "link", "show", "eth0").split()[2]
            for family, addr, prefix in (("-4", v4, 32), ("-6", v6, 128)):
                run("ip", "-n", node, family, "route", "add", f"{addr}/{prefix}", "dev", host)
                run("ip", "-n", node, family, "neigh", "replace", addr, "lladdr", pod_mac,
                    "dev", host, "nud", "permanent")  # fmt: skip
            built.append(MiniPod(ns, host, v4, v6))
        yield MiniNode(node, tuple(built))
    finally:
        for ns in reversed(made):
            run("ip", "netns", "del", ns, check=False)
