"""Benchmark `netwatch policy matrix` the way a user runs it, against the DESIGN target.

Target: on a 1,000-pod / 40-namespace / 200-policy cluster, six `policy matrix` runs
(one per port) take at most 10 s in total and no run peaks above 500 MiB RSS.

Why a subprocess per port, stdout to a file: that is what a user (or a CI job) waits
for — interpreter start, imports, snapshot parsing, the engine and JSON writing — and a
pipe read into this process would add our memory and our reading speed to the figure.
Wall time is taken around spawn→exit and peak RSS from `os.wait4`'s rusage for that
one child, both by a small helper process (`children.py`: spawned from this process, a
child's `ru_maxrss` would include this process's size). One untimed warm-up run first
byte-compiles netwatch. Each output is then checked (`matrix_output.py`): valid JSON,
exactly the n² ordered pairs of the pods that must be there, self-pairs allowed; the
allowed count and the output's sha256 are recorded so that a change in verdicts shows
up between commits even when timings do not move.

    .venv/bin/python benchmarks/policy_matrix.py               # 1,000 and 5,000 pods
    .venv/bin/python benchmarks/policy_matrix.py --sizes 1000 --repeat 3
    .venv/bin/python benchmarks/policy_matrix.py -- --ipblock-pod-ips ignore

Exit status: 1 if any output is invalid or a run fails, or (unless `--no-check`) if the
1,000-pod target is missed; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from children import ChildRun, Spawner
from matrix_output import check_matrix_file
from synthetic_cluster import generate, write
from synthetic_inventory import ClusterSpec

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PORTS = "TCP/80,TCP/8080,TCP/9090,UDP/53,TCP/443,SCTP/9000"
TARGET_PODS = 1000
TARGET_SECONDS = 10.0
TARGET_MIB = 500.0


@dataclass(frozen=True)
class PortSpec:
    protocol: str
    port: int

    def __str__(self) -> str:
        return f"{self.protocol}/{self.port}"


@dataclass
class PortResult:
    port: int
    protocol: str
    seconds: float
    cpu_seconds: float
    peak_mib: float
    returncode: int
    output_bytes: int
    pairs: int
    allowed: int
    expected_pairs: int
    output_sha256: str = ""
    seconds_each: list[float] = field(default_factory=list)
    """Every repetition's wall time; `seconds` is their median."""
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.errors


def parse_ports(text: str) -> list[PortSpec]:
    """`TCP/80,UDP/53` → port specs (protocol first, as `kubectl` prints ports)."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        proto, _, num = item.partition("/")
        if proto.upper() not in ("TCP", "UDP", "SCTP") or not num.isdigit():
            raise argparse.ArgumentTypeError(f"bad port {item!r}: expected PROTO/NUMBER")
        out.append(PortSpec(proto.upper(), int(num)))
    if not out:
        raise argparse.ArgumentTypeError("no ports given")
    return out


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev


def environment(args: argparse.Namespace, *, startup: ChildRun, floor: ChildRun) -> dict[str, Any]:
    """What the figures depend on besides the code: CPU, Python, the commit."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git": _git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "netwatch": str(args.netwatch),
        "bytecode": child_environment(args).get("PYTHONPYCACHEPREFIX")
        or ("not written" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "default"),
        "startup_seconds": round(startup.seconds, 3),
        "startup_peak_mib": round(startup.peak_mib, 1),
        "rss_floor_mib": round(floor.peak_mib, 1),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }


