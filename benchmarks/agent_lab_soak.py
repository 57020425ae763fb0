"""The eBPF agent's CPU and RSS under a pod-churn soak in the netns lab (issue 6: no growth).

`agent.py --soak` replays simulated churn into an in-process agent; this runs the real
thing. It brings up a lab (`--scenario`, default `fixtures/lab/two-node.yaml`), starts
one `netwatch agent --backend ebpf --netns <node> --cluster <lab snapshot>` per node (as
`tests/privileged/test_agent_e2e.py` does) and then, for `--duration` seconds, churns
pods on `--node` with `netwatch.lab.churn.PodChurn`: every `--every` seconds a new pod
(a namespace and a routed veth like the lab's own, the lowest free podCIDR address — so
addresses are reused — a fresh name and UID of one of three workloads), deleted
`--lifetime` seconds later; the snapshot the agents read is rewritten atomically on
every change. `--traffic-delay` seconds after it appears (so the agents have loaded it)
each pod starts lab clients against the lab's servers: short TCP connections at
`--rate` per second (through a ClusterIP, to a pod or to the internet host, in turn),
two UDP flows and a DNS query; the agents' link watchers attach the programs to each
new veth and forget it when it vanishes.

Every `--sample` seconds each agent's VmRSS, CPU seconds (utime+stime), open fds and
threads (from /proc) and its `/metrics` (scraped from inside the node namespace) and
`/readyz` are recorded. Verdict per agent, after `--warm-up` seconds: the least-squares
RSS slope; **growth** if the mean RSS of the last third of the run exceeds the middle
third's by more than max(3 MiB, 3%), or the netwatch_* series count, open fds or threads
of the last third exceed the middle third's maximum by more than max(5, 5%) (BPF map
entries, which follow the traffic of the moment: max(10, 25%)).
After the churn stops: every agent still ready, `/metrics` renders, no `"level":
"error"` line in its JSON log, flows of the churn namespace counted, every churn veth
attached and seen vanish (churn node), clean exit on SIGTERM.

    sudo .venv/bin/python benchmarks/agent_lab_soak.py [--duration 600] [--every 2]

Prints a table and writes benchmarks/results/agent_lab_soak.json (agent logs next to
it); exit status 1 on growth or a failed check. Everything (lab, pods, agents, clients)
is removed on exit, also on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from capture_env import cpu_seconds, machine

from netwatch import lab
from netwatch.core.model import Protocol
from netwatch.lab.churn import PodChurn
from netwatch.lab.lab import LabHandle
from netwatch.lab.plan import DNS_PORT, LabPlan, LabPod
from netwatch.lab.traffic import TrafficRun

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
AGENT_PORT = 9810
RSS_TOLERANCE = (3.0, 0.03)
"""MiB, fraction: last-third mean RSS may exceed the middle third's by the larger."""
BOUNDED = {
    "series": (5, 0.05),
    "flow_series": (5, 0.05),
    "fds": (5, 0.05),
    "threads": (2, 0.0),
    "map_entries": (10, 0.25),
}
"""Gauges that must stay bounded: the last third's maximum may exceed the middle third's
by the larger of (count, fraction). BPF map entries follow the traffic of the moment
(new connections since the last drain), so they get a wider band."""
SCRAPE = """
import sys, urllib.request, urllib.error
base = sys.argv[1]
try:
    ready = urllib.request.urlopen(base + "/readyz", timeout=10).status
except urllib.error.HTTPError as exc:
    ready = exc.code
with urllib.request.urlopen(base + "/metrics", timeout=30) as resp:
    body = resp.read().decode()
sys.stdout.write(f"{ready}\\n{body}")
"""


# ----------------------------------------------------------------------- agents


