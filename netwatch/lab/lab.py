"""Bringing a lab up and down, and the handle other code drives it with.

    from netwatch import lab

    with lab.up("fixtures/lab/two-node.yaml") as handle:
        node = handle.nodes["node-1"]             # .netns, .ip, .pod_cidr
        pod = handle.pod("shop/frontend[1]")      # .netns, .ip, .interface, .node
        handle.exec(node, ["tc", "qdisc", "show"])
        manifest = handle.run_traffic()           # the scenario's traffic script

A run is recorded in `/run/netwatch-lab/<id>.json` (the state file, written before
anything is created) and `/run/netwatch-lab/<id>/` (scenario copy, snapshot, server
logs). Any process can `attach(id)` to drive it or `down(id)` to remove it; `down` also
sweeps namespaces named after the run that the state file does not list, so even a run
killed mid-build is cleaned up completely.

The handle that brought a lab up removes it on `down()`, on leaving its `with` block,
on SIGTERM/SIGHUP (when those still have their default disposition) and at interpreter
exit, unless `detach()` handed it over to the state file (`netwatch lab up` does).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import yaml

from netwatch.lab import topology
from netwatch.lab.manifest import TrafficManifest
from netwatch.lab.plan import (
    NETNS_PREFIX,
    LabHost,
    LabNode,
    LabPlan,
    LabPod,
    LabService,
    ResolvedStep,
    fabric_netns_name,
    make_plan,
)
from netwatch.lab.scenario import (
    Scenario,
    ScenarioError,
    TrafficStep,
    load_scenario,
    parse_scenario,
    parse_steps,
)
from netwatch.lab.snapshot import dns_records, write_snapshot
from netwatch.lab.topology import LabError, destroy, list_netns, terminate
from netwatch.lab.traffic import ServerLogs, TrafficError, TrafficRun, log_file_name, log_owners

STATE_DIR = Path(os.environ.get("NETWATCH_LAB_STATE_DIR", "/run/netwatch-lab"))
"""Where runs are recorded; tests point NETWATCH_LAB_STATE_DIR at a temporary directory."""
READY_TIMEOUT = 20.0
STATE_VERSION = 1
_DETACHED: list[subprocess.Popen[bytes]] = []
"""Servers of detached runs: kept referenced so they are never reaped as garbage."""


# ----------------------------------------------------------------------- runs


def up(
    scenario: Scenario | str | os.PathLike[str],
    *,
    state_dir: Path = STATE_DIR,
    python: str = sys.executable,
) -> LabHandle:
    """Build the lab, start its pods' servers, write its snapshot; return its handle.

    Raises ScenarioError before touching anything if the scenario is invalid, and
    LabError (after removing whatever was created) if the system refuses a step.
    """
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(Path(scenario))
    # Check every reference, traffic script included, before creating anything.
    make_plan(scenario, run_id="0000").check_traffic()
    state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    run_id = _reserve_run_id(state_dir)
    try:
        plan = make_plan(scenario, run_id=run_id)
        handle = LabHandle(plan, state_dir=state_dir, python=python, owned=True)
    except BaseException:
        down(run_id, state_dir=state_dir)
        raise
    try:
        handle._build()
    except BaseException:
        handle.down()
        raise
    return handle


def attach(run_id: str, *, state_dir: Path = STATE_DIR, python: str = sys.executable) -> LabHandle:
    """A handle on a lab another process brought up; `down()` on it removes the lab."""
    state = read_state(run_id, state_dir=state_dir)
    if state is None:
        raise LabError(f"no lab run {run_id!r} (no state file in {state_dir})")
    if state.get("status") != "up":
        raise LabError(f"lab run {run_id} is {state.get('status')!r}, not up")
    copy = Path(state["run_dir"]) / "scenario.yaml"
    raw = yaml.safe_load(copy.read_text(encoding="utf-8"))
    scenario = parse_scenario(raw, source=state.get("scenario_source") or str(copy))
    return LabHandle(make_plan(scenario, run_id=run_id), state_dir=state_dir, python=python)


def down(run_id: str, *, state_dir: Path = STATE_DIR) -> list[str]:
    """Remove a run by id: its processes, namespaces, state file and run directory.

    Works on half-built and crashed runs. Returns the namespaces removed; raises
    LabError if any survived.
    """
    state = read_state(run_id, state_dir=state_dir) or {}
    for proc in state.get("processes", []):
        if _start_time(proc["pid"]) == proc.get("start_time"):
            terminate([proc["pid"]])
    prefix = f"{NETNS_PREFIX}{run_id}-"
    names = list(state.get("netns", []))
    names += [n for n in list_netns() if n.startswith(prefix) and n not in names]
    existing = set(list_netns())
    removed = [n for n in names if n in existing]
    leftovers = destroy(names)
    if leftovers:
        raise LabError(f"lab run {run_id}: namespaces survived deletion: {', '.join(leftovers)}")
    shutil.rmtree(state_dir / run_id, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (state_dir / f"{run_id}.json").unlink()
    return removed


def runs(*, state_dir: Path = STATE_DIR) -> list[dict[str, Any]]:
    """The state of every recorded run, with `alive`: all its namespaces still exist."""
    found = []
    existing = set(list_netns()) if state_dir.is_dir() else set()
    for path in sorted(state_dir.glob("*.json")) if state_dir.is_dir() else []:
        state = read_state(path.stem, state_dir=state_dir)
        if state is not None:
            state["alive"] = bool(state.get("netns")) and set(state["netns"]) <= existing
            found.append(state)
    return found


def read_state(run_id: str, *, state_dir: Path = STATE_DIR) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir / f"{run_id}.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _reserve_run_id(state_dir: Path) -> str:
    """A run id no other lab on this machine uses, whatever its state directory.

    The reservation is the fabric namespace itself: `ip netns add` fails if the name
    exists, so two processes can never both own an id — which matters because `down`
    sweeps every namespace named `nw<id>-*`.
    """
    taken = {n[len(NETNS_PREFIX) : len(NETNS_PREFIX) + 4] for n in list_netns()}
    for _ in range(100):
        run_id = secrets.token_hex(2)
        if run_id in taken:
            continue
        state = state_dir / f"{run_id}.json"
        try:
            fd = os.open(state, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        os.write(fd, b"{}")
        os.close(fd)
        try:
            topology.run_command(["ip", "netns", "add", fabric_netns_name(run_id)])
        except LabError:
            state.unlink()
            if fabric_netns_name(run_id) in list_netns():
                continue  # another lab took it between our listing and now
            raise
        return run_id
    raise LabError(f"no free run id in {state_dir}")


def _start_time(pid: int) -> int | None:
    """Process start time in clock ticks (field 22 of /proc/PID/stat): tells a reused PID."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return int(f.read().rpartition(")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return None