def bench_size(
    *, spec: ClusterSpec, ports: list[PortSpec], args: argparse.Namespace, spawner: Spawner
) -> dict[str, Any]:
    """Generate one cluster, run every port on it, check every output."""
    workdir: Path = args.workdir
    t0 = time.perf_counter()
    cluster = generate(spec)
    path = workdir / f"cluster-{spec.pods}pods-{spec.policies}pol-seed{spec.seed}.yaml"
    meta = write(cluster, path, layout=args.layout)
    print(
        f"# {spec.pods} pods ({len(cluster.matrix_pods)} in the matrix), {spec.namespaces} "
        f"namespaces, {spec.policies} policies: {path.name}, {meta['bytes'] / 2**20:.1f} MiB "
        f"(generated in {time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    n = len(cluster.matrix_pods)
    results: list[PortResult] = []
    for p in ports:
        out = workdir / f"matrix-{spec.pods}-{p.protocol}-{p.port}.json"
        cmd = [str(args.netwatch), "policy", "matrix", "--cluster", str(path)]
        cmd += ["--port", str(p.port), "--protocol", p.protocol, "-o", "json", *args.extra]
        res = measure_port(
            cmd=cmd, port=p, out=out, pods=cluster.matrix_pods, args=args, spawner=spawner
        )
        results.append(res)
        print(_row(spec, res), flush=True)
        for e in res.errors:
            print(f"    ! {e}", flush=True)
    total = sum(r.seconds for r in results)
    cpu = sum(r.cpu_seconds for r in results)
    peak = max(r.peak_mib for r in results)
    return {
        "spec": asdict(spec),
        "cluster_file": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path),
        "cluster_bytes": meta["bytes"],
        "cluster_sha256": meta["sha256"],
        "kinds": meta["kinds"],
        "policy_mix": meta["policy_mix"],
        "pods_in_matrix": n,
        "ports": [{**asdict(r), "ok": r.ok} for r in results],
        "total_seconds": round(total, 3),
        "total_cpu_seconds": round(cpu, 3),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "max_peak_mib": round(peak, 1),
        "ok": all(r.ok for r in results),
    }


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def measure_port(
    *,
    cmd: list[str],
    port: PortSpec,
    out: Path,
    pods: list[str],
    args: argparse.Namespace,
    spawner: Spawner,
) -> PortResult:
    """Run one port `--repeat` times; check the first output, require identical bytes after.

    The median is reported because the machine is shared: one slow run should not
    decide a pass or a fail. The output digest goes into the results so that a change
    in verdicts between two commits is visible even when the counts happen to agree.
    """
    err = out.with_suffix(".stderr")
    res = PortResult(
        port=port.port,
        protocol=port.protocol,
        seconds=0.0,
        cpu_seconds=0.0,
        peak_mib=0.0,
        returncode=0,
        output_bytes=0,
        pairs=0,
        allowed=0,
        expected_pairs=len(pods) ** 2,
    )
    cpu_each = []
    for k in range(args.repeat):
        child = spawner.run(cmd, stdout=out, stderr=err, timeout=args.timeout)
        res.seconds_each.append(round(child.seconds, 3))
        cpu_each.append(child.cpu_seconds)
        res.peak_mib = max(res.peak_mib, child.peak_mib)
        res.returncode = child.returncode
        if child.timed_out:
            res.errors.append(f"killed after {args.timeout:.0f} s")
            break
        if child.returncode != 0:
            tail = err.read_text(errors="replace").strip().splitlines()[-3:]
            res.errors.append(f"exit {child.returncode}: {' | '.join(tail)}")
            break
        digest = _sha256(out)
        if k == 0:
            res.output_bytes, res.output_sha256 = out.stat().st_size, digest
            check = check_matrix_file(out, pods=pods, port=port.port, protocol=port.protocol)
            res.pairs, res.allowed, res.errors = check.pairs, check.allowed, check.errors
        elif digest != res.output_sha256:
            res.errors.append(f"run {k + 1} wrote different bytes than run 1 (nondeterministic)")
    res.seconds = statistics.median(res.seconds_each)
    res.cpu_seconds = round(statistics.median(cpu_each), 3)
    if not args.keep_outputs:
        out.unlink(missing_ok=True)
        if res.ok:
            err.unlink(missing_ok=True)
    return res


_HEADER = (
    f"{'pods':>6} {'policies':>8} {'port':>10} {'seconds':>8} {'cpu s':>7} {'peak MiB':>9} "
    f"{'pairs':>11} {'allowed':>11}  status"
)


