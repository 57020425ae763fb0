"""`netwatch demo`: the live demo (`sudo make demo`) on the netns lab.

Brings up the bundled two-node lab (`fixtures/lab/two-node.yaml`), starts one
`netwatch agent --backend ebpf` inside each lab node's network namespace (listening on
the node's InternalIP, so nothing listens or connects outside the lab), runs the
scenario's scripted traffic, waits until each agent has drained the connections it
reports (the manifest's counted-once `reporter`), then reads each agent's
`/api/findings`, `/api/flows` and `/api/suggestions` and prints a report. The agents'
HTTP APIs are reached from inside the lab (`ip netns exec`), never from the host.

Everything — agents, lab namespaces, files under the lab's run directory — is removed on
exit, on Ctrl-C and on errors; `--keep` leaves it up until Ctrl-C. The suggested
policies are written per node to `--out` (default: a new temporary directory), which
is kept.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from netwatch import lab
from netwatch.cli.common import BadInput, stdout_console
from netwatch.lab.lab import LabHandle

SCENARIO = Path(__file__).resolve().parents[2] / "fixtures" / "lab" / "two-node.yaml"
AGENT_PORT = 9810
DRAIN_INTERVAL = 0.5
SUGGEST_INTERVAL = 1.0
START_TIMEOUT = 60.0
DRAIN_TIMEOUT = 20.0


class DemoError(click.ClickException):
    """The demo could not complete (exit 1); the lab is torn down before this shows."""


class _Agent:
    def __init__(self, handle: LabHandle, node: str, log_dir: Path) -> None:
        self.handle = handle
        self.node = handle.nodes[node]
        self.url = f"http://{self.node.ip}:{AGENT_PORT}"
        self.log_path = log_dir / f"agent-{node}.log"
        argv = [
            sys.executable, "-m", "netwatch.cli.main", "agent", "--backend", "ebpf",
            "--netns", self.node.netns, "--node-name", node,
            "--cluster", str(handle.snapshot_path),
            "--listen", f"{self.node.ip}:{AGENT_PORT}",
            "--drain-interval", str(DRAIN_INTERVAL),
            "--suggest-interval", str(SUGGEST_INTERVAL),
        ]  # fmt: skip
        with self.log_path.open("wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)

    def get(self, path: str) -> tuple[int, str]:
        """GET a path of this agent's API from inside the node namespace: (status, body)."""
        code = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n"
            f"    r = urllib.request.urlopen({self.url + path!r}, timeout=5)\n"
            "    status, body = r.status, r.read()\n"
            "except urllib.error.HTTPError as e:\n"
            "    status, body = e.code, e.read()\n"
            "sys.stdout.write(str(status) + '\\n' + body.decode())\n"
        )
        result = self.handle.exec(self.node, [sys.executable, "-c", code], check=False)
        if result.returncode != 0:
            return 0, result.stderr if isinstance(result.stderr, str) else ""
        status, _, body = str(result.stdout).partition("\n")
        return int(status), body

    def json(self, path: str) -> dict[str, Any]:
        status, body = self.get(path)
        if status != 200:
            raise DemoError(f"{self.url}{path} answered {status}: {body.strip()[:200]}")
        document: dict[str, Any] = json.loads(body)
        return document

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _check_environment() -> None:
    if os.geteuid() != 0:
        raise BadInput(
            "netwatch demo needs root (network namespaces, iptables, eBPF): "
            "run `sudo make demo` (or `make demo-offline` for the offline walkthrough)"
        )
    missing = [t for t in ("ip", "iptables", "conntrack", "tc") if shutil.which(t) is None]
    if missing:
        raise BadInput(f"missing tools: {', '.join(missing)} (`sudo make setup` installs them)")
    if importlib.util.find_spec("bcc") is None:
        raise BadInput("bcc is not installed (python3-bpfcc; `sudo make setup`)")


@contextmanager
def _step(console: Console, text: str) -> Iterator[None]:
    start = time.monotonic()
    with console.status(f"[bold]{text}…"):
        yield
    console.print(f"[green]✓[/] {text} [dim]({time.monotonic() - start:.1f} s)[/]")


