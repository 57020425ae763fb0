"""The traffic driver: runs a script of steps in the lab and writes down what happened.

Each step becomes one `agentlet client` process inside the client's namespace (pod,
node or internet host). Steps run in order; a `background` step is started and the
script moves on (a long-lived connection that spans the next steps), and everything is
awaited at the end. When the clients are done, the driver reads the servers' logs
(`agentlet serve` writes one line per connection, datagram and DNS query) and matches
them to the clients' records by connection id — which survives DNAT and masquerade —
to build the `TrafficManifest`: for ClusterIP traffic, the server is the backend the
kernel actually picked.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netwatch.lab.manifest import (
    IP_ICMP_HEADERS,
    IP_UDP_HEADERS,
    ExpectedConnection,
    Side,
    StepSummary,
    TrafficManifest,
    reporting_node,
)
from netwatch.lab.plan import LabPlan, Peer, ResolvedStep
from netwatch.lab.scenario import TrafficKind

VERIFY_TIMEOUT = 5.0
"""How long to wait for servers to log the last connections after the clients finish."""


class TrafficError(RuntimeError):
    """Some scripted connections failed or the servers did not confirm them."""

    def __init__(self, manifest: TrafficManifest) -> None:
        self.manifest = manifest
        failed = manifest.failures()
        lines = [
            f"  {c.step} {c.id}: {c.error or 'not confirmed by the server'}" for c in failed[:10]
        ]
        more = f"\n  ... and {len(failed) - 10} more" if len(failed) > 10 else ""
        super().__init__(
            f"{len(failed)} of {len(manifest.connections)} connection(s) failed:\n"
            + "\n".join(lines)
            + more
        )


def log_file_name(owner: str) -> str:
    """The server log of a pod (`ns/name`) or of the internet host, in the run's log dir."""
    return owner.replace("/", "_") + ".jsonl"


def log_owners(plan: LabPlan) -> dict[str, Peer]:
    """Server log file name → who writes it."""
    owners = {log_file_name(p.key): plan.peer_of_pod(p) for p in plan.pods if p.ports}
    if plan.internet is not None:
        owners[log_file_name("internet")] = Peer(
            "internet", "internet", plan.internet.ip, plan.internet.netns
        )
    return owners


class ServerLogs:
    """Reads the servers' JSON-lines logs incrementally and indexes their records."""

    def __init__(self, log_dir: Path, owners: Mapping[str, Peer]) -> None:
        self._dir = log_dir
        self._owners = owners
        self._offsets: dict[str, int] = {}
        self.by_id: dict[str, list[tuple[Peer, dict[str, Any]]]] = {}
        self.dns: dict[tuple[int, int], list[tuple[Peer, dict[str, Any]]]] = {}

    def poll(self) -> None:
        for name, owner in self._owners.items():
            path = self._dir / name
            try:
                with path.open("rb") as f:
                    f.seek(self._offsets.get(name, 0))
                    data = f.read()
            except FileNotFoundError:
                continue
            end = data.rfind(b"\n") + 1
            self._offsets[name] = self._offsets.get(name, 0) + end
            for line in data[:end].splitlines():
                record = json.loads(line)
                if record.get("dns"):
                    key = (record["txid"], record["peer"][1])
                    self.dns.setdefault(key, []).append((owner, record))
                elif record.get("id"):
                    self.by_id.setdefault(record["id"], []).append((owner, record))


@dataclass
class _Outcome:
    resolved: ResolvedStep
    process: subprocess.Popen[str]
    stderr: Any
    started: float
    records: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    ended: float = 0.0
    reader: threading.Thread | None = None


