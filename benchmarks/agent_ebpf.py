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

`--active N` measures the other figure of issue 6 instead: the agent's CPU and RSS while
N connections are open AND active (target: RSS at most 200 MiB at 100,000). One run, no
state directory, `--map-size 262144` (each connection between two pods of the node takes
one entry per veth per 250 ms window). `tcp_churn hold` opens N connections from the 32
client addresses (each confirmed by an echoed first message, so the server has accepted
it; N/15,000 clients and as many SO_REUSEPORT servers, as a process may be held to a
20,000-descriptor RLIMIT_NOFILE it cannot raise), then for `--seconds` sends 16 bytes
on every connection every `--interval` seconds (default 2.5: at least one message per
connection in every 5 s drain) and reads the echoes, then closes them all. Every 5 s
the agent is sampled: VmRSS, RssAnon, RssFile, CPU over the last 5 s,
`netwatch_flows_total` for the server port and `netwatch_capture_lost_total`. After the
close and two more drains, `netwatch_flows_total` for the port must equal the
established connections (each counted once) and lost must be 0; exit 1 otherwise or if
RSS went above 200 MiB.

    .venv/bin/python benchmarks/agent_ebpf.py --active 100000 --seconds 60

Writes benchmarks/results/agent_ebpf_active.json.
"""

from __future__ import annotations

import argparse
import json
import selectors
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
ACTIVE_RESULTS = RESULTS.with_name("agent_ebpf_active.json")
LISTEN = "127.0.0.1:9899"
ACTIVE_MAP_SIZE = 262144
RSS_TARGET_MIB = 200.0
SAMPLE_EVERY = 5.0
PER_PROCESS = 15000  # connections per tcp_churn process: below a 20,000 RLIMIT_NOFILE


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


def capture_lost(text: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "netwatch_capture_lost_total"
    )


def rss_mib(pid: int, field: str) -> float:
    """`VmRSS` (now), `VmHWM` (peak, with bcc's LLVM compile at start), `RssAnon` (the
    process's own memory) or `RssFile` (mapped files: mostly libLLVM's shared text)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_agent(
    node: MiniNode, workdir: Path, *, log: Path, extra: list[str]
) -> subprocess.Popen[bytes]:
    """`netwatch agent --backend ebpf --netns NODE`, once it logged "agent started"."""
    snapshot = workdir / "cluster.json"
    snapshot.write_text(cluster_yaml(node))
    argv = [
        sys.executable, "-m", "netwatch.cli.main", "agent", "--backend", "ebpf",
        "--netns", node.netns, "--node-name", "bench-node", "--cluster", str(snapshot),
        "--listen", LISTEN, "--drain-interval", "5", *extra,
    ]  # fmt: skip
    with log.open("wb") as err:
        agent = subprocess.Popen(argv, stderr=err, stdout=subprocess.DEVNULL, cwd=REPO)
    deadline = time.monotonic() + 120
    while '"agent started"' not in log.read_text():
        if agent.poll() is not None or time.monotonic() > deadline:
            stop_agent(agent)
            raise RuntimeError(f"agent did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return agent


def stop_agent(agent: subprocess.Popen[bytes]) -> None:
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(timeout=120)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()


def run_once(
    binary: Path, workdir: Path, *, state: bool, rate: float, seconds: float
) -> dict[str, Any]:
    with mini_node(pods=2, addresses=32) as node:
        log = workdir / f"agent-{'state' if state else 'memory'}.log"
        extra = ["--state-dir", str(workdir / "state")] if state else []
        agent = start_agent(node, workdir, log=log, extra=extra)
        try:
            cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
            traffic = churn(node, binary=binary, rate=rate, seconds=seconds)
            time.sleep(6.0)  # one more drain: the last connections' FIN/ACKs
            cpu = (cpu_seconds(agent.pid) - cpu0) / (time.monotonic() - t0)
            counted = flows_to_port(scrape(node.netns))
            rss, peak = rss_mib(agent.pid, "VmRSS"), rss_mib(agent.pid, "VmHWM")
            anon, shared = rss_mib(agent.pid, "RssAnon"), rss_mib(agent.pid, "RssFile")
        finally:
            stop_agent(agent)
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


def agent_sample(agent: subprocess.Popen[bytes], netns: str) -> dict[str, float]:
    text = scrape(netns)
    return {
        "rss_mib": round(rss_mib(agent.pid, "VmRSS"), 1),
        "rss_anon_mib": round(rss_mib(agent.pid, "RssAnon"), 1),
        "rss_file_mib": round(rss_mib(agent.pid, "RssFile"), 1),
        "flows_counted": int(flows_to_port(text)),
        "lost": int(capture_lost(text)),
    }


def wait_connected(client: subprocess.Popen[str], timeout: float) -> int:
    """The N of the hold client's "connected N" line."""
    assert client.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(client.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(timeout=1.0):
                line = client.stdout.readline()
                if line.startswith("connected "):
                    return int(line.split()[1])
                if not line:
                    break
    raise RuntimeError(f"hold client did not report 'connected' (exit {client.poll()})")


def run_active(
    binary: Path, workdir: Path, *, active: int, seconds: float, interval: float
) -> dict[str, Any]:
    with mini_node(pods=2, addresses=32) as node:
        client_pod, server_pod = node.pods
        log = workdir / "agent-active.log"
        agent = start_agent(node, workdir, log=log, extra=["--map-size", str(ACTIVE_MAP_SIZE)])
        procs: list[subprocess.Popen[str]] = []
        try:
            baseline = agent_sample(agent, node.netns)
            # one process holds at most PER_PROCESS connections (RLIMIT_NOFILE, see
            # tcp_churn.c raise_nofile): several SO_REUSEPORT servers and several clients
            parts = -(-active // PER_PROCESS)
            for _ in range(parts):
                srv = subprocess.Popen(
                    netns_cmd(server_pod.netns,
                              [str(binary), "serve", server_pod.ips[0], str(PORT)]),
                    stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                procs.append(srv)
                assert srv.stdout is not None
                assert srv.stdout.readline().strip() == "ready"
            servers = list(procs)
            shares = [active // parts + (i < active % parts) for i in range(parts)]
            clients = []
            t_open = time.monotonic()
            for i, share in enumerate(shares):
                cli = subprocess.Popen(
                    netns_cmd(client_pod.netns, [
                        str(binary), "hold", server_pod.ips[0], str(PORT), str(share),
                        str(seconds), str(interval), str(workdir / f"hold-{i}.txt"),
                        *client_pod.ips,
                    ]),
                    stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                procs.append(cli)
                clients.append(cli)
            established = sum(wait_connected(c, timeout=600) for c in clients)
            connect_s = time.monotonic() - t_open
            print(f"connected {established} in {connect_s:.1f} s ({parts} clients)", flush=True)
            samples = []
            t_prev, cpu_prev = time.monotonic(), cpu_seconds(agent.pid)
            t_first, cpu_first = t_prev, cpu_prev
            # sample while all connections are held: stop a little before the clients close
            while time.monotonic() + SAMPLE_EVERY < t_first + seconds:
                time.sleep(SAMPLE_EVERY)
                t, cpu = time.monotonic(), cpu_seconds(agent.pid)
                sample = agent_sample(agent, node.netns)
                sample["t_s"] = round(t - t_first, 1)
                sample["cpu_fraction_of_a_core"] = round((cpu - cpu_prev) / (t - t_prev), 4)
                samples.append(sample)
                t_prev, cpu_prev = t, cpu
                print(json.dumps(sample), flush=True)
            active_cpu = (cpu_prev - cpu_first) / (t_prev - t_first) if samples else float("nan")
            client_cpu = sum(cpu_seconds(c.pid) for c in clients)
            server_cpu = sum(cpu_seconds(c.pid) for c in servers)
            traffic: dict[str, float] = {}
            for i, cli in enumerate(clients):
                out, _ = cli.communicate(timeout=seconds + 120)
                if cli.returncode != 0:
                    raise RuntimeError(f"hold client failed ({cli.returncode}): {out}")
                fields = (workdir / f"hold-{i}.txt").read_text().split()
                for key, value in zip(fields[::2], fields[1::2], strict=True):
                    if key == "max_lag_s":
                        traffic[key] = max(traffic.get(key, 0.0), float(value))
                    else:
                        traffic[key] = traffic.get(key, 0.0) + float(value)
            time.sleep(2 * SAMPLE_EVERY + 1)  # two more drains: the FIN exchanges
            final = agent_sample(agent, node.netns)
            peak = rss_mib(agent.pid, "VmHWM")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                proc.wait(timeout=30)
                if proc.stdout is not None:
                    proc.stdout.close()
            stop_agent(agent)
        if agent.returncode != 0:
            raise RuntimeError(f"agent failed:\n{log.read_text()}")
    rss = [s["rss_mib"] for s in samples] + [final["rss_mib"]]
    result = {
        "active": active,
        "seconds": seconds,
        "interval_s": interval,
        "map_size": ACTIVE_MAP_SIZE,
        "client_and_server_processes": parts,
        "connect_seconds": round(connect_s, 1),
        "established": int(traffic["established"]),
        "failed": int(traffic["failed"]),
        "dropped": int(traffic["dropped"]),
        "messages": int(traffic["messages"]),
        "bytes_sent": int(traffic["bytes_sent"]),
        "bytes_echoed": int(traffic["bytes_echoed"]),
        "client_max_lag_s": traffic["max_lag_s"],
        "client_cpu_s": round(client_cpu, 1),
        "server_cpu_s": round(server_cpu, 1),
        "flows_counted": final["flows_counted"],
        "lost": final["lost"],
        "agent_cpu_fraction_of_a_core_while_active": round(active_cpu, 4),
        "agent_rss_mib_max": max(rss),
        "agent_rss_mib_last": final["rss_mib"],
        "agent_rss_anon_mib_last": final["rss_anon_mib"],
        "agent_rss_file_mib_last": final["rss_file_mib"],
        "agent_rss_anon_mib_max": max(
            [s["rss_anon_mib"] for s in samples] + [final["rss_anon_mib"]]
        ),
        "agent_peak_rss_mib_with_compile": round(peak, 1),
        "agent_baseline": baseline,
        "samples": samples,
    }
    result["exact"] = (
        result["established"] == active
        and result["flows_counted"] == result["established"]
        and result["lost"] == 0
    )
    result["rss_within_target"] = result["agent_rss_mib_max"] <= RSS_TARGET_MIB
    return result


def main_active(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="nw-agent-ebpf-active-") as tmp:
        workdir = Path(tmp)
        binary = build_churn(workdir)
        result = run_active(
            binary, workdir, active=args.active, seconds=args.seconds, interval=args.interval
        )
    doc = {"machine": machine(), "run": result}
    ACTIVE_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    ACTIVE_RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    r = result
    print(
        f"active {r['established']}/{r['active']} (failed {r['failed']}, dropped {r['dropped']})"
        f"  counted {r['flows_counted']}  lost {r['lost']}  exact {r['exact']}"
        f"  cpu {100 * r['agent_cpu_fraction_of_a_core_while_active']:.1f}% of a core"
        f"  RSS max {r['agent_rss_mib_max']:.1f} last {r['agent_rss_mib_last']:.1f} MiB"
        f" = anon {r['agent_rss_anon_mib_last']:.1f} + file {r['agent_rss_file_mib_last']:.1f}"
        f" (target {RSS_TARGET_MIB:.0f}: {'met' if r['rss_within_target'] else 'MISSED'})",
        flush=True,
    )
    return 0 if result["exact"] and result["rss_within_target"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument(
        "--active", type=int, default=0, metavar="N",
        help="instead of churn: N long-lived connections, all active (issue 6 RSS target)",
    )  # fmt: skip
    parser.add_argument(
        "--interval", type=float, default=2.5, help="--active: seconds between messages"
    )
    args = parser.parse_args()
    if args.active:
        return main_active(args)
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
