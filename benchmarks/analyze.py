"""`netwatch analyze` on 1,000,000 connection records against the synthetic cluster.

**Target** (issue 5): 1,000,000 records against the 1,000-pod / 200-policy synthetic
cluster (`synthetic_cluster.py`, seed 1) in at most **30 s** wall time and **1 GiB**
peak RSS, end to end: `netwatch analyze --cluster C --flows F -o json > out` as a
separate process (interpreter start-up, imports, loading the snapshot, reading and
attributing every record, lint, writing JSON), spawned through `children.Spawner` so
the peak RSS is the child's own.

**The flows** are generated here from the cluster's objects (like the cluster
generator, this never imports netwatch) and written as a JSON Lines flow log with the
keys in capture's order. Each client workload depends on one to four Services (mostly
in its own namespace); records are drawn from a fixed mix that looks like a cluster's
day:

    55%  pod -> Service ClusterIP:port (pre-DNAT; analysis picks the backend)
    15%  pod -> kube-dns ClusterIP, UDP/53
    10%  pod -> a backend pod of one of its Services, at the target port
     8%  pod -> one of 500 external addresses, TCP/443
     5%  external address -> a pod's first container port
     4%  node -> pod (kubelet probes)
     1%  pod -> a random pod on a random declared port (a scan: mostly denied)
     1%  ICMP echo pod -> pod
     1%  an unowned address in a node's pod CIDR -> pod (verdict unknown)

Timestamps spread over one hour after every pod's creationTimestamp; client ports are
ephemeral. The output is checked: valid JSON of the DESIGN §6 shape whose verdict counts
add up to the number of records.

    .venv/bin/python benchmarks/analyze.py                 # generate (once) and measure
    .venv/bin/python benchmarks/analyze.py --records 200000 --repeat 3
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from children import REPO, ChildRun, Spawner
from synthetic_cluster import generate, write
from synthetic_inventory import ClusterSpec

RESULTS = REPO / "benchmarks" / "results"
TARGET_SECONDS = 30.0
TARGET_MIB = 1024.0
BASE_TIME = datetime(2025, 11, 27, 10, 0, tzinfo=UTC).timestamp()
MIX: tuple[tuple[str, float], ...] = (
    ("service", 0.55),
    ("dns", 0.15),
    ("direct", 0.10),
    ("egress-world", 0.08),
    ("ingress-world", 0.05),
    ("node", 0.04),
    ("random", 0.01),
    ("icmp", 0.01),
    ("unknown", 0.01),
)


@dataclass
class PodInfo:
    namespace: str
    name: str
    ip: str
    node_ip: str
    labels: dict[str, str]
    ports: list[tuple[str | None, int, str]]
    """(name, number, protocol) of its container ports."""


@dataclass
class ServiceInfo:
    namespace: str
    name: str
    ip: str
    ports: list[tuple[int, int | str, str]]
    """(port, targetPort, protocol)."""
    backends: list[PodInfo] = field(default_factory=list)


@dataclass
class World:
    pods: list[PodInfo]
    services: list[ServiceInfo]
    node_ips: list[str]
    pod_cidrs: list[str]


def read_world(objects: list[dict[str, Any]]) -> World:
    """Pods with an IP (not hostNetwork, Running), Services with a ClusterIP, nodes."""
    node_ip: dict[str, str] = {}
    pod_cidrs: list[str] = []
    for o in objects:
        if o["kind"] == "Node":
            addrs = [a["address"] for a in o["status"]["addresses"] if a["type"] == "InternalIP"]
            node_ip[o["metadata"]["name"]] = addrs[0]
            pod_cidrs.append(o["spec"]["podCIDR"])
    pods = []
    for o in objects:
        if o["kind"] != "Pod":
            continue
        spec, status, meta = o["spec"], o.get("status", {}), o["metadata"]
        if spec.get("hostNetwork") or status.get("phase") != "Running" or not status.get("podIP"):
            continue
        ports = [
            (p.get("name"), p["containerPort"], p.get("protocol", "TCP"))
            for c in spec["containers"]
            for p in c.get("ports", [])
        ]
        pods.append(
            PodInfo(
                meta["namespace"],
                meta["name"],
                status["podIP"],
                node_ip.get(spec.get("nodeName", ""), "10.0.0.1"),
                meta.get("labels", {}),
                ports,
            )
        )
    services = []
    for o in objects:
        if o["kind"] != "Service" or o["spec"].get("clusterIP") in (None, "None"):
            continue
        spec, meta = o["spec"], o["metadata"]
        svc = ServiceInfo(
            meta["namespace"],
            meta["name"],
            spec["clusterIP"],
            [
                (p["port"], p.get("targetPort", p["port"]), p.get("protocol", "TCP"))
                for p in spec.get("ports", [])
            ],
        )
        selector = spec.get("selector") or {}
        svc.backends = [
            p
            for p in pods
            if selector
            and p.namespace == svc.namespace
            and all(p.labels.get(k) == v for k, v in selector.items())
        ]
        if svc.backends and svc.ports:
            services.append(svc)
    return World(pods, services, sorted(set(node_ip.values())), pod_cidrs)


def _target_port(svc_port: tuple[int, int | str, str], pod: PodInfo) -> int:
    _, target, proto = svc_port
    if isinstance(target, int):
        return target
    for name, number, p in pod.ports:
        if name == target and p == proto:
            return number
    return 8080


class FlowWriter:
    """Draws records from the mix and writes them as JSON Lines."""

    def __init__(self, world: World, *, seed: int) -> None:
        self.rng = random.Random(seed)
        self.world = world
        rng = self.rng
        self.apps: dict[tuple[str, str], list[PodInfo]] = {}
        for p in world.pods:
            key = (p.namespace, p.labels.get("app") or p.labels.get("k8s-app") or p.name)
            self.apps.setdefault(key, []).append(p)
        self.app_keys = sorted(self.apps)
        by_ns: dict[str, list[ServiceInfo]] = {}
        for s in world.services:
            by_ns.setdefault(s.namespace, []).append(s)
        self.deps: dict[tuple[str, str], list[ServiceInfo]] = {}
        for key in self.app_keys:
            own = by_ns.get(key[0], [])
            picks = []
            for _ in range(rng.randint(1, 4)):
                pool = own if own and rng.random() < 0.7 else world.services
                picks.append(rng.choice(pool))
            self.deps[key] = picks
        # The cluster DNS: its Service when the dump has one, else the CoreDNS pods.
        self.dns_service = next(
            (s for s in world.services if s.namespace == "kube-system" and "dns" in s.name), None
        )
        self.dns_pods = [p for p in world.pods if p.labels.get("k8s-app") == "kube-dns"]
        self.externals = [f"203.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}" for _ in range(500)]
        self.unowned = self._unowned_ips(50)
        kinds, weights = zip(*MIX, strict=True)
        self.kinds, self.cum = kinds, list(_cumulative(weights))

    def _unowned_ips(self, n: int) -> list[str]:
        """Addresses near the top of each node's pod CIDR that no pod holds."""
        used = {p.ip for p in self.world.pods}
        out: list[str] = []
        for cidr in self.world.pod_cidrs:
            net = ipaddress.ip_network(cidr)
            for offset in range(2, 2 + n):
                ip = str(net.broadcast_address - offset)
                if ip not in used:
                    out.append(ip)
        self.rng.shuffle(out)
        return out[:n] or ["10.244.255.254"]

    def record(self) -> str:
        rng = self.rng
        kind = self.kinds[_pick(self.cum, rng.random())]
        app = self.apps[rng.choice(self.app_keys)]
        client = rng.choice(app)
        cip, sport, proto = client.ip, 0, "TCP"
        sip = ""
        if kind == "service":
            svc = rng.choice(self.deps[(client.namespace, _app_name(client))])
            port = rng.choice(svc.ports)
            sip, sport, proto = svc.ip, port[0], port[2]
        elif kind == "dns":
            target = self.dns_service.ip if self.dns_service else rng.choice(self.dns_pods).ip
            sip, sport, proto = target, 53, "UDP"
        elif kind == "direct":
            svc = rng.choice(self.deps[(client.namespace, _app_name(client))])
            port = rng.choice(svc.ports)
            backend = rng.choice(svc.backends)
            sip, sport, proto = backend.ip, _target_port(port, backend), port[2]
        elif kind == "egress-world":
            sip, sport = rng.choice(self.externals), 443
        elif kind == "ingress-world":
            cip = rng.choice(self.externals)
            sip, sport = client.ip, client.ports[0][1] if client.ports else 8080
        elif kind == "node":
            cip = client.node_ip
            sip, sport = client.ip, client.ports[0][1] if client.ports else 8080
        elif kind == "random":
            server = rng.choice(self.world.pods)
            _, sport, proto = rng.choice(server.ports) if server.ports else (None, 8080, "TCP")
            sip = server.ip
        elif kind == "icmp":
            sip, sport, proto = rng.choice(self.world.pods).ip, 8, "ICMP"
        else:  # unknown
            cip = rng.choice(self.unowned)
            sip, sport = client.ip, client.ports[0][1] if client.ports else 8080
        first = BASE_TIME + rng.random() * 3600.0
        last = first + rng.expovariate(2.0)
        cport = rng.randint(32768, 60999) if proto != "ICMP" else rng.randint(1, 65535)
        pout, pin = rng.randint(1, 40), rng.randint(1, 60)
        bout, bin_ = pout * rng.randint(60, 900), pin * rng.randint(60, 1400)
        orientation = "socket" if proto == "UDP" else "syn"
        return (
            f'{{"client_ip": "{cip}", "client_port": {cport}, "server_ip": "{sip}", '
            f'"server_port": {sport}, "protocol": "{proto}", "first_seen": {first:.6f}, '
            f'"last_seen": {last:.6f}, "packets_out": {pout}, "bytes_out": {bout}, '
            f'"packets_in": {pin}, "bytes_in": {bin_}, "orientation": "{orientation}", '
            f'"node": "bench", "interface": "veth0"}}\n'
        )

    def write(self, path: Path, count: int) -> None:
        with path.open("w", buffering=1 << 20) as out:
            for _ in range(count):
                out.write(self.record())


