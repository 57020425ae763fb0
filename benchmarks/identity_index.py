"""Benchmark the identity index (DESIGN §2, issue 4): memory and lookups per second.

Targets: with 50,000 pods the index takes at most 300 MiB, and answers at least
1,000,000 lookups/s on one thread in the common case (an IP with one current owner, a
time inside its lifetime). The mixed case is reported too: reused IPs (a tombstone and a
live pod, queried before the deletion, in the grace period and after), Service
ClusterIPs, node IPs shared with hostNetwork pods, completed Job pods' IPs now held by
running pods, and external IPs matched against named CIDRs.

The cluster is built in memory as core objects (the loader is not what is measured),
fed in time order the way a watch would deliver it: owners, nodes and Services, then
pods as they appear, then 2,000 deletions whose IPs new pods take 30 s later (inside
the 120 s grace period), and 1,000 Job pods seen Running, then Succeeded, then their
IPs reused. Memory is what `tracemalloc` sees the index allocate (the slim objects it
is fed are counted separately: the store holds those in any case) and, as a
cross-check, the RSS growth of the process. Lookup rates include the Python loop over
a pre-built list of (ip, time) pairs — what a flow-enrichment loop pays; a sample of
answers is checked against the generator's.

Lookups are memory-bound (every IP, dict slot and Identity is a likely cache miss with
50,000 pods), so on a shared machine other processes' load moves the figures by 2x.
The rate is counted per CPU-second of this process (single-threaded throughput, not
the scheduler's share) and judged on the best of `--repeat` runs, as `timeit` advises:
slower runs measure interference, not the code. Medians, wall-clock rates and the
load average are reported next to it.

    .venv/bin/python benchmarks/identity_index.py             # prints a table, writes JSON
    .venv/bin/python benchmarks/identity_index.py --pods 5000 --no-check

Exit status: 1 if an answer is wrong or (unless `--no-check`) a target is missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import ipaddress
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from netwatch.core.identity import IdentityIndex  # noqa: E402
from netwatch.core.inventory import EventType, InventoryEvent, ObjectKind  # noqa: E402
from netwatch.core.model import (  # noqa: E402
    Labels,
    NamespaceName,
    Node,
    NodeName,
    OwnerRef,
    Pod,
    PodName,
    PodPhase,
    Service,
    Uid,
    WorkloadKind,
    WorkloadObject,
)
from netwatch.core.store import InventoryStore  # noqa: E402

TARGET_MIB = 300.0
TARGET_LOOKUPS = 1_000_000
T0 = 1_764_000_000.0
GRACE = 120.0
NAMED_CIDRS = {
    **{f"partner-{i}": f"198.51.{i}.0/24" for i in range(16)},
    "corp": "172.16.0.0/12",
    "corp-vpn": "172.20.0.0/16",
    "office": "172.20.5.0/24",
    "docs": "203.0.113.0/24",
}
Query = tuple[str, float]


@dataclass
class Cluster:
    """The generated objects, fed in order by `feed`, plus what lookups should answer."""

    owners: list[WorkloadObject] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    events: list[tuple[float, str, Pod]] = field(default_factory=list)
    """(time, "upsert" | "delete", pod) in time order."""
    single: list[tuple[str, str, float]] = field(default_factory=list)
    """(ip, pod key, first seen) of pods that are their IP's only owner."""
    reused: list[tuple[str, str, str]] = field(default_factory=list)
    """(ip, deleted pod key, new pod key)."""
    job_ips: list[tuple[str, str]] = field(default_factory=list)
    """(ip, running pod key) of IPs a completed Job pod held before."""


def pod(i: int, *, app: int, ip: str, node: str, at: float) -> Pod:
    """Replica `i` of Deployment `app<app>`, with the labels and owner a real one carries."""
    return Pod(
        namespace=NamespaceName(f"team-{app % 50}"),
        name=PodName(f"app{app}-7d9f8-{i}"),
        uid=Uid(f"00000000-0000-4000-8000-{i:012d}"),
        labels=Labels({"app": f"app{app}", "pod-template-hash": "7d9f8", "tier": "backend"}),
        node_name=NodeName(node),
        ips=(ip,),
        owners=(OwnerRef("ReplicaSet", f"app{app}-7d9f8", controller=True),),
        created_at=at,
    )