class Agent:
    """`netwatch agent --backend ebpf` for one lab node, its log in `workdir`."""

    def __init__(self, handle: LabHandle, node: str, *, workdir: Path, drain: float) -> None:
        self.handle, self.node = handle, handle.nodes[node]
        self.log_path = workdir / f"agent_lab_soak-{node}.log"
        self.url = f"http://{self.node.ip}:{AGENT_PORT}"
        argv = [
            sys.executable,
            "-m",
            "netwatch.cli.main",
            "agent",
            "--backend",
            "ebpf",
            "--netns",
            self.node.netns,
            "--node-name",
            node,
            "--cluster",
            str(handle.snapshot_path),
            "--listen",
            f"{self.node.ip}:{AGENT_PORT}",
            "--drain-interval",
            str(drain),
        ]
        with self.log_path.open("wb") as err:
            self.proc = subprocess.Popen(argv, stderr=err, stdout=subprocess.DEVNULL, cwd=REPO)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.node.name} exited:\n{self.log()[-3000:]}")
            if '"agent started"' in self.log() and self.scrape().get("ready") == 200:
                return
            time.sleep(0.5)
        raise RuntimeError(f"agent {self.node.name} not ready after {timeout:.0f}s")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def scrape(self) -> dict[str, Any]:
        """/readyz status and a digest of /metrics; {} when the scrape failed."""
        cmd = self.handle.command(self.node, [sys.executable, "-c", SCRAPE, self.url])
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if out.returncode != 0:
            return {}
        status, _, body = out.stdout.partition("\n")
        return {"ready": int(status), **metrics_digest(body)}

    def sample(self) -> dict[str, Any]:
        pid = self.proc.pid
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return {
            "rss_mib": round(int(fields["VmRSS"].split()[0]) / 1024, 2),
            "cpu_s": round(cpu_seconds(pid), 2),
            "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            **self.scrape(),
        }

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def metrics_digest(body: str) -> dict[str, Any]:
    series = flow_series = 0
    flows = churn_flows = map_entries = lost = pods = 0.0
    for line in body.splitlines():
        if not line.startswith("netwatch_"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        value = float(line.rsplit(" ", 1)[1])
        series += 1
        if name == "netwatch_flows_total":
            flow_series += 1
            flows += value
            churn_flows += value if 'namespace="churn"' in line else 0
        elif name == "netwatch_bpf_map_entries":
            map_entries += value
        elif name == "netwatch_capture_lost_total":
            lost += value
        elif name == "netwatch_inventory_objects" and 'kind="Pod"' in line:
            pods = value
    return {
        "series": series,
        "flow_series": flow_series,
        "flows": int(flows),
        "churn_flows": int(churn_flows),
        "map_entries": int(map_entries),
        "lost": int(lost),
        "pods": int(pods),
        "metrics_bytes": len(body),
        "renders": "netwatch_build_info" in body,
    }


# ------------------------------------------------------------------------ churn


def traffic_targets(plan: LabPlan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """TCP targets and UDP/DNS steps on the lab's servers: ClusterIPs, pods, the internet host."""
    ends = [
        (f"service:{s.key}", sp.spec.port, sp.spec.protocol)
        for s in plan.services
        if s.cluster_ip
        for sp in s.ports
    ]
    ends += [
        (p.key, port.port, port.protocol)
        for p in plan.pods
        if not p.host_network
        for port in p.ports
    ]
    if plan.internet is not None:
        ends += [("internet", port.port, port.protocol) for port in plan.internet.ports]
    ends = [e for e in ends if e[1] != DNS_PORT]  # DNS: the dns step below
    tcp = [{"to": to, "port": port} for to, port, proto in ends if proto is Protocol.TCP]
    other = [
        {"kind": "udp", "to": to, "port": port} for to, port, proto in ends if proto is Protocol.UDP
    ]
    named = [s for s in plan.services if s.cluster_ip]
    if plan.dns_target() is not None and named:
        other.append(
            {"kind": "dns", "query": f"{named[0].name}.{named[0].namespace}.svc.cluster.local"}
        )
    return tcp, other


@dataclass
class _Life:
    pod: LabPod
    born: float
    index: int
    run: TrafficRun | None = None


@dataclass
class Churner:
    """Schedules pod births, their traffic and their deaths; counts what happened."""

    churn: PodChurn
    args: argparse.Namespace
    tcp: list[dict[str, Any]]
    other: list[dict[str, Any]]
    lives: list[_Life] = field(default_factory=list)
    connections: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def birth(self, now: float) -> None:
        self.lives.append(_Life(self.churn.add(), now, self.churn.created_total - 1))

    def tick(self, now: float, *, stopping: bool = False) -> None:
        """Start due traffic, delete pods whose life is over (all of them when `stopping`)."""
        a = self.args
        for life in list(self.lives):
            if life.run is None and not stopping and now >= life.born + a.traffic_delay:
                life.run = self.churn.traffic(life.pod, self.steps(life.index))
            due = stopping or now >= life.born + a.lifetime
            if due and self.finished(life, force=now >= life.born + a.lifetime + 20):
                self.lives.remove(life)
                self.churn.remove(life.pod)

    def steps(self, i: int) -> list[dict[str, Any]]:
        """Pod i: short TCP connections to one target, and one UDP or DNS step, in turn."""
        a = self.args
        duration = max(1.0, a.lifetime - a.traffic_delay - 4)
        steps: list[dict[str, Any]] = [
            {
                "kind": "churn",
                **self.tcp[i % len(self.tcp)],
                "rate": a.rate,
                "duration": duration,
                "request": 200,
                "response": 2000,
                "background": True,
            },
        ]
        if self.other:
            step = self.other[i % len(self.other)]
            if step["kind"] == "udp":
                step = {**step, "connections": 2, "rounds": 3, "interval": 1.0}
            steps.append({**step, "background": True})
        return steps

    def finished(self, life: _Life, *, force: bool) -> bool:
        """True once the pod's clients are done (with `force`: cancelled); counts them."""
        if life.run is None:
            return True
        try:
            manifest = life.run.wait(timeout=0)
        except TimeoutError:
            if not force:
                return False
            life.run.cancel()
            manifest = life.run.wait(timeout=30)
        for c in manifest.connections:
            self.connections[c.kind] = self.connections.get(c.kind, 0) + 1
        for c in manifest.failures():
            self.failures.append(f"{life.pod.key} {c.kind}: {c.error or 'not confirmed'}")
        life.run = None
        return True

    def stop(self) -> None:
        """Let every pod finish its traffic, then delete it."""
        while self.lives:
            self.tick(time.monotonic(), stopping=True)
            time.sleep(0.2)


# --------------------------------------------------------------------- analysis


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _slope_per_minute(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    mx, my = _mean([t for t, _ in points]), _mean([y for _, y in points])
    sxx = sum((t - mx) ** 2 for t, _ in points)
    return sum((t - mx) * (y - my) for t, y in points) / sxx * 60 if sxx else 0.0


def verdict(samples: list[dict[str, Any]], *, duration: float, warm_up: float) -> dict[str, Any]:
    """RSS slope after warm-up; growth = last third vs middle third beyond tolerance."""
    after = [s for s in samples if s["t"] >= warm_up]
    middle = [s for s in samples if duration / 3 <= s["t"] < 2 * duration / 3]
    last = [s for s in samples if s["t"] >= 2 * duration / 3]
    rss_mid, rss_last = _mean([s["rss_mib"] for s in middle]), _mean([s["rss_mib"] for s in last])
    rss_allowed = max(RSS_TOLERANCE[0], RSS_TOLERANCE[1] * rss_mid)
    cpu = (after[-1]["cpu_s"] - after[0]["cpu_s"]) / (after[-1]["t"] - after[0]["t"]) * 100
    bounded = {}
    for key, (count, fraction) in BOUNDED.items():
        mid_max = max((s.get(key, 0) for s in middle), default=0)
        last_max = max((s.get(key, 0) for s in last), default=0)
        allowed = max(count, fraction * mid_max)
        bounded[key] = {
            "middle_max": mid_max,
            "last_max": last_max,
            "ok": last_max <= mid_max + allowed,
        }
    rss_ok = bool(middle and last) and rss_last - rss_mid <= rss_allowed
    return {
        "rss_slope_mib_per_min": round(
            _slope_per_minute([(s["t"], s["rss_mib"]) for s in after]), 4
        ),
        "rss_mib_first": samples[0]["rss_mib"] if samples else None,
        "rss_mib_min_max_after_warm_up": [
            min(s["rss_mib"] for s in after),
            max(s["rss_mib"] for s in after),
        ],
        "rss_mean_mib_middle_third": round(rss_mid, 2),
        "rss_mean_mib_last_third": round(rss_last, 2),
        "rss_growth_allowed_mib": round(rss_allowed, 2),
        "rss_ok": rss_ok,
        "cpu_percent_of_one_core_after_warm_up": round(cpu, 2),
        "cpu_percent_of_one_core_whole_run": round(
            samples[-1]["cpu_s"] / max(samples[-1]["t"], 1) * 100, 2
        ),
        "bounded": bounded,
        "no_growth": rss_ok and all(b["ok"] for b in bounded.values()),
    }


def final_checks(agents: list[Agent], churner: Churner, churn_node: str) -> dict[str, bool]:
    """After the churn stopped: ready, /metrics renders, no error log, churn seen."""
    checks: dict[str, bool] = {}
    for agent in agents:
        name = agent.node.name
        scrape = agent.scrape()
        log = agent.log()
        checks[f"{name}: ready"] = scrape.get("ready") == 200
        checks[f"{name}: /metrics renders"] = bool(scrape.get("renders"))
        checks[f"{name}: no error in log"] = '"level": "error"' not in log
        checks[f"{name}: nothing lost"] = scrape.get("lost", 1) == 0
        if name == churn_node:
            checks[f"{name}: churn flows counted"] = scrape.get("churn_flows", 0) > 0
            veths = [p.interface or "" for p in churner.churn.history]
            attached = sum(f'"attached to {v} ' in log for v in veths)
            vanished = sum(f'"interface {v} vanished"' in log for v in veths)
            checks[f"{name}: every churn veth attached ({attached}/{len(veths)})"] = (
                attached == len(veths)
            )
            checks[f"{name}: every churn veth vanished ({vanished}/{len(veths)})"] = (
                vanished == len(veths)
            )
    total = sum(churner.connections.values())
    checks[f"churn traffic: {len(churner.failures)} of {total} connections failed"] = (
        total > 0 and len(churner.failures) <= total // 100
    )
    return checks


# ------------------------------------------------------------------------- main


def _row(
    t: float, rows: dict[str, dict[str, Any]], prev: dict[str, dict[str, Any]], live: int
) -> str:
    cells = [f"{t:6.0f}", f"{live:4d}"]
    for name, s in rows.items():
        p = prev.get(name)
        cpu = (s["cpu_s"] - p["cpu_s"]) / (t - p["t"]) * 100 if p and t > p["t"] else 0.0
        cells.append(
            f"| {s['rss_mib']:7.1f} {cpu:5.1f} {s.get('series', -1):6d} "
            f"{s.get('map_entries', -1):5d} {s['fds']:4d} {s.get('pods', -1):4d} "
            f"{s.get('ready', 0):4d}"
        )
    return " ".join(cells)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    agents: list[Agent] = []
    with lab.up(args.scenario) as handle:
        churn = PodChurn(handle, node=args.node)
        tcp, other = traffic_targets(handle.plan)
        churner = Churner(churn, args, tcp, other)
        samples: dict[str, list[dict[str, Any]]] = {n: [] for n in handle.nodes}
        try:
            agents = [
                Agent(handle, n, workdir=args.workdir, drain=args.drain) for n in handle.nodes
            ]
            for agent in agents:
                agent.wait_ready(180)
            header = " ".join(
                f"| {n:<7} {'CPU%':>5} {'series':>6} {'map':>5} {'fds':>4} {'pods':>4} {'rdy':>4}"
                for n in handle.nodes
            )
            print(
                f"# lab {handle.run_id} ({handle.plan.scenario.name}); churn on {args.node}: a pod "
                f"every {args.every:g} s, living {args.lifetime:g} s; "
                f"agents' drain {args.drain:g} s"
            )
            print(
                f"{'t s':>6} {'pods':>4} {header}\n"
                f"{'':>11} (RSS MiB, CPU % of a core since the last sample)",
                flush=True,
            )
            start = time.monotonic()
            next_birth = next_sample = start
            prev: dict[str, dict[str, Any]] = {}
            while True:
                now = time.monotonic()
                t = now - start
                if now >= next_sample:
                    rows = {
                        a.node.name: {
                            "t": round(t, 1),
                            "live_pods": len(churner.lives),
                            **a.sample(),
                        }
                        for a in agents
                    }
                    for name, row in rows.items():
                        samples[name].append(row)
                    print(_row(t, rows, prev, len(churner.lives)), flush=True)
                    prev = rows
                    next_sample += args.sample
                    if t >= args.duration:
                        break
                if now >= next_birth and t < args.duration:
                    churner.birth(now)
                    next_birth += args.every
                churner.tick(now)
                for agent in agents:
                    if agent.proc.poll() is not None:
                        raise RuntimeError(
                            f"agent {agent.node.name} exited:\n{agent.log()[-3000:]}"
                        )
                time.sleep(0.1)
            churner.stop()
            time.sleep(2 * args.drain + 2)  # the last deletions reach every agent
            checks = final_checks(agents, churner, args.node)
        finally:
            with contextlib.suppress(Exception):
                churner.stop()
            with contextlib.suppress(Exception):
                churn.close()
            codes = {a.node.name: a.stop() for a in agents}
        for agent in agents:
            name = agent.node.name
            checks[f"{name}: clean exit (status {codes[name]})"] = codes[name] == 0
            checks[f"{name}: no error in log after shutdown"] = (
                '"level": "error"' not in agent.log()
            )
    verdicts = {
        n: verdict(s, duration=args.duration, warm_up=args.warm_up) for n, s in samples.items()
    }
    return {
        "measured_at": started,
        "config": {
            "scenario": str(args.scenario),
            "churn_node": args.node,
            "duration_s": args.duration,
            "pod_every_s": args.every,
            "pod_lifetime_s": args.lifetime,
            "traffic_delay_s": args.traffic_delay,
            "tcp_connections_per_s_per_pod": args.rate,
            "agent_drain_interval_s": args.drain,
            "sample_every_s": args.sample,
            "warm_up_s": args.warm_up,
            "rss_tolerance": f"last-third mean - middle-third mean <= max({RSS_TOLERANCE[0]} MiB, "
            f"{RSS_TOLERANCE[1]:.0%} of the middle third)",
            "bounded_tolerance": {
                k: f"last-third max <= middle-third max + max({c}, {f:.0%})"
                for k, (c, f) in BOUNDED.items()
            },
            "tcp_targets": tcp,
            "other_steps": other,
        },
        "churn": {
            "pods_created": churn.created_total,
            "pods_deleted": churn.deleted_total,
            "ip_reuses": churn.ips_reused,
            "connections_by_kind": churner.connections,
            "failed_connections": churner.failures[:50],
            "failed_total": len(churner.failures),
        },
        "agents": verdicts,
        "checks": checks,
        "no_growth": all(v["no_growth"] for v in verdicts.values()),
        "ok": all(v["no_growth"] for v in verdicts.values()) and all(checks.values()),
        "environment": {
            **machine(),
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=REPO,
                check=False,
            ).stdout.strip(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--scenario", type=Path, default=REPO / "fixtures" / "lab" / "two-node.yaml")
    ap.add_argument("--node", default="node-1", help="the node whose pods churn")
    ap.add_argument("--duration", type=float, default=600.0, metavar="S")
    ap.add_argument("--every", type=float, default=2.0, metavar="S", help="a new pod every S")
    ap.add_argument("--lifetime", type=float, default=20.0, metavar="S", help="each pod lives S")
    ap.add_argument(
        "--traffic-delay",
        type=float,
        default=6.0,
        metavar="S",
        help="a pod's clients start S after it appears in the snapshot",
    )
    ap.add_argument("--rate", type=float, default=2.0, help="TCP connections per second per pod")
    ap.add_argument(
        "--drain", type=float, default=5.0, metavar="S", help="agents' --drain-interval"
    )
    ap.add_argument("--sample", type=float, default=10.0, metavar="S")
    ap.add_argument("--warm-up", type=float, default=120.0, metavar="S")
    ap.add_argument("--workdir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("agent_lab_soak needs root (network namespaces, eBPF)", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    result = run(args)
    out = args.workdir / "agent_lab_soak.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    for name, v in result["agents"].items():
        print(
            f"{name}: RSS slope {v['rss_slope_mib_per_min']:+.3f} MiB/min "
            f"after {args.warm_up:.0f} s "
            f"warm-up; mean RSS middle third {v['rss_mean_mib_middle_third']} MiB, last third "
            f"{v['rss_mean_mib_last_third']} MiB (allowed +{v['rss_growth_allowed_mib']}); "
            f"CPU {v['cpu_percent_of_one_core_after_warm_up']}% of one core; "
            f"no growth: {'yes' if v['no_growth'] else 'NO'}"
        )
    failed = [name for name, ok in result["checks"].items() if not ok]
    print("checks: " + ("all passed" if not failed else "FAILED: " + "; ".join(failed)))
    print(f"written to {out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