# --------------------------------------------------------------------- handle

Target = LabPod | LabNode | LabHost | str
"""Where to run something: a pod, node or internet host object, or a namespace name."""


@dataclass(frozen=True)
class _Server:
    process: subprocess.Popen[bytes]
    netns: str
    role: str
    ready: Path


class LabHandle:
    """A running lab: its topology (`nodes`, `pods`, `services`, `internet`), a way to
    run commands in its namespaces, its traffic driver, and its teardown."""

    def __init__(self, plan: LabPlan, *, state_dir: Path, python: str, owned: bool = False) -> None:
        self.plan = plan
        self.run_id = plan.run_id
        self.state_dir = state_dir
        self.state_path = state_dir / f"{plan.run_id}.json"
        self.run_dir = state_dir / plan.run_id
        self.snapshot_path = self.run_dir / "cluster.yaml"
        """The cluster snapshot (`--cluster` input for every netwatch command)."""
        self.python = python
        self._servers: list[_Server] = []
        self._logs = ServerLogs(self.run_dir / "logs", log_owners(plan))
        self._owned = owned
        self._closed = False
        if owned:
            atexit.register(self._at_exit)
            _signals.hold(self)

    # ------------------------------------------------------------ topology

    @property
    def nodes(self) -> dict[str, LabNode]:
        return {n.name: n for n in self.plan.nodes}

    @property
    def pods(self) -> dict[str, LabPod]:
        """Pods by `namespace/name`."""
        return {p.key: p for p in self.plan.pods}

    @property
    def services(self) -> dict[str, LabService]:
        return {s.key: s for s in self.plan.services}

    @property
    def internet(self) -> LabHost | None:
        return self.plan.internet

    @property
    def fabric_netns(self) -> str:
        return self.plan.fabric_netns

    @property
    def namespaces(self) -> list[str]:
        """Every network namespace of this run."""
        return self.plan.netns_names()

    def pod(self, ref: str) -> LabPod:
        """`ns/pod-name`, `ns/workload` (its first pod) or `ns/workload[i]`."""
        return self.plan.pod(ref)

    def node(self, name: str) -> LabNode:
        return self.plan.node(name)

    # ------------------------------------------------------------- commands

    def exec(
        self,
        target: Target,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside a lab namespace (`ip netns exec`) and capture its output."""
        return subprocess.run(
            self.command(target, argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def popen(self, target: Target, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside a lab namespace; the caller waits for it. `down()` kills
        whatever still runs in the lab's namespaces."""
        return subprocess.Popen(self.command(target, argv), **kwargs)

    def command(self, target: Target, argv: Sequence[str]) -> list[str]:
        """The full command line that runs `argv` inside `target`'s namespace."""
        return ["ip", "netns", "exec", self.netns_of(target), *argv]

    def netns_of(self, target: Target) -> str:
        if isinstance(target, str):
            if target not in self.namespaces:
                raise LabError(f"{target!r} is not a namespace of lab run {self.run_id}")
            return target
        return target.netns

    def conntrack(self, node: str | LabNode) -> str:
        """`conntrack -L` in a node namespace (Service DNAT shows up here)."""
        target = self.node(node) if isinstance(node, str) else node
        return self.exec(target, ["conntrack", "-L"]).stdout

    # -------------------------------------------------------------- traffic

    def resolve(self, step: TrafficStep) -> ResolvedStep:
        return self.plan.resolve(step)

    def start_traffic(
        self, steps: Sequence[TrafficStep | Mapping[str, Any]] | None = None
    ) -> TrafficRun:
        """Start a traffic script (default: the scenario's) and return at once."""
        if steps is None:
            parsed: Sequence[TrafficStep] = self.plan.scenario.traffic
        else:
            dicts = [s for s in steps if not isinstance(s, TrafficStep)]
            from_dicts = iter(parse_steps(dicts, source="traffic steps") if dicts else ())
            parsed = [s if isinstance(s, TrafficStep) else next(from_dicts) for s in steps]
        resolved = [self.resolve(s) for s in parsed]
        return TrafficRun(
            plan=self.plan, steps=resolved, python=self.python, logs=self._logs
        ).start()

    def run_traffic(
        self,
        steps: Sequence[TrafficStep | Mapping[str, Any]] | None = None,
        *,
        check: bool = True,
    ) -> TrafficManifest:
        """Run a traffic script to the end; with `check`, raise TrafficError if any
        connection failed or was not confirmed by its server."""
        manifest = self.start_traffic(steps).wait()
        if check and manifest.failures():
            raise TrafficError(manifest)
        return manifest

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> LabHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def down(self) -> None:
        """Remove the lab: servers, namespaces (and everything in them), files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._release()
        terminate([s.process.pid for s in self._servers if s.process.poll() is None])
        for server in self._servers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.process.wait(timeout=5)
        down(self.run_id, state_dir=self.state_dir)

    def detach(self) -> None:
        """Leave the lab running after this process exits; `down(run_id)` removes it."""
        self._release()
        _DETACHED.extend(s.process for s in self._servers)
        self._closed = True

    def _release(self) -> None:
        if not self._owned:
            return
        self._owned = False
        atexit.unregister(self._at_exit)
        _signals.release(self)

    def _at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.down()

    # ---------------------------------------------------------------- build

    def _build(self) -> None:
        scenario = self.plan.scenario
        self._write_state("creating")
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "scenario.yaml").write_text(
            yaml.safe_dump(dict(scenario.raw), sort_keys=False), encoding="utf-8"
        )
        topology.build(self.plan, reserved=(self.plan.fabric_netns,))
        (self.run_dir / "dns.json").write_text(
            json.dumps(dns_records(self.plan), indent=1), encoding="utf-8"
        )
        write_snapshot(self.plan, self.snapshot_path)
        self._start_servers()
        self._write_state("up")

    def _start_servers(self) -> None:
        logs = self.run_dir / "logs"
        jobs: list[tuple[str, str, str, Sequence[Any], bool]] = [
            (p.key, p.netns, p.ip, p.ports, p.workload.dns) for p in self.plan.pods if p.ports
        ]
        if self.plan.internet is not None:
            inet = self.plan.internet
            jobs.append(("internet", inet.netns, inet.ip, inet.ports, False))
        for owner, netns, ip, ports, dns in jobs:
            name = log_file_name(owner)
            ready = logs / f"{name}.ready"
            argv = [
                self.python, "-m", "netwatch.lab.agentlet", "serve",
                "--ip", ip, "--log", str(logs / name), "--ready", str(ready),
                "--dns-records", str(self.run_dir / "dns.json"),
            ]  # fmt: skip
            for port in ports:
                if port.protocol.value in ("TCP", "UDP"):
                    argv += [f"--{port.protocol.value.lower()}", str(port.port)]
                    if dns and port.port == 53:
                        argv += ["--dns", "53"]
            with open(logs / f"{name}.stderr", "wb") as stderr:
                process = subprocess.Popen(
                    ["ip", "netns", "exec", netns, *argv],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,
                )
            self._servers.append(_Server(process, netns, f"serve {owner}", ready))
        self._write_state("starting")
        deadline = time.monotonic() + READY_TIMEOUT
        waiting = list(self._servers)
        while waiting:
            for server in list(waiting):
                if server.ready.exists():
                    waiting.remove(server)
                elif server.process.poll() is not None:
                    err = server.ready.with_suffix(".stderr").read_text(errors="replace")
                    raise LabError(
                        f"{server.role} exited with status {server.process.returncode}: "
                        + " | ".join(err.strip().splitlines()[-5:])
                    )
            if waiting and time.monotonic() > deadline:
                raise LabError(f"servers not ready after {READY_TIMEOUT}s: {waiting[0].role}")
            time.sleep(0.02)

    def _write_state(self, status: str) -> None:
        plan = self.plan
        state = {
            "version": STATE_VERSION,
            "run_id": self.run_id,
            "status": status,
            "owner_pid": os.getpid(),
            "created": time.time(),
            "scenario": plan.scenario.name,
            "scenario_source": plan.scenario.source,
            "run_dir": str(self.run_dir),
            "snapshot": str(self.snapshot_path),
            "netns": plan.netns_names(),
            "processes": [
                {
                    "pid": s.process.pid,
                    "start_time": _start_time(s.process.pid),
                    "netns": s.netns,
                    "role": s.role,
                }
                for s in self._servers
            ],
            "fabric": {"netns": plan.fabric_netns, "router_ip": plan.router_ip},
            "internet": (
                {"netns": plan.internet.netns, "ip": plan.internet.ip} if plan.internet else None
            ),
            "nodes": [
                {
                    "name": n.name,
                    "netns": n.netns,
                    "ip": n.ip,
                    "pod_cidr": n.pod_cidr,
                    "uplink": n.uplink,
                }
                for n in plan.nodes
            ],
            "pods": [
                {
                    "namespace": p.namespace,
                    "name": p.name,
                    "node": p.node,
                    "netns": p.netns,
                    "ip": p.ip,
                    "interface": p.interface,
                    "host_network": p.host_network,
                    "workload": p.workload.name,
                }
                for p in plan.pods
            ],
            "services": [
                {
                    "namespace": s.namespace,
                    "name": s.name,
                    "cluster_ip": s.cluster_ip,
                    "ports": [
                        {
                            "port": sp.spec.port,
                            "protocol": sp.spec.protocol.value,
                            "endpoints": [f"{b.pod.ip}:{b.port}" for b in sp.backends],
                        }
                        for sp in s.ports
                    ],
                }
                for s in plan.services
            ],
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.state_path)


class _SignalGuard:
    """Turns SIGTERM/SIGHUP into SystemExit while any owned lab is up.

    Their default action kills the process without running `finally` blocks or atexit;
    as an exception they unwind `with` blocks and atexit, which take the labs down.
    Only default dispositions are replaced (an application's own handlers stay), and
    they come back when the last owned lab goes.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self._holders: set[int] = set()
        self._replaced: list[int] = []

    def hold(self, handle: LabHandle) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        if not self._holders:
            for signum in self.SIGNALS:
                if signal.getsignal(signum) is signal.SIG_DFL:
                    signal.signal(signum, self._exit)
                    self._replaced.append(signum)
        self._holders.add(id(handle))

    def release(self, handle: LabHandle) -> None:
        self._holders.discard(id(handle))
        if self._holders or threading.current_thread() is not threading.main_thread():
            return
        for signum in self._replaced:
            if signal.getsignal(signum) is self._exit:
                signal.signal(signum, signal.SIG_DFL)
        self._replaced.clear()

    @staticmethod
    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)


_signals = _SignalGuard()


__all__ = [
    "STATE_DIR",
    "LabError",
    "LabHandle",
    "ScenarioError",
    "attach",
    "down",
    "read_state",
    "runs",
    "up",
]