def _row(spec: ClusterSpec, r: PortResult) -> str:
    status = "ok" if r.ok else "INVALID"
    return (
        f"{spec.pods:>6} {spec.policies:>8} {r.protocol + '/' + str(r.port):>10} "
        f"{r.seconds:>8.2f} {r.cpu_seconds:>7.2f} {r.peak_mib:>9.1f} {r.pairs:>11,} "
        f"{r.allowed:>11,}  {status}"
    )


def verdict(run: dict[str, Any]) -> dict[str, Any]:
    """The DESIGN target for one run (only meaningful for the 1,000-pod size)."""
    misses = []
    if len(run["ports"]) != 6:
        misses.append(f"{len(run['ports'])} ports measured, the target is for 6")
    if not run["ok"]:
        misses.append("a run failed or wrote invalid output")
    if run["total_seconds"] > TARGET_SECONDS:
        misses.append(f"{run['total_seconds']:.2f} s > {TARGET_SECONDS:.0f} s")
    if run["max_peak_mib"] > TARGET_MIB:
        misses.append(f"{run['max_peak_mib']:.0f} MiB > {TARGET_MIB:.0f} MiB")
    return {
        "pods": run["spec"]["pods"],
        "ports": len(run["ports"]),
        "max_total_seconds": TARGET_SECONDS,
        "max_peak_mib": TARGET_MIB,
        "total_seconds": run["total_seconds"],
        "peak_mib": run["max_peak_mib"],
        "met": not misses,
        "misses": misses,
    }