def generate(*, pods: int, services: int, nodes: int, reuse: int, jobs: int, seed: int) -> Cluster:
    rng = random.Random(seed)
    c = Cluster()
    node_names = [NodeName(f"node-{n:03d}") for n in range(nodes)]
    c.nodes = [Node(name, (f"10.0.{n // 200}.{n % 200 + 1}",)) for n, name in enumerate(node_names)]
    apps = max(1, pods // 10)  # ten replicas per Deployment
    for a in range(apps):
        ns = NamespaceName(f"team-{a % 50}")
        deploy = OwnerRef("Deployment", f"app{a}", controller=True)
        c.owners.append(WorkloadObject(WorkloadKind.DEPLOYMENT, ns, f"app{a}"))
        rs = WorkloadObject(WorkloadKind.REPLICA_SET, ns, f"app{a}-7d9f8", owners=(deploy,))
        c.owners.append(rs)
    for k in range(services):
        ns = NamespaceName(f"team-{k % 50}")
        c.services.append(Service(ns, f"svc{k}", cluster_ips=(f"10.96.{k // 250}.{k % 250 + 1}",)))
    serial = iter(range(10**9))
    for node in c.nodes:  # two hostNetwork DaemonSet pods per node: their IP is the node's
        for ds in ("kube-proxy", "node-exporter"):
            i = next(serial)
            daemon = Pod(
                NamespaceName("kube-system"), PodName(f"{ds}-{i}"), Uid(f"ds-{i}"),
                node_name=node.name, host_network=True, ips=node.addresses,
                owners=(OwnerRef("DaemonSet", ds, controller=True),), created_at=T0,
            )  # fmt: skip
            c.events.append((T0, "upsert", daemon))
    base = int(ipaddress.IPv4Address("10.128.0.0"))
    regular = pods - 2 * nodes - reuse - jobs
    for k in range(regular + reuse + jobs):  # every other pod has an IP of its own
        at = T0 + rng.uniform(0, 600)
        ip = str(ipaddress.IPv4Address(base + k))
        first = pod(next(serial), app=k % apps, ip=ip, node=rng.choice(node_names), at=at)
        if k < regular:
            c.events.append((at, "upsert", first))
            c.single.append((ip, first.key, at))
        elif k < regular + reuse:  # deleted at +1000 s, its IP taken 30 s later
            new = pod(next(serial), app=k % apps, ip=ip, node=first.node_name or "", at=T0 + 1030)
            c.events += [(at, "upsert", first), (T0 + 1000, "delete", first)]
            c.events.append((T0 + 1030, "upsert", new))
            c.reused.append((ip, first.key, new.key))
        else:  # a CronJob's pod: Running, Succeeded at +900 s; a new pod gets its IP at +950 s
            job = dataclasses.replace(
                first,
                name=PodName(f"nightly-{k}-x7k2p"),
                uid=Uid(f"job-{k}"),
                owners=(OwnerRef("Job", f"nightly-{k}", controller=True),),
            )
            done = dataclasses.replace(job, phase=PodPhase.SUCCEEDED)
            new = dataclasses.replace(first, created_at=T0 + 950)
            c.events += [(at, "upsert", job), (T0 + 900, "upsert", done)]
            c.events.append((T0 + 950, "upsert", new))
            c.job_ips.append((ip, new.key))
    c.events.sort(key=lambda e: e[0])
    return c


def feed(c: Cluster, *, upsert: Callable[[ObjectKind, Any, float], None],
         delete: Callable[[ObjectKind, Any, float], None]) -> None:  # fmt: skip
    for obj in c.owners:
        upsert(ObjectKind.WORKLOAD, obj, T0 - 3600)
    for node in c.nodes:
        upsert(ObjectKind.NODE, node, T0 - 3600)
    for svc in c.services:
        upsert(ObjectKind.SERVICE, svc, T0 - 3600)
    for at, what, p in c.events:
        (upsert if what == "upsert" else delete)(ObjectKind.POD, p, at)


def build_index(c: Cluster) -> IdentityIndex:
    index = IdentityIndex(grace=GRACE, named_cidrs=NAMED_CIDRS)

    def upsert(kind: ObjectKind, obj: Any, at: float) -> None:
        {
            ObjectKind.WORKLOAD: index.upsert_workload,
            ObjectKind.NODE: index.upsert_node,
            ObjectKind.SERVICE: index.upsert_service,
            ObjectKind.POD: index.upsert_pod,
        }[kind](obj, at=at)

    def delete(kind: ObjectKind, obj: Any, at: float) -> None:
        index.delete_pod(obj.uid, at=at)

    feed(c, upsert=upsert, delete=delete)
    return index


def build_store(c: Cluster) -> InventoryStore:
    store = InventoryStore(index=IdentityIndex(grace=GRACE, named_cidrs=NAMED_CIDRS))

    def event(kind_of: EventType) -> Callable[[ObjectKind, Any, float], None]:
        return lambda kind, obj, at: store.apply(InventoryEvent(kind_of, kind, obj, at))

    feed(c, upsert=event(EventType.ADDED), delete=event(EventType.DELETED))
    return store


NOW = T0 + 1100
"""When lookups happen; the index has had `expire(NOW)`, as the agent does periodically."""
RECENT = 60.0
"""Connections are looked up at most this long after they were seen (the agent's case)."""


def queries(
    c: Cluster, n: int, *, mixed: bool, recent: bool, seed: int
) -> tuple[list[Query], list[str]]:
    """n (ip, time) pairs and the expected `kind:key` of each (checked on a sample).

    `recent`: pod connection times in the last minute; else anywhere in the pod's life.
    """
    rng = random.Random(seed)
    now = NOW
    out: list[Query] = []
    want: list[str] = []
    externals = [f"198.51.{rng.randrange(32)}.{rng.randrange(256)}" for _ in range(5000)]
    externals += [f"8.{rng.randrange(256)}.{rng.randrange(256)}.1" for _ in range(5000)]
    for _ in range(n):
        r = rng.random() if mixed else 0.0
        if r < 0.55:
            ip, key, seen = rng.choice(c.single)
            out.append((ip, rng.uniform(now - RECENT if recent else seen, now)))
            want.append(f"pod:{key}")
        elif r < 0.67:  # before the deletion, in the grace period before/after the new pod
            ip, old, new = rng.choice(c.reused)
            at = rng.choice([T0 + 800, T0 + 1010, T0 + 1050])
            out.append((ip, at))
            want.append(f"pod:{old}" if at < T0 + 1030 else f"pod:{new}")
        elif r < 0.72:
            ip, key = rng.choice(c.job_ips)
            out.append((ip, now))
            want.append(f"pod:{key}")
        elif r < 0.82:
            svc = rng.choice(c.services)
            out.append((svc.cluster_ips[0], now))
            want.append(f"service:{svc.key}")
        elif r < 0.87:
            node = rng.choice(c.nodes)
            out.append((node.addresses[0], now))
            want.append(f"node:{node.name}")
        else:
            ip = rng.choice(externals)
            out.append((ip, now))
            want.append("external:" + ("world" if ip.startswith("8.") else ""))
    return out, want


@dataclass
class Rate:
    """Lookups per second over `repeat` runs: per CPU-second of this process (what one
    thread can do) and per wall-clock second (also what the machine's load allows)."""

    cpu_runs: list[float]
    wall_runs: list[float]

    @property
    def best(self) -> float:
        return max(self.cpu_runs)

    @property
    def median(self) -> float:
        return statistics.median(self.cpu_runs)

    @property
    def wall(self) -> float:
        return statistics.median(self.wall_runs)


def rate(index: IdentityIndex, qs: list[Query], repeat: int) -> Rate:
    lookup = index.lookup
    cpu, wall = [], []
    for _ in range(repeat):
        gc.collect()
        c0, w0 = time.process_time(), time.perf_counter()
        for ip, at in qs:
            lookup(ip, at)
        c1, w1 = time.process_time(), time.perf_counter()
        cpu.append(len(qs) / (c1 - c0))
        wall.append(len(qs) / (w1 - w0))
    return Rate(cpu, wall)


def check(index: IdentityIndex, qs: list[Query], want: list[str], sample: int) -> list[str]:
    errors = []
    for (ip, at), expected in list(zip(qs, want, strict=True))[:sample]:
        found = index.lookup(ip, at)
        got = f"{found.kind.value}:{found.key}"
        ok = got.startswith(expected) if expected == "external:" else got == expected
        if not ok:
            errors.append(f"{ip} at {at - T0:+.0f}s: expected {expected}, got {got}")
    return errors


def traced_mib(build: Callable[[], Any]) -> tuple[Any, float, float]:
    gc.collect()
    tracemalloc.start()
    obj = build()
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return obj, current / 2**20, peak / 2**20


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def environment() -> dict[str, Any]:
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        rev = "unknown"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git": rev,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = ap.add_argument
    add("--pods", type=int, default=50_000, help="[%(default)s]")
    add("--services", type=int, default=1_000, help="[%(default)s]")
    add("--nodes", type=int, default=100, help="[%(default)s]")
    add("--reuse", type=int, default=2_000, help="pods deleted and IPs reused [%(default)s]")
    add("--jobs", type=int, default=1_000, help="completed Job pods, IPs reused [%(default)s]")
    add("--lookups", type=int, default=1_000_000, help="per measurement [%(default)s]")
    add("--repeat", type=int, default=5, help="runs per measurement [%(default)s]")
    add("--seed", type=int, default=1, help="[%(default)s]")
    add("--results", type=Path, default=REPO / "benchmarks/results/identity_index.json")
    add("--no-check", action="store_true", help="exit 0 even if a target is missed")
    args = ap.parse_args(argv)
    if args.pods < 2 * args.nodes + args.reuse + args.jobs + 1:
        ap.error("--pods must exceed 2 * nodes (hostNetwork pods) + --reuse + --jobs")
    spec = {k: getattr(args, k) for k in ("pods", "services", "nodes", "reuse", "jobs", "seed")}

    rss0 = rss_mib()
    c, objects_mib, _ = traced_mib(lambda: generate(**spec))
    t = time.perf_counter()
    index, index_mib, index_peak = traced_mib(lambda: build_index(c))
    build_traced_s = time.perf_counter() - t
    _, store_mib, _ = traced_mib(lambda: build_store(c))
    del index  # the traced one; time (and RSS-measure) an untraced build
    gc.collect()
    rss_before_index = rss_mib()
    t = time.perf_counter()
    index = build_index(c)
    build_s = time.perf_counter() - t
    rss_index = rss_mib() - rss_before_index

    index.expire(NOW)  # what the agent does periodically: history bounded, old claims settled
    loads = [os.getloadavg()[0]]
    workloads = {
        "common, recent time": queries(c, args.lookups, mixed=False, recent=True, seed=1),
        "common, any time in life": queries(c, args.lookups, mixed=False, recent=False, seed=2),
        "mixed": queries(c, args.lookups, mixed=True, recent=True, seed=3),
    }  # fmt: skip
    errors = [e for qs, want in workloads.values() for e in check(index, qs, want, 20_000)]
    rates = {name: rate(index, qs, args.repeat) for name, (qs, _) in workloads.items()}
    loads.append(os.getloadavg()[0])
    before = index.stats()
    expired = index.expire(NOW + 2 * GRACE)
    after = index.stats()

    gated = ("common, recent time", "common, any time in life")
    met_mem = index_mib <= TARGET_MIB
    met_rate = all(rates[name].best >= TARGET_LOOKUPS for name in gated)
    print(
        f"identity index: {args.pods:,} pods ({args.reuse:,} IPs reused, {args.jobs:,} completed "
        f"Job pods, {2 * args.nodes} hostNetwork), {args.services:,} services, {args.nodes} "
        f"nodes, {len(NAMED_CIDRS)} named CIDRs; {before['ips']:,} IPs indexed; "
        f"load average {loads[0]:.1f} -> {loads[1]:.1f} on {os.cpu_count()} CPUs"
    )
    memory = [
        ("slim objects fed (tracemalloc)", objects_mib, None),
        ("index (tracemalloc)", index_mib, met_mem),
        ("index peak while building", index_peak, None),
        ("store + index (tracemalloc)", store_mib, None),
        ("index, RSS growth", rss_index, None),
    ]
    print(f"\n{'memory':<34} {'MiB':>8}  {'target':<10} status")
    for name, mib, ok in memory:
        target = f"<= {TARGET_MIB:.0f}" if ok is not None else ""
        print(
            f"{name:<34} {mib:>8.1f}  {target:<10} {'' if ok is None else 'ok' if ok else 'MISS'}"
        )
    print(f"{'build (events fed), seconds':<34} {build_s:>8.2f}")
    print(
        f"\n{'lookups/s':<28} {'best/CPU-s':>11} {'median/CPU-s':>13} {'median/wall-s':>14}"
        f"  {'target':<12} status"
    )
    for name, r in rates.items():
        judged = name in gated
        target = f">= {TARGET_LOOKUPS:,}" if judged else ""
        status = ("ok" if r.best >= TARGET_LOOKUPS else "MISS") if judged else ""
        rates_text = f"{r.best:>11,.0f} {r.median:>13,.0f} {r.wall:>14,.0f}"
        print(f"{name:<28} {rates_text}  {target:<12} {status}")
    for e in errors[:10]:
        print(f"  ! wrong answer: {e}")
    met = met_mem and met_rate and not errors
    summary = (
        f"{'PASS' if met else 'FAIL'}: index {index_mib:.1f} MiB (target <= {TARGET_MIB:.0f}); "
        + ", ".join(f"{rates[n].best:,.0f}/s {n}" for n in gated)
        + f" (target >= {TARGET_LOOKUPS:,}, best per CPU-second); "
        f"{rates['mixed'].best:,.0f}/s mixed; {len(errors)} wrong answers"
    )
    print(summary)
    results = {
        "environment": {**environment(), "rss_start_mib": round(rss0, 1),
                        "cpus": os.cpu_count(), "load_average": [round(x, 2) for x in loads]},
        "spec": {**spec, "lookups": args.lookups, "repeat": args.repeat, "grace": GRACE,
                 "named_cidrs": len(NAMED_CIDRS), "recent_seconds": RECENT},
        "target": {"max_index_mib": TARGET_MIB, "min_lookups_per_cpu_s": TARGET_LOOKUPS,
                   "gated": list(gated)},
        "memory_mib": {"objects": round(objects_mib, 1), "index": round(index_mib, 1),
                       "index_peak": round(index_peak, 1), "store_and_index": round(store_mib, 1),
                       "index_rss_growth": round(rss_index, 1)},
        "build_seconds": round(build_s, 3),
        "build_seconds_traced": round(build_traced_s, 3),
        "lookups_per_s": {name: {"best_cpu": round(r.best), "median_cpu": round(r.median),
                                 "median_wall": round(r.wall),
                                 "cpu_runs": [round(x) for x in r.cpu_runs],
                                 "wall_runs": [round(x) for x in r.wall_runs]}
                          for name, r in rates.items()},
        "index_stats": before,
        "after_expire": after | {"expired": expired},
        "wrong_answers": errors[:50],
        "met": met,
        "summary": summary,
    }  # fmt: skip
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    shown = args.results.relative_to(REPO) if args.results.is_relative_to(REPO) else args.results
    print(f"results: {shown}")
    if errors:
        return 1
    return 0 if met or args.no_check else 1


if __name__ == "__main__":
    sys.exit(main())
