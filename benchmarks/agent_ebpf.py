"""The whole agent on eBPF under connection churn, with and without `--state-dir`.

`netwatch agent --backend ebpf --netns NODE` (capture, attribution, policy evaluation,
telemetry, HTTP) watches a routed mini node (`capture_env.MiniNode`) while `tcp_churn.c`
opens `--rate` TCP connections per second for `--seconds` (connect, 64-byte request,
64-byte reply, close; 32 source addresses). Two runs side by side on fresh mini nodes:
without a state directory, and with one (a checkpoint per drain plus the capture's
write-ahead journal: what crash safety costs). Each run reports the agent's CPU (utime +
stime from /proc, fraction of one core over the traffic), its RSS after the traffic and
its peak (VmHWM, which includes bcc's LLVM compile at start), and
`netwatch_flows_total` for the server port scraped from `/metrics` — which must equal the
connections the client completed (exit status 1 otherwise).

    .venv/bin/python benchmarks/agent_ebpf.py [--rate 2000 --seconds 30]

Writes benchmarks/results/agent_ebpf.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from capture_churn import PORT, build_churn, churn
from capture_env import REPO, MiniNode, cpu_seconds, machine, mini_node, netns_cmd

RESULTS = Path(__file__).resolve().parent / "results" / "agent_ebpf.json"
LISTEN = "127.0.0.1:9899"


def cluster_yaml(node: MiniNode) -> str:
    """The mini node as a cluster snapshot: namespace `bench`, workloads client/server."""
    items = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}},
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "bench-node"},
            "spec": {"podCIDR": "10.197.0.0/16"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.99.1"}]},
        },
    ]
    for name, pod in zip(("client", "server"), node.pods, strict=True):
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{name}-0",
                    "namespace": "bench",
                    "uid": f"uid-{name}",
                    "creationTimestamp": "2020-01-01T00:00:00Z",
                    "labels": {"app": name},
                },
                "spec": {"nodeName": "bench-node", "containers": [{"name": "c", "image": "i"}]},
                "status": {
                    "phase": "Running",
                    "podIP": pod.ips[0],
                    "podIPs": [{"ip": ip} for ip in pod.ips],
                },
            }
        )
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=1)


def scrape(netns: str) -> str:
    code = (
        "import sys, urllib.request; "
        f"sys.stdout.write(urllib.request.urlopen('http://{LISTEN}/metrics', timeout=30)"
        ".read().decode())"
    )
    return subprocess.run(
        netns_cmd(netns, [sys.executable, "-c", code]),
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip


def flows_to_port(text: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "netwatch_flows_total" and s.labels.get("dst_port") == str(PORT)
    )


def rss_mib(pid: int, field: str) -> float:
    """`VmRSS` (now), `VmHWM` (peak, with bcc's LLVM compile at start), `RssAnon` (the
    process's own memory) or `RssFile` (mapped files: mostly libLLVM's shared text)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_once(
    binary: Path, workdir: Path, *, state: bool, rate: float, seconds: float
) -> dict[str, Any]:
    with mini_node(pods=2, addresses=32) as node:
        snapshot = workdir / "cluster.json"
        snapshot.write_text(cluster_yaml(node))
        log = workdir / f"agent-{'state' if state else 'memory'}.log"
        argv = [
            sys.executable, "-m", "netwatch.cli.main", "agent", "--backend", "ebpf",
            "--netns", node.netns, "--node-name", "bench-node", "--cluster", str(snapshot),
            "--listen", LISTEN, "--drain-interval", "5",
        ]  # fmt: skip
        if state:
            argv += ["--state-dir", str(workdir / "state")]
        with log.open("wb") as err:
            agent = subprocess.Popen(argv, stderr=err, stdout=subprocess.DEVNULL, cwd=REPO)
        try:
            deadline = time.monotonic() + 120
            while '"agent started"' not in log.read_text():
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"agent did not start:\n{log.read_text()}")
                time.sleep(0.1)
            cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
            traffic = churn(node, binary=binary, rate=rate, seconds=seconds)
            time.sleep(6.0)  # one more drain: the last connections' FIN/ACKs
            cpu = (cpu_seconds(agent.pid) - cpu0) / (time.monotonic() - t0)
            counted = flows_to_port(scrape(node.netns))
            rss, peak = rss_mib(agent.pid, "VmRSS"), rss_mib(agent.pid, "VmHWM")
            anon, shared = rss_mib(agent.pid, "RssAnon"), rss_mib(agent.pid, "RssFile")
        finally:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=120)
        if agent.returncode != 0:
            raise RuntimeError(f"agent failed:\n{log.read_text()}")
    return {
        "state_dir": state,
        "rate": rate,
        "seconds": seconds,
        "connections": len(traffic["ok"]),
        "failed": traffic["failed"],
        "achieved_rate": traffic["achieved_rate"],
        "flows_counted": int(counted),
        "exact": int(counted) == len(traffic["ok"]),
        "agent_cpu_fraction_of_a_core": round(cpu, 4),
        "agent_rss_mib_after_traffic": round(rss, 1),
        "agent_peak_rss_mib": round(peak, 1),
        "agent_rss_anon_mib": round(anon, 1),
        "agent_rss_file_mib": round(shared, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nw-agent-ebpf-") as tmp:
        workdir = Path(tmp)
        binary = build_churn(workdir)
        runs = []
        for state in (False, True):
            run_dir = workdir / ("state" if state else "memory")
            run_dir.mkdir()
            result = run_once(binary, run_dir, state=state, rate=args.rate, seconds=args.seconds)
            runs.append(result)
            print(
                f"state-dir={'yes' if state else 'no ':3}  connections {result['connections']:>6}"
                f"  counted {result['flows_counted']:>6}  exact {result['exact']!s:5}"
                f"  cpu {100 * result['agent_cpu_fraction_of_a_core']:5.1f}% of a core"
                f"  RSS {result['agent_rss_mib_after_traffic']:6.1f} MiB"
                f" = anon {result['agent_rss_anon_mib']:.1f}"
                f" + file {result['agent_rss_file_mib']:.1f}"
                f" (peak {result['agent_peak_rss_mib']:.1f}, with the compile)",
                flush=True,
            )
    doc = {"machine": machine(), "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if all(r["exact"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
