"""Shared plumbing of the capture benchmarks: a routed mini node, the capture CLI, CPU time.

`MiniNode` builds `nwbench<tag>-n` with pods `nwbench<tag>-p<i>` on routed veths (the
lab's and Calico's layout: /32 routes, static neighbours — no ARP in the measurements),
each pod with `addresses` IPv4 addresses so a churn client can spread its connections
over several source IPs (no 5-tuple is reused within a run). Everything is deleted on
exit, also on failure. `CaptureProcess` runs `netwatch capture --netns` like an operator
would and reads its CPU time from /proc; the figures are what that process costs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def sh(*argv: str, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True)
class Pod:
    netns: str
    interface: str
    ips: tuple[str, ...]


@dataclass(frozen=True)
class MiniNode:
    netns: str
    pods: tuple[Pod, ...]


@contextlib.contextmanager
def mini_node(pods: int = 2, addresses: int = 1) -> Iterator[MiniNode]:
    tag = os.urandom(2).hex()
    node = f"nwbench{tag}-n"
    made: list[str] = []
    try:
        sh("ip", "netns", "add", node)
        made.append(node)
        sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "-n", node, "link", "set", "lo", "up")
        built = []
        for i in range(1, pods + 1):
            ns, host, mac = f"nwbench{tag}-p{i}", f"nwb{tag}h{i}", f"ee:ee:ee:00:01:{i:02x}"
            ips = tuple(f"10.197.{i}.{a}" for a in range(1, addresses + 1))
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", node, "link", "add", host, "address", mac, "type", "veth",
               "peer", "name", "eth0", "netns", ns)  # fmt: skip
            for ip in ips:
                sh("ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", "eth0")
            for cmd in (
                ["-n", ns, "link", "set", "lo", "up"],
                ["-n", ns, "link", "set", "eth0", "up"],
                ["-n", node, "link", "set", host, "up"],
                ["-n", ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"],
                ["-n", ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0",
                 "src", ips[0]],
                ["-n", ns, "neigh", "replace", "169.254.1.1", "lladdr", mac, "dev", "eth0",
                 "nud", "permanent"],
            ):  # fmt: skip
                sh("ip", *cmd)
            pod_mac = sh("ip", "-n", ns, "-br", "link", "show", "eth0").split()[2]
            for ip in ips:
                sh("ip", "-n", node, "route", "add", f"{ip}/32", "dev", host)
                sh("ip", "-n", node, "neigh", "replace", ip, "lladdr", pod_mac, "dev", host,
                   "nud", "permanent")  # fmt: skip
            built.append(Pod(ns, host, ips))
        yield MiniNode(node, tuple(built))
    finally:
        for ns in reversed(made):
            sh("ip", "netns", "del", ns, check=False)


def netns_cmd(netns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CaptureProcess:
    """`netwatch capture --netns NODE` in the background, until `stop()`."""

    def __init__(self, netns: str, *, workdir: Path, name: str, args: Sequence[str] = ()) -> None:
        self.out = workdir / f"{name}.jsonl"
        self.stats_path = workdir / f"{name}.stats.json"
        self.err = workdir / f"{name}.stderr"
        argv = [
            sys.executable, "-m", "netwatch.cli.main", "capture", "--netns", netns,
            "--out", str(self.out), "--stats", str(self.stats_path), *args,
        ]  # fmt: skip
        self.total_cpu_s: float | None = None
        with self.err.open("wb") as err:
            self.proc = subprocess.Popen(argv, stderr=err, stdout=subprocess.DEVNULL, cwd=REPO)
        deadline = time.monotonic() + 120
        while "capturing with" not in self.err.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"capture did not start:\n{self.err.read_text()}")
            time.sleep(0.1)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """SIGTERM, wait; `total_cpu_s` is the whole life (compile, attach, final drain)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            _, status, usage = os.wait4(self.proc.pid, 0)
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            self.total_cpu_s = usage.ru_utime + usage.ru_stime
        self.proc.wait(timeout=300)
        if self.proc.returncode != 0:
            raise RuntimeError(f"capture failed:\n{self.err.read_text()}")
        records = [json.loads(line) for line in self.out.read_text().splitlines() if line]
        return records, json.loads(self.stats_path.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def machine() -> dict[str, Any]:
    return {
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