def _app_name(p: PodInfo) -> str:
    return p.labels.get("app") or p.labels.get("k8s-app") or p.name


def _cumulative(weights: tuple[float, ...]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    out[-1] = 1.0
    return out


def _pick(cum: list[float], x: float) -> int:
    for i, c in enumerate(cum):
        if x < c:
            return i
    return len(cum) - 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_output(path: Path, *, records: int) -> tuple[dict[str, Any], list[str]]:
    """The output's figures, and what is wrong with it."""
    errors: list[str] = []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {}, [f"output is not JSON: {exc}"]
    if list(data) != ["summary", "connections", "findings"]:
        errors.append(f"top-level keys {list(data)}")
    verdicts = data.get("summary", {}).get("verdicts", {})
    if sorted(verdicts) != ["allowed", "denied", "unknown", "unrestricted"]:
        errors.append(f"verdict keys {sorted(verdicts)}")
    if sum(verdicts.values()) != records:
        errors.append(f"verdicts add up to {sum(verdicts.values())}, not {records}")
    counted = sum(c["count"] for c in data.get("connections", []))
    if counted != records:
        errors.append(f"connection groups hold {counted} records, not {records}")
    kinds: dict[str, int] = {}
    for f in data.get("findings", []):
        kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    figures = {
        "verdicts": verdicts,
        "groups": len(data.get("connections", [])),
        "findings": dict(sorted(kinds.items())),
    }
    return figures, errors


def _git_revision() -> str:
    try:
        git = ["git", "-C", str(REPO)]
        rev = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain"], check=False, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{rev}{'+dirty' if dirty else ''}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="runs; the table shows the median")
    ap.add_argument("--netwatch", type=Path, default=REPO / ".venv" / "bin" / "netwatch")
    ap.add_argument("--workdir", type=Path, default=RESULTS)
    ap.add_argument("--regenerate", action="store_true", help="rewrite the flow log")
    ap.add_argument("--no-check", action="store_true", help="exit 0 even if the target is missed")
    args = ap.parse_args(argv)
    if args.records < 1 or args.repeat < 1:
        print("error: --records and --repeat must be positive", file=sys.stderr)
        return 2
    spawner = Spawner()  # before the cluster is in memory (see children.py)
    args.workdir.mkdir(parents=True, exist_ok=True)
    spec = ClusterSpec(
        pods=args.pods, namespaces=40, policies=args.policies, nodes=10, seed=args.seed
    )
    t0 = time.perf_counter()
    cluster = generate(spec)
    cluster_path = args.workdir / f"cluster-{spec.pods}pods-{spec.policies}pol-seed{spec.seed}.yaml"
    meta = write(cluster, cluster_path)
    flows_path = args.workdir / f"flows-{args.records}-{spec.pods}pods-seed{spec.seed}.jsonl"
    if args.regenerate or not flows_path.exists():
        world = read_world(cluster.objects)
        FlowWriter(world, seed=args.seed).write(flows_path, args.records)
    size_mib = flows_path.stat().st_size / 2**20
    print(
        f"# {spec.pods} pods, {spec.policies} policies ({cluster_path.name}); "
        f"{args.records:,} records in {flows_path.name}, {size_mib:.0f} MiB "
        f"(prepared in {time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    out = args.workdir / "analyze-output.json"
    err = args.workdir / "analyze-output.stderr"
    cmd = [str(args.netwatch), "analyze", "--cluster", str(cluster_path)]
    cmd += ["--flows", str(flows_path), "-o", "json"]
    runs: list[ChildRun] = []
    figures: dict[str, Any] = {}
    errors: list[str] = []
    for i in range(args.repeat):
        run = spawner.run(cmd, stdout=out, stderr=err, timeout=600)
        runs.append(run)
        figures, errors = check_output(out, records=args.records)
        if run.returncode != 0:
            errors.append(f"exit status {run.returncode}: {err.read_text()[-500:]}")
        print(
            f"  run {i + 1}: {run.seconds:6.2f} s wall, {run.cpu_seconds:6.2f} s CPU, "
            f"{run.peak_mib:7.1f} MiB peak{'  ! ' + '; '.join(errors) if errors else ''}",
            flush=True,
        )
    seconds = statistics.median(r.seconds for r in runs)
    cpu = statistics.median(r.cpu_seconds for r in runs)
    peak = max(r.peak_mib for r in runs)
    ok = not errors and seconds <= TARGET_SECONDS and peak <= TARGET_MIB
    rows = [
        ("records", f"{args.records:,}"),
        ("wall seconds (median)", f"{seconds:.2f}  (target <= {TARGET_SECONDS:.0f})"),
        ("CPU seconds (median)", f"{cpu:.2f}"),
        ("records / wall second", f"{args.records / seconds:,.0f}"),
        ("peak RSS MiB (max)", f"{peak:.1f}  (target <= {TARGET_MIB:.0f})"),
        ("connection groups", f"{figures.get('groups', 0):,}"),
        ("verdicts", json.dumps(figures.get("verdicts", {}))),
        ("target met", "yes" if ok else "NO"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": {
            "commit": _git_revision(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "target": {"seconds": TARGET_SECONDS, "peak_mib": TARGET_MIB},
        "cluster": {"file": cluster_path.name, "sha256": meta["sha256"], "kinds": meta["kinds"]},
        "flows": {
            "file": flows_path.name,
            "records": args.records,
            "bytes": flows_path.stat().st_size,
            "mix": dict(MIX),
        },
        "command": " ".join(cmd[1:]),
        "runs": [
            {
                "seconds": round(r.seconds, 3),
                "cpu_seconds": round(r.cpu_seconds, 3),
                "peak_mib": round(r.peak_mib, 1),
                "exit": r.returncode,
            }
            for r in runs
        ],
        "seconds_median": round(seconds, 3),
        "cpu_seconds_median": round(cpu, 3),
        "peak_mib_max": round(peak, 1),
        "output": {**figures, "sha256": _sha256(out) if out.exists() else None},
        "errors": errors,
        "ok": ok,
    }
    (args.workdir / "analyze.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresults: {(args.workdir / 'analyze.json').relative_to(REPO)}")
    return 0 if ok or (args.no_check and not errors) else 1


if __name__ == "__main__":
    raise SystemExit(main())
