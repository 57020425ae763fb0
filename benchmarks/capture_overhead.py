"""What the eBPF capture costs the traffic it watches: iperf3 with and without it.

(a) TCP pod→pod throughput (iperf3, one stream) and (b) the 64-byte UDP packet rate
(packets per second that reached the server: `udp_blast.c`, sendmmsg/recvmmsg in
batches of 64, compiled with the system's cc — iperf3 -u is limited by its own per-packet
syscalls long before the kernel path is; without a compiler iperf3 -u -l 64 -b 0 is
used and the result says so), each measured with
`netwatch capture` attached to both pods' veths and without, ALTERNATING in one run
(off/on, then on/off, ...) so drift and warm-up hit both sides alike. The ratio is
median(with) / median(without). Targets: TCP ≥ 0.95, UDP 64 B ≥ 0.90.

    .venv/bin/python benchmarks/capture_overhead.py [--rounds 5] [--seconds 5]

Writes benchmarks/results/capture_overhead.json; exit 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from capture_env import CaptureProcess, MiniNode, machine, mini_node, netns_cmd

RESULTS = Path(__file__).resolve().parent / "results" / "capture_overhead.json"
TARGETS = {"tcp_throughput": 0.95, "udp64_packet_rate": 0.90}


def iperf(node: MiniNode, *, udp: bool, seconds: float) -> float:
    client, server = node.pods
    srv = subprocess.Popen(
        netns_cmd(server.netns, ["iperf3", "-s", "-1", "-B", server.ips[0]]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.3)
    try:
        args = ["iperf3", "-c", server.ips[0], "-t", str(seconds), "-J"]
        if udp:
            args += ["-u", "-l", "64", "-b", "0"]
        out = subprocess.run(
            netns_cmd(client.netns, args), capture_output=True, text=True, check=True, timeout=120
        )
    finally:
        srv.wait(timeout=30)
    end = json.loads(out.stdout)["end"]
    if udp:
        s = end["sum"]
        return float(s["packets"] - s["lost_packets"]) / float(s["seconds"])
    return float(end["sum_received"]["bits_per_second"])


def build_blaster(workdir: Path) -> Path | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    binary = workdir / "udp_blast"
    source = Path(__file__).resolve().parent / "udp_blast.c"
    subprocess.run([cc, "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def blast(node: MiniNode, *, binary: Path, seconds: float) -> float:
    client, server = node.pods
    sink = subprocess.Popen(
        netns_cmd(server.netns, [str(binary), "recv", server.ips[0], "5201"]),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert sink.stdout is not None
    try:
        assert sink.stdout.readline().strip() == "ready"
        subprocess.run(
            netns_cmd(client.netns, [str(binary), "send", server.ips[0], "5201", str(seconds)]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        received = int(sink.stdout.readline().split()[0])
    finally:
        sink.wait(timeout=30)
        sink.stdout.close()
    return received / seconds


def measure(node: MiniNode, *, rounds: int, seconds: float, workdir: Path) -> dict[str, Any]:
    binary = build_blaster(workdir)
    samples: dict[str, dict[str, list[float]]] = {
        name: {"without": [], "with": []} for name in TARGETS
    }
    cpu: list[float] = []
    for r in range(rounds):
        order = ("without", "with") if r % 2 == 0 else ("with", "without")
        for mode in order:
            capture = None
            if mode == "with":
                capture = CaptureProcess(node.netns, workdir=workdir, name=f"r{r}")
                cpu0, t0 = capture.cpu(), time.monotonic()
            try:
                samples["tcp_throughput"][mode].append(iperf(node, udp=False, seconds=seconds))
                samples["udp64_packet_rate"][mode].append(
                    blast(node, binary=binary, seconds=seconds)
                    if binary is not None
                    else iperf(node, udp=True, seconds=seconds)
                )
            finally:
                if capture is not None:
                    cpu.append((capture.cpu() - cpu0) / (time.monotonic() - t0))
                    capture.stop()
            print(
                f"round {r} {mode:8s} tcp {samples['tcp_throughput'][mode][-1] / 1e9:6.2f} Gbit/s"
                f"  udp64 {samples['udp64_packet_rate'][mode][-1] / 1e3:7.1f} kpps",
                flush=True,
            )
    result: dict[str, Any] = {
        "machine": machine(),
        "loadavg_after": os.getloadavg(),
        "rounds": rounds,
        "seconds": seconds,
        "udp_tool": "udp_blast.c (sendmmsg)" if binary is not None else "iperf3 -u -l 64 -b 0",
    }
    for name, modes in samples.items():
        without, with_ = statistics.median(modes["without"]), statistics.median(modes["with"])
        result[name] = {
            "without": modes["without"],
            "with": modes["with"],
            "median_without": without,
            "median_with": with_,
            "ratio": with_ / without,
            "target": TARGETS[name],
        }
    result["capture_cpu_fraction_of_a_core"] = statistics.median(cpu)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, mini_node() as node:
        result = measure(node, rounds=args.rounds, seconds=args.seconds, workdir=Path(tmp))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    ok = True
    for name, target in TARGETS.items():
        ratio = result[name]["ratio"]
        ok &= ratio >= target
        print(f"{name}: ratio {ratio:.3f} (target >= {target})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