def main(argv: list[str] | None = None) -> int:
    """Run every size, print the table, write results JSON, judge the target."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = ap.add_argument
    add("--sizes", default="1000,5000", help="pod counts, comma-separated [%(default)s]")
    add("--namespaces", type=int, default=40, help="[%(default)s]")
    add("--policies", type=int, default=200, help="[%(default)s]")
    add("--nodes", type=int, default=10, help="[%(default)s]")
    add("--seed", type=int, default=1, help="generator seed [%(default)s]")
    add("--ports", type=parse_ports, default=DEFAULT_PORTS, help="[%(default)s]")
    add("--large-ports", type=parse_ports, help="ports above 1,000 pods [--ports]")
    add("--layout", choices=("list", "multidoc"), default="list", help="[%(default)s]")
    add("--netwatch", type=Path, default=REPO / ".venv/bin/netwatch", help="[%(default)s]")
    add("--workdir", type=Path, default=REPO / "benchmarks/results", help="[%(default)s]")
    add("--results", type=Path, help="results JSON [WORKDIR/policy_matrix.json]")
    add("--repeat", type=int, default=1, help="runs per port, median counts [%(default)s]")
    add("--timeout", type=float, default=900.0, help="seconds per run [%(default)s]")
    add("--keep-outputs", action="store_true", help="keep the matrix JSON files")
    add("--no-check", action="store_true", help="exit 0 even if the target is missed")
    add(
        "--as-is-env",
        action="store_true",
        help="pass our environment unchanged (no bytecode cache under WORKDIR/pycache)",
    )
    add("extra", nargs="*", help="after `--`: more `policy matrix` flags")
    args = ap.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--sizes: not a list of integers: {args.sizes!r}")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if not args.netwatch.exists():
        ap.error(f"{args.netwatch} not found (run `make setup`)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    results_path: Path = args.results or args.workdir / "policy_matrix.json"

    spawner = Spawner(env=child_environment(args))  # first, while we are small
    try:
        return _run_all(args, sizes=sizes, results_path=results_path, spawner=spawner)
    finally:
        spawner.close()


def child_environment(args: argparse.Namespace) -> dict[str, str]:
    """The CLI's environment: ours, but with a bytecode cache unless told otherwise.

    A user's installed netwatch has `.pyc` files; a session with PYTHONDONTWRITEBYTECODE
    set (as agent and CI shells often are) would recompile every netwatch module on
    every run (0.05 to 0.1 s per run here) and bill it to the engine. The cache goes
    under the work directory (PYTHONPYCACHEPREFIX), so the source tree is not touched.
    """
    env = dict(os.environ)
    if not args.as_is_env:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(args.workdir / "pycache")
    return env


def _warm_up(args: argparse.Namespace, spawner: Spawner) -> ChildRun:
    """One untimed matrix on a tiny cluster: byte-compiling every module netwatch
    imports (and filling the page cache) must not be billed to the first port."""
    tiny = ClusterSpec(pods=60, namespaces=5, policies=20, nodes=2, seed=args.seed)
    path = args.workdir / "warm-up.yaml"
    write(generate(tiny), path)
    cmd = [str(args.netwatch), "policy", "matrix", "--cluster", str(path), "--port", "80"]
    return spawner.run(
        [*cmd, "-o", "json"],
        stdout=args.workdir / "warm-up.json",
        stderr=args.workdir / "warm-up.stderr",
        timeout=300,
    )


def _run_all(
    args: argparse.Namespace, *, sizes: list[int], results_path: Path, spawner: Spawner
) -> int:
    workdir: Path = args.workdir
    floor = spawner.run(["/bin/true"], stdout=Path(os.devnull), stderr=Path(os.devnull), timeout=30)
    warm = _warm_up(args, spawner)
    if warm.returncode != 0:
        print(
            f"error: warm-up `policy matrix` exited {warm.returncode}; "
            f"see {workdir / 'warm-up.stderr'}",
            file=sys.stderr,
        )
        return 1
    startup = spawner.run(
        [str(args.netwatch), "policy", "matrix", "--help"],
        stdout=Path(os.devnull),
        stderr=Path(os.devnull),
        timeout=120,
    )
    env = environment(args, startup=startup, floor=floor)
    print(
        f"# netwatch {env['git']}, Python {env['python']}, {env['cpus']} CPUs ({env['cpu']})\n"
        f"# bare start-up (`policy matrix --help`): {startup.seconds:.2f} s, "
        f"{startup.peak_mib:.0f} MiB; RSS floor of the spawner: {floor.peak_mib:.0f} MiB\n"
        f"# bytecode cache: {env['bytecode']}"
    )
    load1, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load1 > 0.5 * cpus:
        print(
            f"# warning: load average {load1:.1f} on {cpus} CPUs — other work competes for "
            f"the CPU, wall times will be high; compare `cpu s`, or rerun when idle"
        )
    runs = []
    for pods in sizes:
        spec = ClusterSpec(
            pods=pods,
            namespaces=args.namespaces,
            policies=args.policies,
            nodes=args.nodes,
            seed=args.seed,
        )
        ports = args.ports if pods <= TARGET_PODS else (args.large_ports or args.ports)
        print(_HEADER, flush=True)
        try:
            run = bench_size(spec=spec, ports=ports, args=args, spawner=spawner)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(
            f"{'':>6} {'':>8} {'total':>10} {run['total_seconds']:>8.2f} "
            f"{run['total_cpu_seconds']:>7.2f} {run['max_peak_mib']:>9.1f}\n"
        )
        runs.append(run)

    target = next((verdict(r) for r in runs if r["spec"]["pods"] == TARGET_PODS), None)
    if target is not None:
        word = "PASS" if target["met"] else "FAIL"
        print(
            f"target ({TARGET_PODS} pods, 6 ports, <= {TARGET_SECONDS:.0f} s total, "
            f"<= {TARGET_MIB:.0f} MiB peak): {word} — {target['total_seconds']:.2f} s, "
            f"{target['peak_mib']:.0f} MiB" + "".join(f"; {m}" for m in target["misses"])
        )
    doc = {"environment": env, "target": target, "runs": runs}
    results_path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results: {results_path}")
    if not all(r["ok"] for r in runs):
        return 1
    if target is not None and not target["met"] and not args.no_check:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