def _wait_ready(agents: list[_Agent]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    pending = list(agents)
    while pending:
        for agent in list(pending):
            if agent.proc.poll() is not None:
                raise DemoError(
                    f"the agent on {agent.node.name} exited with {agent.proc.returncode}:\n"
                    + agent.log_tail()
                )
            if agent.get("/readyz")[0] == 200:
                pending.remove(agent)
        if pending and time.monotonic() > deadline:
            names = ", ".join(a.node.name for a in pending)
            raise DemoError(f"agents not ready after {START_TIMEOUT:.0f} s: {names}")
        if pending:
            time.sleep(0.3)


def _flow_count(agent: _Agent) -> int:
    return sum(int(row["flows"]) for row in agent.json("/api/flows")["flows"])


def _wait_drained(agents: list[_Agent], expected: Counter[str]) -> None:
    """Until each agent counts at least the connections it reports, then one more
    suggestion cycle (so /api/suggestions covers them)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    pending = list(agents)
    while pending and time.monotonic() < deadline:
        pending = [a for a in pending if _flow_count(a) < expected[a.node.name]]
        if pending:
            time.sleep(DRAIN_INTERVAL)
    time.sleep(SUGGEST_INTERVAL + 2 * DRAIN_INTERVAL)


def _findings_table(findings: list[dict[str, Any]]) -> Table:
    table = Table(
        title="Findings (unexpected flows: traffic no policy allows)", title_justify="left"
    )
    for column in ("node", "source", "destination", "port", "flows", "bytes"):
        table.add_column(column, justify="right" if column in ("flows", "bytes") else "left")
    rows = 0
    for doc in findings:
        for flow in doc["unexpected_flows"]:
            table.add_row(
                doc["node"],
                _peer(flow["src_namespace"], flow["src_workload"]),
                _peer(flow["dst_namespace"], flow["dst_workload"]),
                f"{flow['dst_port']}/{flow['protocol']}",
                str(flow["flows"]),
                str(flow["bytes"]),
            )
            rows += 1
    if not rows:
        table.add_row("—", "no unexpected flows", "", "", "", "")
    return table


def _peer(namespace: str, workload: str) -> str:
    return f"{namespace}/{workload}" if namespace else workload


def _report(
    console: Console,
    findings: list[dict[str, Any]],
    flows: list[dict[str, Any]],
    written: list[Path],
    out: Path,
    agents: list[_Agent],
) -> None:
    console.print()
    console.print(_findings_table(findings))
    # Counts stay per node: static kinds (lint of the shared inventory) are the same on
    # every node and would double when summed; unused-rule is per node's traffic.
    kinds = sorted({kind for doc in findings for kind in doc["counts"]})
    if kinds:
        counts = Table(title="Finding counts per node", title_justify="left")
        counts.add_column("kind")
        for doc in findings:
            counts.add_column(doc["node"], justify="right")
        for kind in kinds:
            counts.add_row(kind, *(str(doc["counts"].get(kind, 0)) for doc in findings))
        console.print(counts)
    unused = (
        set.intersection(
            *(
                {
                    (r["namespace"], r["policy"], r["direction"], r["rule"])
                    for r in doc["unused_rules"]
                }
                for doc in findings
            )
        )
        if findings
        else set()
    )
    if unused:
        names = [
            f"{ns}/{policy} {direction}[{rule}]" for ns, policy, direction, rule in sorted(unused)
        ]
        console.print(f"rules no node saw traffic for: {', '.join(names)}")

    verdicts: Counter[str] = Counter()
    for doc in flows:
        for row in doc["flows"]:
            verdicts[row["verdict"]] += int(row["flows"])
    table = Table(title="Connections by verdict", title_justify="left")
    table.add_column("verdict")
    table.add_column("connections", justify="right")
    for verdict, n in sorted(verdicts.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(verdict, str(n))
    table.add_row("[bold]total[/]", f"[bold]{sum(verdicts.values())}[/]")
    console.print()
    console.print(table)

    console.print()
    console.print(f"[bold]Suggested policies[/] (each node's view) written to: {out}")
    for path in written:
        console.print(f"  {path.name}")
    if not written:
        console.print("  (no agent had suggestions)")
    console.print()
    console.print("[bold]Metrics[/] (inside the lab; reach them with `ip netns exec`):")
    for agent in agents:
        console.print(
            f"  {agent.node.name}: {agent.url}/metrics  [dim](netns {agent.node.netns})[/]"
        )
    console.print()
    console.print(
        "hint: `netwatch policy lint --cluster DIR` or `kubectl apply --dry-run=server -f` "
        "the suggestions; `sudo netwatch demo --keep` leaves the lab up to explore."
    )


def _keep(console: Console, handle: LabHandle, agents: list[_Agent]) -> None:
    console.print()
    console.print(f"[bold]Lab {handle.run_id} is up[/]; query it (as root) with, e.g.:")
    for agent in agents:
        console.print(f"  ip netns exec {agent.node.netns} curl -s {agent.url}/api/findings")
    first = agents[0]
    console.print(
        f"  ip netns exec {first.node.netns} curl -s {first.url}/metrics | grep netwatch_flows"
    )
    console.print(f"  netwatch policy lint --cluster {handle.snapshot_path}")
    console.print("Press Ctrl-C to tear everything down.")
    try:
        while all(a.proc.poll() is None for a in agents):
            time.sleep(0.5)
        console.print("[yellow]an agent exited; tearing down[/]")
    except KeyboardInterrupt:
        console.print()


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for the suggested policies (default: a new temporary directory).",
)
@click.option("--keep", is_flag=True, help="Keep the lab and agents running until Ctrl-C.")
def demo(out: Path | None, keep: bool) -> None:
    """Live demo: two-node netns lab, an eBPF agent per node, scripted traffic, a report.

    Needs root. Everything is torn down at the end (also on Ctrl-C or errors).
    """
    _check_environment()
    console = stdout_console()
    out = out if out is not None else Path(tempfile.mkdtemp(prefix="netwatch-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="netwatch-demo-logs-"))
    started = time.monotonic()
    agents: list[_Agent] = []
    handle: LabHandle | None = None
    try:
        with _step(console, "Lab up: two nodes, pods, Services, an internet host"):
            handle = lab.up(SCENARIO)
        console.print(
            f"  lab run {handle.run_id}: {len(handle.pods)} pods on {len(handle.nodes)} nodes"
        )
        with _step(console, "Agents up (eBPF capture in each node) and ready"):
            agents = [_Agent(handle, name, log_dir) for name in handle.nodes]
            _wait_ready(agents)
        with _step(console, "Scripted traffic (TCP, UDP, DNS, ICMP, internet, churn)"):
            manifest = handle.run_traffic(check=False)
        expected = Counter(c.reporter for c in manifest.connections if c.reporter)
        with _step(
            console, f"Waiting for the agents to drain {sum(expected.values())} connections"
        ):
            _wait_drained(agents, expected)
        with _step(console, "Collecting findings, flows and suggestions"):
            findings = [a.json("/api/findings") for a in agents]
            flows = [a.json("/api/flows") for a in agents]
            written = []
            for agent in agents:
                status, body = agent.get("/api/suggestions")
                if status == 200 and not body.startswith("# no suggestions"):
                    path = out / f"suggested-{agent.node.name}.yaml"
                    path.write_text(body, encoding="utf-8")
                    written.append(path)
        failures = manifest.failures()
        if failures:
            console.print(f"[yellow]{len(failures)} scripted connection(s) failed[/]")
        _report(console, findings, flows, written, out, agents)
        console.print(f"[dim]demo took {time.monotonic() - started:.0f} s[/]")
        if keep:
            _keep(console, handle, agents)
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted; tearing down[/]")
        raise SystemExit(130) from None
    finally:
        with console.status("Tearing down agents and lab…"):
            for agent in agents:
                agent.stop()
            if handle is not None:
                handle.down()
            shutil.rmtree(log_dir, ignore_errors=True)
        console.print("[green]✓[/] torn down: agents stopped, lab namespaces removed")
