"""The agent's CPU and RSS at 100,000 active connections, and under a pod-churn soak.

**Target** (issue 6): agent RSS at most **200 MiB** with 100,000 active connections against
the 1,000-pod / 200-policy synthetic cluster (`synthetic_cluster.py`, seed 1); and under a
pod-churn soak, no growth.

Both modes run the `Agent` (replay backend: `ReplaySource.from_batches`, not eBPF) in a
child process started by this script (`--child ...`), with a fake clock that advances
`DRAIN` seconds per drain, its HTTP server on 127.0.0.1:0 and the cluster as a snapshot
file (`SnapshotFeed`, as `netwatch agent --cluster`).

- **active** (default): a flow log of exactly 100,000 distinct connections (drawn from the
  `analyze.py` traffic mix) arrives over `--ramp` drains; then every one of the
  `--active` later drains carries a delta record for each of the 100,000 (what eBPF
  drains report for connections that stay open). After each drain the child scrapes
  `/metrics` once and reports its RSS, peak RSS (VmHWM), CPU seconds of the drain and of
  the scrape, and the CPU the replay source itself spent parsing records (a stand-in for
  the capture, included in the drain figure). Exit status 1 when the peak RSS misses the
  target (unless `--no-check`).
- **soak** (`--soak SECONDS`): the parent rewrites the snapshot file every
  `--churn-every` seconds, replacing 50 pods by pods of new workloads (new names, uids and
  StatefulSet owners; the freed IPs are reused), while the child drains `PER_DRAIN`
  (2,000) records per step (half from a pool of `POOL` (10,000) long-lived connections
  that rotates 5% per drain, half new) at `SOAK_RATE` (2) drains per second — simulated
  time runs 10x faster than wall time (when the child keeps up), so the grace periods of
  deleted workloads' series, identities and suggestion observations are crossed many
  times. The parent samples the child's RSS every 10 s. Checks (`soak_verdict`): the
  first third is warm-up; **no growth** — the last third's median RSS at most
  `GROWTH_TOLERANCE_MIB` (5) above the middle third's; **target** — no sample above
  `TARGET_MIB`. Exit status 1 when either fails (unless `--no-check`). `--diagnose
  sizes|trim|tracemalloc` (repeatable) makes the child print, every 20 s, the sizes of
  the agent's growable containers and GC-tracked objects by type, RSS before and after
  `malloc_trim(0)`, or tracemalloc's growth by source line (see `_Diagnostics`).

    .venv/bin/python benchmarks/agent.py                    # 100,000 active connections
    .venv/bin/python benchmarks/agent.py --soak 600         # 10-minute churn soak
    .venv/bin/python benchmarks/agent.py --soak 180 --diagnose sizes --no-check
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import random
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import yaml
from analyze import FlowWriter, read_world
from synthetic_cluster import _KubectlDumper, generate, write
from synthetic_inventory import ClusterSpec

from netwatch.agent import Agent, AgentConfig
from netwatch.agent.inventory import BufferedSink, SnapshotFeed
from netwatch.capture.replay import ReplaySource
from netwatch.core.flow import Connection, Orientation
from netwatch.core.model import Protocol
from netwatch.server import ServerConfig

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
TARGET_MIB = 200.0
DRAIN = 5.0
SOAK_RATE = 2.0
"""Soak drains per wall second."""
CHURN_PODS = 50
PER_DRAIN = 2000
"""Soak records per drain: half from the long-lived pool, half new."""
POOL = 10_000
GROWTH_TOLERANCE_MIB = 5.0
"""Soak: how far the last third's median RSS may exceed the middle third's."""
DIAGNOSE_EVERY = 20.0
"""Wall seconds between `--diagnose` rows of the soak child."""


# ---------------------------------------------------------------- helpers (both sides)


def _status_mib(pid: int | str, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the child: the agent


def _make_agent(cluster: Path, batches: Any, clock: Any) -> Any:

    sink = BufferedSink()
    return Agent(
        config=AgentConfig(node="bench", drain_interval=DRAIN, backend="replay"),
        flows=ReplaySource.from_batches(batches),
        inventory=SnapshotFeed([str(cluster)], sink, clock=clock),
        sink=sink,
        server=ServerConfig(host="127.0.0.1", port=0),
        clock=clock,
    )


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _scrape(url: str) -> tuple[float, int]:

    cpu = time.process_time()
    with urllib.request.urlopen(url + "/metrics", timeout=60) as resp:
        size = len(resp.read())
    return time.process_time() - cpu, size


def child_active(args: argparse.Namespace) -> int:

    clock = _Clock(args.t0)
    source_cpu = [0.0]
    with args.flows.open() as f:
        total = sum(1 for _ in f)
    per = -(-total // args.ramp)

    def chunk(start: int, stop: int) -> Iterator[str]:
        """Lines [start, stop) of the log, read afresh each drain (the log is not held)."""
        with args.flows.open() as f:
            yield from islice(f, start, stop)

    def build(lines: Iterator[str], *, delta: bool) -> list[Connection]:
        t = time.process_time()
        out = []
        for line in lines:
            r = json.loads(line)
            first, last = (clock.now - DRAIN, clock.now - 0.1) if delta else (0.0, 0.0)
            out.append(
                Connection(
                    client_ip=r["client_ip"],
                    client_port=r["client_port"],
                    server_ip=r["server_ip"],
                    server_port=r["server_port"],
                    protocol=Protocol(r["protocol"]),
                    first_seen=first if delta else r["first_seen"],
                    last_seen=last if delta else r["last_seen"],
                    packets_out=1 if delta else r["packets_out"],
                    bytes_out=100 if delta else r["bytes_out"],
                    packets_in=1 if delta else r["packets_in"],
                    bytes_in=100 if delta else r["bytes_in"],
                    orientation=Orientation(r["orientation"]),
                    node="bench",
                )
            )
        source_cpu[0] += time.process_time() - t
        return out

    def batches() -> Any:
        yield []  # the drain in start()
        for i in range(args.ramp):
            yield build(chunk(i * per, (i + 1) * per), delta=False)
        for _ in range(args.active):
            yield build(chunk(0, total), delta=True)

    agent = _make_agent(args.cluster, batches(), clock)
    t = time.process_time()
    agent.start()
    print(json.dumps({"phase": "start", "cpu": time.process_time() - t}), flush=True)
    for i in range(args.ramp + args.active):
        clock.now += DRAIN
        source_cpu[0] = 0.0
        t = time.process_time()
        agent.step()
        step_cpu = time.process_time() - t
        scrape_cpu, size = _scrape(agent.server.url)
        row = {
            "drain": i + 1,
            "phase": "ramp" if i < args.ramp else "active",
            "records": agent.records_total,
            "series": agent.accumulator.series,
            "cpu": round(step_cpu, 3),
            "source_cpu": round(source_cpu[0], 3),
            "scrape_cpu": round(scrape_cpu, 3),
            "metrics_bytes": size,
            "rss_mib": round(_status_mib("self", "VmRSS"), 1),
            "hwm_mib": round(_status_mib("self", "VmHWM"), 1),
        }
        print(json.dumps(row), flush=True)
    agent.shutdown()
    return 0


class _Diagnostics:
    """`--diagnose`: what holds the soak child's memory, printed as `{"diag": ...}` rows.

    `sizes` — the agent's growable containers, GC-tracked objects by type (the change since
    the first row) and collector counts; `trim` — RSS before and after glibc's
    `malloc_trim(0)` (memory that is free but not returned to the OS: fragmentation,
    not live objects); `tracemalloc` — Python allocations by source line, the change since
    the first row (slows the child down and adds its own memory: for diagnosis only).
    """

    def __init__(self, kinds: list[str]) -> None:
        self.kinds = set(kinds)
        self._types: Counter[str] | None = None
        self._trace: tracemalloc.Snapshot | None = None
        if "tracemalloc" in self.kinds:
            tracemalloc.start(4)

    def row(self, agent: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"rss_mib": round(_status_mib("self", "VmRSS"), 1)}
        if "sizes" in self.kinds:
            out |= self._sizes(agent)
        if "tracemalloc" in self.kinds:
            out["tracemalloc"] = self._tracemalloc()
        if "trim" in self.kinds:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            out["rss_after_trim_mib"] = round(_status_mib("self", "VmRSS"), 1)
        return out

    def _sizes(self, agent: Any) -> dict[str, Any]:
        attributor = agent._attributor
        acc = agent.accumulator
        observed = agent.suggester._observed
        types = Counter(type(o).__name__ for o in gc.get_objects())
        base, self._types = self._types, self._types or types
        return {
            "observations": agent.suggester.observations,
            "observed_records": observed.records,
            "flows": acc.series,
            "conversations": acc.conversations,
            "ports": len(acc._ports),
            "peers": len(acc._peers),
            "index": agent.store.index.stats(),
            "attributor": {
                name: len(getattr(attributor, name))
                for name in ("_cache", "_views", "_evaluations", "_classes", "_backends")
            },
            "gc_objects": sum(types.values()),
            "gc_counts": gc.get_count(),
            "gc_collections": [s["collections"] for s in gc.get_stats()],
            "types_grown": dict((types - base).most_common(8)) if base else {},
        }

    def _tracemalloc(self) -> dict[str, Any]:
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        traced = tracemalloc.get_traced_memory()[0] / 2**20
        if self._trace is None:
            self._trace = snap
            return {"traced_mib": round(traced, 1)}
        top = snap.compare_to(self._trace, "lineno")[:10]
        return {
            "traced_mib": round(traced, 1),
            "grown": [
                f"{s.size_diff / 2**20:+.1f} MiB {s.count_diff:+d} "
                f"{Path(s.traceback[0].filename).name}:{s.traceback[0].lineno}"
                for s in top
            ],
        }


def child_soak(args: argparse.Namespace) -> int:

    rng = random.Random(6)
    clock = _Clock(time.time())
    pool: list[tuple[str, int, str, int]] = []
    ips: list[tuple[str, int]] = []
    port = [32768]

    def fresh() -> tuple[str, int, str, int]:
        """A new connection on one of the client's three edges (IPs sorted: stable)."""
        port[0] = 32768 + (port[0] - 32767) % 28000
        i = rng.randrange(len(ips))
        server, sport = ips[(i * 31 + rng.randrange(3) * 97 + 1) % len(ips)]
        return (ips[i][0], port[0], server, sport)

    def batches() -> Any:
        yield []
        while True:
            if not pool:
                pool.extend(fresh() for _ in range(POOL))
            for _ in range(POOL // 20):
                pool[rng.randrange(len(pool))] = fresh()
            tuples = rng.sample(pool, PER_DRAIN // 2) + [fresh() for _ in range(PER_DRAIN // 2)]
            yield [
                Connection(
                    client_ip=c,
                    client_port=cp,
                    server_ip=s,
                    server_port=sp,
                    protocol=Protocol.TCP,
                    first_seen=clock.now - DRAIN,
                    last_seen=clock.now - 0.1,
                    packets_out=2,
                    bytes_out=200,
                    packets_in=2,
                    bytes_in=200,
                    orientation=Orientation.SYN,
                    node="bench",
                )
                for c, cp, s, sp in tuples
            ]

    agent = _make_agent(args.cluster, batches(), clock)
    generation = -1
    diagnostics = _Diagnostics(args.diagnose) if args.diagnose else None

    def refresh_ips() -> None:
        cluster = agent.store.cluster()
        ips[:] = sorted(
            (p.primary_ip, p.container_ports[0].port if p.container_ports else 80)
            for p in cluster.pods
            if p.primary_ip and not p.host_network
        )

    agent.server.start()  # start() would drain once before the pod IPs are known
    agent._feed.start()
    agent._refresh_inventory()
    refresh_ips()
    agent._started = True
    agent._capture_ok = True
    deadline = time.monotonic() + args.soak_seconds
    next_at = time.monotonic()
    diagnose_at = next_at + DIAGNOSE_EVERY
    while time.monotonic() < deadline:
        clock.now += DRAIN
        agent.step()
        if agent.generation != generation:
            generation = agent.generation
            refresh_ips()
        if agent.drains % 10 == 0:
            _scrape(agent.server.url)
            row = {"drains": agent.drains, "series": agent.accumulator.series}
            row |= {"generation": generation, "records": agent.records_total}
            print(json.dumps(row), flush=True)
        if diagnostics is not None and time.monotonic() >= diagnose_at:
            row = {"drains": agent.drains, **diagnostics.row(agent)}
            print(json.dumps({"diag": row}), flush=True)
            diagnose_at += DIAGNOSE_EVERY
        next_at += 1 / SOAK_RATE
        time.sleep(max(0.0, next_at - time.monotonic()))
    agent.shutdown()
    return 0


# ---------------------------------------------------------------- the parent


def _prepare(workdir: Path, connections: int) -> tuple[Path, Path, float, list[dict[str, Any]]]:

    spec = ClusterSpec(pods=1000, namespaces=40, policies=200, nodes=10, seed=1)
    cluster = generate(spec)
    cluster_path = workdir / "cluster-1000pods-200pol-seed1.yaml"
    write(cluster, cluster_path)
    flows_path = workdir / f"agent-flows-{connections}-distinct.jsonl"
    last = 0.0
    if not flows_path.exists():
        writer = FlowWriter(read_world(cluster.objects), seed=1)
        seen: set[tuple[Any, ...]] = set()
        with flows_path.open("w") as out:
            while len(seen) < connections:
                line = writer.record()
                r = json.loads(line)
                key = (r["client_ip"], r["client_port"], r["server_ip"], r["server_port"])
                if (*key, r["protocol"]) not in seen:
                    seen.add((*key, r["protocol"]))
                    out.write(line)
    with flows_path.open() as f:
        for line in f:
            last = max(last, json.loads(line)["last_seen"])
    return cluster_path, flows_path, last, cluster.objects


def _child(mode: str, extra: list[str], log: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, cwd=REPO)


def _environment() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "commit": commit,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "backend": "replay (ReplaySource.from_batches), not eBPF",
    }


def run_active(args: argparse.Namespace, cluster: Path, flows: Path, t0: float) -> dict[str, Any]:
    extra = ["--cluster", str(cluster), "--flows", str(flows), "--t0", str(t0 + 10)]
    extra += ["--ramp", str(args.ramp), "--active", str(args.active)]
    proc = _child("active", extra, args.workdir / "agent-active.stderr")
    rows = []
    assert proc.stdout is not None
    print(
        f"{'drain':>5} {'phase':>6} {'records':>9} {'series':>7} {'CPU s':>6} "
        f"{'src s':>6} {'scrape s':>8} {'metrics KiB':>11} {'RSS MiB':>8} {'peak MiB':>8}"
    )
    for line in proc.stdout:
        row = json.loads(line)
        rows.append(row)
        if "drain" in row:
            print(
                f"{row['drain']:>5} {row['phase']:>6} {row['records']:>9,} {row['series']:>7,} "
                f"{row['cpu']:>6.2f} {row['source_cpu']:>6.2f} {row['scrape_cpu']:>8.2f} "
                f"{row['metrics_bytes'] / 1024:>11.0f} {row['rss_mib']:>8.1f} "
                f"{row['hwm_mib']:>8.1f}",
                flush=True,
            )
    code = proc.wait()
    drains = [r for r in rows if "drain" in r]
    active = [r for r in drains if r["phase"] == "active"]
    peak = max((r["hwm_mib"] for r in drains), default=0.0)
    return {
        "connections": sum(1 for _ in flows.open()),
        "exit": code,
        "peak_rss_mib": peak,
        "steady_rss_mib": active[-1]["rss_mib"] if active else None,
        "cpu_per_active_drain": sorted(r["cpu"] for r in active)[len(active) // 2]
        if active
        else None,
        "source_cpu_per_active_drain": sorted(r["source_cpu"] for r in active)[len(active) // 2]
        if active
        else None,
        "start_cpu": rows[0].get("cpu") if rows else None,
        "drains": drains,
        "target_mib": TARGET_MIB,
        "ok": code == 0 and bool(active) and peak <= TARGET_MIB,
    }


def _churn(objects: list[dict[str, Any]], rng: random.Random, gen: int) -> None:
    pods = [
        o
        for o in objects
        if o["kind"] == "Pod"
        and o.get("status", {}).get("podIP")
        and not o["spec"].get("hostNetwork")
    ]
    for pod in rng.sample(pods, CHURN_PODS):
        meta = pod["metadata"]
        base = meta["name"].split("--g")[0]
        meta["name"] = f"{base}--g{gen}"
        meta["uid"] = f"churn-{gen}-{base}"
        meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        owner = f"churn-{base[:40]}-g{gen}"
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": owner, "controller": True}
        ]


def run_soak(
    args: argparse.Namespace, cluster: Path, objects: list[dict[str, Any]]
) -> dict[str, Any]:

    live = args.workdir / "agent-soak-cluster.yaml"
    live.write_bytes(cluster.read_bytes())
    rng = random.Random(7)
    extra = ["--cluster", str(live), "--soak-seconds", str(args.soak)]
    extra += [f"--diagnose={kind}" for kind in args.diagnose]
    proc = _child(
        "soak",
        extra,
        args.workdir / "agent-soak.stderr",
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    start = time.monotonic()
    samples: list[dict[str, float]] = []
    next_sample, next_churn, gen = start, start + args.churn_every, 0
    last: dict[str, Any] = {}
    diagnostics: list[dict[str, Any]] = []
    while proc.poll() is None:
        now = time.monotonic()
        for line in proc.stdout:
            row = json.loads(line)
            if "diag" in row:
                diagnostics.append({"t": round(now - start, 1), **row["diag"]})
                print(f"  diag {json.dumps(diagnostics[-1])}", flush=True)
            else:
                last = row
        if now >= next_churn:
            gen += 1
            _churn(objects, rng, gen)
            doc = {"apiVersion": "v1", "items": objects, "kind": "List"}
            tmp = live.with_suffix(".tmp")
            tmp.write_text(yaml.dump(doc, Dumper=_KubectlDumper, sort_keys=True, width=1 << 16))
            os.replace(tmp, live)
            next_churn += args.churn_every
        if now >= next_sample:
            try:
                sample = {"t": round(now - start, 1), "rss_mib": _status_mib(proc.pid, "VmRSS")}
                sample |= {"cpu": _cpu_seconds(proc.pid), **last}
            except (OSError, IndexError):
                break
            samples.append(sample)
            print(
                f"  t={sample['t']:6.0f} s  RSS {sample['rss_mib']:6.1f} MiB  "
                f"CPU {sample['cpu']:7.1f} s  {json.dumps(last)}",
                flush=True,
            )
            next_sample += 10
        time.sleep(0.2)
    code = proc.wait()
    return {
        "seconds": args.soak,
        "exit": code,
        "churns": gen,
        "pods_per_churn": CHURN_PODS,
        **soak_verdict(samples, seconds=args.soak, exit_code=code),
        "samples": samples,
        "diagnostics": diagnostics,
    }


def soak_verdict(
    samples: list[dict[str, Any]], *, seconds: float, exit_code: int
) -> dict[str, Any]:
    """The soak's checks over the RSS samples taken while the child was draining.

    The first third of the run is warm-up (caches, series and observations filling up).
    **No growth**: the median RSS of the last third exceeds the middle third's by at most
    `GROWTH_TOLERANCE_MIB` (medians: a suggestion render's transient allocations do not
    decide it). **Target**: no sample above `TARGET_MIB`, warm-up included. The slope
    (least squares over the last two thirds) is reported, not checked.
    """
    during = [s for s in samples if s["rss_mib"] > 0 and s["t"] <= seconds]
    middle = [s for s in during if seconds / 3 <= s["t"] < 2 * seconds / 3]
    last = [s for s in during if s["t"] >= 2 * seconds / 3]
    after = middle + last
    slope = 0.0
    if len(after) >= 2:
        n = len(after)
        mx = sum(s["t"] for s in after) / n
        my = sum(s["rss_mib"] for s in after) / n
        sxx = sum((s["t"] - mx) ** 2 for s in after)
        slope = sum((s["t"] - mx) * (s["rss_mib"] - my) for s in after) / sxx * 60
    enough = len(middle) >= 3 and len(last) >= 3
    growth = _median(last) - _median(middle) if enough else None
    peak = max((s["rss_mib"] for s in during), default=0.0)
    no_growth = growth is not None and growth <= GROWTH_TOLERANCE_MIB
    return {
        "warm_up_seconds": round(seconds / 3, 1),
        "median_rss_middle_third_mib": round(_median(middle), 1) if middle else None,
        "median_rss_last_third_mib": round(_median(last), 1) if last else None,
        "growth_mib": None if growth is None else round(growth, 1),
        "growth_tolerance_mib": GROWTH_TOLERANCE_MIB,
        "slope_mib_per_minute": round(slope, 3),
        "band_after_warm_up_mib": round(
            max(s["rss_mib"] for s in after) - min(s["rss_mib"] for s in after), 1
        )
        if after
        else None,
        "peak_rss_mib": round(peak, 1),
        "target_mib": TARGET_MIB,
        "no_growth": no_growth,
        "ok": exit_code == 0 and no_growth and peak <= TARGET_MIB,
    }


def _median(samples: list[dict[str, Any]]) -> float:
    values = sorted(s["rss_mib"] for s in samples)
    return values[len(values) // 2] if values else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--connections", type=int, default=100_000)
    ap.add_argument("--ramp", type=int, default=4, help="drains delivering the connections")
    ap.add_argument("--active", type=int, default=6, help="drains of deltas afterwards")
    ap.add_argument("--soak", type=float, nargs="?", const=600.0, default=None, metavar="SECONDS")
    ap.add_argument("--churn-every", type=float, default=5.0, metavar="SECONDS")
    ap.add_argument("--workdir", type=Path, default=RESULTS)
    ap.add_argument(
        "--diagnose",
        action="append",
        default=[],
        choices=("sizes", "trim", "tracemalloc"),
        help=f"soak: print what holds the child's memory every {DIAGNOSE_EVERY:.0f} s (repeatable)",
    )
    ap.add_argument("--no-check", action="store_true", help="exit 0 even if a target is missed")
    ap.add_argument("--child", choices=("active", "soak"), help=argparse.SUPPRESS)
    ap.add_argument("--cluster", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--flows", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--soak-seconds", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "active":
        return child_active(args)
    if args.child == "soak":
        return child_soak(args)
    args.workdir.mkdir(parents=True, exist_ok=True)
    cluster, flows, t0, objects = _prepare(args.workdir, args.connections)
    result_path = args.workdir / "agent.json"
    result: dict[str, Any] = json.loads(result_path.read_text()) if result_path.exists() else {}
    result["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    if args.soak is None:
        print(f"# {args.connections:,} distinct connections, 1,000-pod cluster, replay backend")
        active = run_active(args, cluster, flows, t0)
        result["active"] = active
        print(
            f"\npeak RSS {active['peak_rss_mib']:.1f} MiB (target <= {TARGET_MIB:.0f}); "
            f"CPU per active drain {active['cpu_per_active_drain']} s "
            f"(of which replay parsing {active['source_cpu_per_active_drain']} s); "
            f"target met: {'yes' if active['ok'] else 'NO'}"
        )
        ok = active["ok"]
    else:
        print(
            f"# churn soak, {args.soak:.0f} s, {CHURN_PODS} pods replaced every "
            f"{args.churn_every:.0f} s, replay backend"
        )
        soak = run_soak(args, cluster, objects)
        result["soak"] = soak
        print(
            f"\n{soak['churns']} churns; median RSS middle third "
            f"{soak['median_rss_middle_third_mib']} MiB, last third "
            f"{soak['median_rss_last_third_mib']} MiB (growth {soak['growth_mib']} MiB, "
            f"tolerance {GROWTH_TOLERANCE_MIB:.0f}); slope {soak['slope_mib_per_minute']} "
            f"MiB/min; peak {soak['peak_rss_mib']} MiB (target <= {TARGET_MIB:.0f}); "
            f"no growth: {'yes' if soak['no_growth'] else 'NO'}; "
            f"target met: {'yes' if soak['ok'] else 'NO'}"
        )
        ok = soak["ok"]
    result["environment"] = _environment()
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if ok or args.no_check else 1


if __name__ == "__main__":
    raise SystemExit(main())