class TrafficRun:
    """A traffic script in progress; `wait()` returns its manifest.

    Created by `LabHandle.start_traffic`; steps start in a background thread.
    """

    def __init__(
        self,
        *,
        plan: LabPlan,
        steps: Sequence[ResolvedStep],
        python: str,
        logs: ServerLogs,
    ) -> None:
        self._plan = plan
        self._steps = list(steps)
        self._python = python
        self._logs = logs
        self._cond = threading.Condition()
        self._connected: dict[str, list[dict[str, Any]]] = {}
        self._outcomes: list[_Outcome] = []
        self._failure: BaseException | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._script, name="lab-traffic", daemon=True)

    def start(self) -> TrafficRun:
        self._thread.start()
        return self

    # ------------------------------------------------------------- observers

    def wait_connected(self, step: str, count: int = 1, timeout: float = 10.0) -> list[str]:
        """Block until `count` TCP connections of `step` are open; their ids."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._connected.get(step, [])) < count:
                left = deadline - time.monotonic()
                if left <= 0 or (self._failure is not None) or not self._thread.is_alive():
                    raise TimeoutError(
                        f"step {step}: {len(self._connected.get(step, []))} of {count} "
                        "connection(s) open"
                    )
                self._cond.wait(min(left, 0.1))
            return [e["id"] for e in self._connected[step]]

    def wait(self, timeout: float | None = None) -> TrafficManifest:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("traffic script still running")
        if self._failure is not None:
            raise self._failure
        return self._manifest()

    def cancel(self) -> None:
        """Stop every client still running (their connections are reported as failed)."""
        self._cancelled = True
        for outcome in self._outcomes:
            _kill(outcome.process)

    # ----------------------------------------------------------------- script

    def _script(self) -> None:
        try:
            pending: list[_Outcome] = []
            for resolved in self._steps:
                if self._cancelled:
                    break
                outcome = self._spawn(resolved)
                if resolved.step.background:
                    pending.append(outcome)
                else:
                    self._finish(outcome)
            for outcome in pending:
                self._finish(outcome)
        except BaseException as exc:  # re-raised by wait()
            self._failure = exc
            self.cancel()
        finally:
            with self._cond:
                self._cond.notify_all()

    def _spawn(self, resolved: ResolvedStep) -> _Outcome:
        step = resolved.step
        spec = {
            "kind": step.kind.value,
            "target": [resolved.target_ip, resolved.target_port],
            "request": step.request,
            "response": step.response,
            "rounds": step.rounds,
            "connections": step.connections,
            "interval": step.interval,
            "hold": step.hold,
            "rate": step.rate,
            "duration": step.duration,
            "query": step.query,
            "client_port": step.client_port,
            "id_prefix": secrets.token_hex(4),
        }
        argv = [
            "ip", "netns", "exec", resolved.client.netns,
            self._python, "-m", "netwatch.lab.agentlet", "client", "--spec", json.dumps(spec),
        ]  # fmt: skip
        stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
        outcome = _Outcome(resolved, process, stderr, time.time())
        outcome.reader = threading.Thread(target=self._read, args=(outcome,), daemon=True)
        outcome.reader.start()
        self._outcomes.append(outcome)
        return outcome

    def _read(self, outcome: _Outcome) -> None:
        assert outcome.process.stdout is not None
        for line in outcome.process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "connected":
                with self._cond:
                    self._connected.setdefault(outcome.resolved.step.name, []).append(event)
                    self._cond.notify_all()
            elif event.get("event") == "result":
                outcome.records = event["connections"]

    def _finish(self, outcome: _Outcome) -> None:
        step = outcome.resolved.step
        budget = 30.0 + step.duration + step.hold + step.rounds * step.interval * 1.5
        try:
            outcome.process.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            _kill(outcome.process)
            outcome.process.wait()
            outcome.error = f"client still running after {budget:.0f}s; killed"
        assert outcome.reader is not None
        outcome.reader.join()
        if outcome.process.stdout is not None:
            outcome.process.stdout.close()
        outcome.ended = time.time()
        if outcome.process.returncode != 0 and outcome.error is None:
            outcome.stderr.seek(0)
            detail = outcome.stderr.read().strip().splitlines()[-5:]
            outcome.error = f"client exited with status {outcome.process.returncode}: " + (
                " | ".join(detail) or "no output"
            )
        outcome.stderr.close()

    # --------------------------------------------------------------- manifest

    def _manifest(self) -> TrafficManifest:
        deadline = time.monotonic() + VERIFY_TIMEOUT
        while True:
            self._logs.poll()
            built = [self._connections(o) for o in self._outcomes]
            done = all(c.verified or c.error for conns in built for c in conns)
            if done or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        steps = []
        for outcome, conns in zip(self._outcomes, built, strict=True):
            step = outcome.resolved.step
            rate = None
            if step.kind is TrafficKind.CHURN and len(outcome.records) > 1:
                starts = sorted(r["started"] for r in outcome.records)
                span = starts[-1] - starts[0]
                rate = (len(starts) - 1) / span if span > 0 else None
            steps.append(
                StepSummary(
                    name=step.name,
                    kind=step.kind.value,
                    started=outcome.started,
                    ended=outcome.ended,
                    connections=len(conns),
                    failed=sum(1 for c in conns if c.error or not c.verified),
                    rate=rate,
                )
            )
        return TrafficManifest(
            run_id=self._plan.run_id,
            scenario=self._plan.scenario.name,
            steps=tuple(steps),
            connections=tuple(c for conns in built for c in conns),
        )

    def _connections(self, outcome: _Outcome) -> list[ExpectedConnection]:
        resolved = outcome.resolved
        if outcome.error and not outcome.records:
            # The client never reported: one failed entry stands for the whole step.
            return [self._entry(resolved, {"id": "", "local": None, "error": outcome.error})]
        return [self._entry(resolved, record) for record in outcome.records]

    def _entry(self, resolved: ResolvedStep, record: Mapping[str, Any]) -> ExpectedConnection:
        step = resolved.step
        kind = step.kind
        local = record.get("local") or [resolved.client.ip, 0]
        client = Side(resolved.client, 0 if kind is TrafficKind.ICMP else int(local[1]))
        server = Side(*resolved.servers[0])
        error = record.get("error")
        sent, received = int(record.get("sent", 0)), int(record.get("received", 0))
        packets_out = packets_in = ip_out = ip_in = None
        view: dict[str, Any] | None = None
        verified = False
        extra: dict[str, Any] = {}
        if kind in (TrafficKind.TCP, TrafficKind.CHURN):
            seen = self._logs.by_id.get(record.get("id", ""), [])
            if len(seen) == 1:
                owner, view = seen[0]
                server = Side(owner, int(view["local"][1]))
                verified = (
                    error is None
                    and sent == step.request * step.rounds
                    and received == step.response * step.rounds
                    and view["received"] == sent
                    and view["sent"] == received
                )
        elif kind in (TrafficKind.UDP, TrafficKind.DNS):
            packets_out = int(record.get("packets_sent", 0))
            packets_in = int(record.get("packets_received", 0))
            ip_out = sent + IP_UDP_HEADERS * packets_out
            ip_in = received + IP_UDP_HEADERS * packets_in
            if kind is TrafficKind.UDP:
                seen = self._logs.by_id.get(record.get("id", ""), [])
                expected_in = step.rounds if step.response else 0
            else:
                seen = self._logs.dns.get((record.get("txid", -1), client.port), [])
                expected_in = 1
                extra["dns"] = {
                    "query": step.query,
                    "txid": record.get("txid"),
                    "rcode": record.get("rcode"),
                    "answers": record.get("answers", []),
                }
            if seen:
                owner, first = seen[0]
                server = Side(owner, int(first["local"][1]))
                view = {
                    "peer": first["peer"],
                    "local": first["local"],
                    "datagrams": len(seen),
                    "received": sum(r["received"] for _, r in seen),
                    "sent": sum(r["sent"] for _, r in seen),
                }
                verified = (
                    error is None
                    and len(seen) == packets_out
                    and packets_out == (step.rounds if kind is TrafficKind.UDP else 1)
                    and packets_in == expected_in
                    and view["received"] == sent
                    and view["sent"] == received
                )
        else:  # ICMP: the kernel answers; the client's count of replies is the evidence
            packets_out = int(record.get("packets_sent", 0))
            packets_in = int(record.get("packets_received", 0))
            ip_out = sent + IP_ICMP_HEADERS * packets_out
            ip_in = received + IP_ICMP_HEADERS * packets_in
            extra["icmp_id"] = record.get("icmp_id")
            verified = error is None and packets_in == packets_out == step.rounds
        if view is None and resolved.service is not None:
            # No server confirmed it, so which backend DNAT chose is unknown.
            svc = resolved.service
            server = Side(Peer("service", svc.name, svc.ip, ""), svc.port)
        return ExpectedConnection(
            id=str(record.get("id", "")),
            step=step.name,
            kind=kind.value,
            protocol=resolved.protocol.value,
            client=client,
            server=server,
            service=resolved.service,
            rounds=int(record.get("rounds", step.rounds)),
            payload_out=sent,
            payload_in=received,
            packets_out=packets_out,
            packets_in=packets_in,
            ip_bytes_out=ip_out,
            ip_bytes_in=ip_in,
            first_seen=float(record.get("started", 0.0)),
            last_seen=float(record.get("ended", 0.0)),
            reporter=reporting_node(client.peer, server.peer),
            verified=verified,
            error=error,
            server_view=view,
            extra=extra,
        )


def _kill(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
