"""The agent end to end: two-node lab, one `netwatch agent --backend ebpf` per node,
a real Prometheus (Debian's 2.42) scraping both, the lab's scripted traffic.

Prometheus runs inside the lab's fabric namespace (listening on the fabric bridge) and
scrapes each agent on its node's InternalIP, so nothing listens or connects outside
the lab. Oracles, independent of the agent: the traffic manifest (which connections,
which node must report each — the counted-once rule), tcpdump on every pod veth (exact
packets and whole-IP-packet bytes), the lab plan (workload names) and the offline policy
engine over the lab's snapshot (verdicts). Prometheus's `sum by (labels)` of each flow
family must equal those per (workload pair, port, protocol, verdict), exactly.

Then, against the same Prometheus: every PromQL expression of `dashboards/*.json` (Grafana
variables substituted as `tests/unit/test_dashboards.py` does) returns data, and
`netwatch suggest --prometheus` (run inside the fabric namespace) proposes a set that,
judged by the verifier alone (`--mode replace`), allows every scripted connection that
was allowed — all but those with an external end, which metrics cannot name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netwatch import lab
from netwatch.core.attribution import Attributed, Attributor
from netwatch.core.flow import Connection, Orientation
from netwatch.core.identity import IdentityKind
from netwatch.core.model import Protocol
from netwatch.core.observed import Observations
from netwatch.core.verify import check_policies
from netwatch.k8s.snapshot import load_cluster
from netwatch.lab.lab import LabHandle
from netwatch.lab.manifest import ExpectedConnection
from netwatch.lab.plan import Peer
from tests.privileged.ebpf_fixtures import (
    REPO,
    Tcpdump,
    _stop,
    assert_clean,
    pcap_counts,
    require_privileges,
    view,
)
from tests.unit.test_dashboards import DASHBOARDS, expressions, load, substituted

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

AGENT_PORT = 9810
PROMETHEUS_PORT = 9090
FLOW_KEY = ("src_namespace", "src_workload", "dst_namespace", "dst_workload", "dst_port",
            "protocol", "verdict")  # fmt: skip
RULE_KEY = ("namespace", "policy", "direction", "rule")
Key = tuple[str, ...]


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[LabHandle]:
    require_privileges()
    if shutil.which("prometheus") is None:
        message = "prometheus is not installed (make setup installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with lab.up(REPO / "fixtures" / "lab" / "two-node.yaml") as handle:
        yield handle


class AgentProcess:
    def __init__(self, handle: LabHandle, node: str, tmp_path: Path) -> None:
        lab_node = handle.nodes[node]
        self.err_path = tmp_path / f"agent-{node}.log"
        argv = [
            sys.executable, "-m", "netwatch.cli.main", "agent", "--backend", "ebpf",
            "--netns", lab_node.netns, "--node-name", node,
            "--cluster", str(handle.snapshot_path),
            "--listen", f"{lab_node.ip}:{AGENT_PORT}", "--drain-interval", "0.5",
        ]  # fmt: skip
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(argv, stderr=err, stdout=subprocess.DEVNULL, cwd=REPO)

    def wait_started(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if '"agent started"' in self.err_path.read_text():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.1)
        pytest.fail(f"agent did not start:\n{self.log()}")

    def log(self) -> str:
        return self.err_path.read_text()


class Prometheus:
    def __init__(self, handle: LabHandle, tmp_path: Path) -> None:
        self.handle = handle
        self.address = f"{handle.plan.router_ip}:{PROMETHEUS_PORT}"  # the fabric bridge
        targets = [f"{n.ip}:{AGENT_PORT}" for n in handle.nodes.values()]
        config = tmp_path / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {"job_name": "netwatch", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        self.err_path = tmp_path / "prometheus.log"
        with self.err_path.open("wb") as err:
            self.proc = handle.popen(
                handle.fabric_netns,
                ["prometheus", f"--config.file={config}",
                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address={self.address}"],
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"http://{self.address}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        code = (
            "import sys, urllib.request; "
            f"sys.stdout.write(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
        )
        result = self.handle.exec(
            self.handle.fabric_netns, [sys.executable, "-c", code], check=False
        )
        if result.returncode != 0:
            return []
        doc = json.loads(result.stdout)
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])

    def by_key(self, metric: str, labels: tuple[str, ...] = FLOW_KEY) -> dict[Key, float]:
        rows = self.query(f"sum by ({','.join(labels)}) ({metric}) > 0")
        return {tuple(r["metric"].get(k, "") for k in labels): float(r["value"][1]) for r in rows}

    def wait_scraping(self, targets: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            if len(self.query("up == 1")) == targets:
                return
            time.sleep(0.2)
        pytest.fail(f"Prometheus never scraped all {targets} agents:\n{self.err_path.read_text()}")

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM)


def _peer(handle: LabHandle, peer: Peer) -> tuple[str, str]:
    if peer.kind == "internet":
        return ("", "world")
    if peer.kind == "node":
        return ("", f"node:{peer.name}")
    pod = handle.pods[peer.name]
    if pod.host_network:  # its traffic is node traffic (DESIGN §3.7), labelled as the node
        return ("", f"node:{pod.node}")
    return (pod.namespace, pod.workload.name)


def _endpoints(c: ExpectedConnection) -> tuple[tuple[str, int], tuple[str, int]]:
    if c.protocol == "ICMP":
        return (c.client.peer.ip, int(c.extra["icmp_id"])), (c.server.peer.ip, 8)
    return (c.client.peer.ip, c.client.port), (c.server.peer.ip, c.server.port)


class Expected:
    def __init__(self) -> None:
        self.flows: dict[Key, int] = defaultdict(int)
        self.bytes: dict[Key, int] = defaultdict(int)
        self.packets: dict[Key, int] = defaultdict(int)
        self.rule_hits: dict[Key, int] = defaultdict(int)


def _attribute(attributor: Attributor, c: ExpectedConnection) -> Attributed:
    client, server = _endpoints(c)
    return attributor.attribute(
        Connection(
            client_ip=client[0], client_port=client[1], server_ip=server[0],
            server_port=server[1], protocol=Protocol(c.protocol), first_seen=c.first_seen,
            last_seen=c.last_seen, orientation=Orientation.SYN,
        )
    )  # fmt: skip


def expected_series(
    handle: LabHandle, connections: list[ExpectedConnection], pcaps: dict[str, Path]
) -> Expected:
    attributor = Attributor.from_cluster(load_cluster([handle.snapshot_path]).cluster)
    counts = {veth: pcap_counts(p) for veth, p in pcaps.items()}
    out = Expected()
    for c in connections:
        if c.reporter is None:
            continue
        client, server = _endpoints(c)
        a = _attribute(attributor, c)
        key = (*_peer(handle, c.client.peer), *_peer(handle, c.server.peer), str(a.port),
               c.protocol, a.verdict.value)  # fmt: skip
        # the reporter sees the server pod's veth, else the client pod's
        side = (
            c.server.peer
            if c.server.peer.node == c.reporter and c.server.peer.interface
            else c.client.peer
        )
        assert side.interface is not None
        p_out, b_out, p_in, b_in = view(
            counts[side.interface], protocol=c.protocol, client=client, server=server
        )
        out.flows[key] += 1
        out.bytes[key] += b_out + b_in
        out.packets[key] += p_out + p_in
        if a.decision is not None:
            for ref in (*a.decision.egress.allowed_by, *a.decision.ingress.allowed_by):
                namespace, _, name = str(ref.policy).partition("/")
                out.rule_hits[(namespace, name, ref.direction.value, str(ref.rule))] += 1
    return out


def test_prometheus_sees_exactly_the_scripted_traffic(two_nodes: LabHandle, tmp_path: Path) -> None:
    start = time.monotonic()
    agents: dict[str, AgentProcess] = {}
    prometheus: Prometheus | None = None
    dumps = {}
    try:
        agents = {name: AgentProcess(two_nodes, name, tmp_path) for name in two_nodes.nodes}
        for agent in agents.values():
            agent.wait_started(start + 60)
        prometheus = Prometheus(two_nodes, tmp_path)
        # Every series must exist before the traffic: a counter first scraped with its
        # final value has no increase (the dashboards' rate()/increase() panels).
        prometheus.wait_scraping(len(agents), start + 60)
        dumps = {
            pod.interface: Tcpdump(
                two_nodes.nodes[pod.node].netns, pod.interface, tmp_path / f"{pod.interface}.pcap"
            )
            for pod in two_nodes.pods.values()
            if pod.interface
        }
        manifest = two_nodes.run_traffic()
        pcaps = {veth: d.stop() for veth, d in dumps.items()}
        dumps = {}
        expected = expected_series(two_nodes, manifest.connections, pcaps)
        verdicts = {key[-1] for key in expected.flows}
        assert {"allowed", "denied", "unrestricted"} <= verdicts, expected.flows
        want = {
            "netwatch_flows_total": expected.flows,
            "netwatch_flow_bytes_total": expected.bytes,
            "netwatch_flow_packets_total": expected.packets,
        }
        # Wait until both agents' last drains were scraped (or the deadline), then compare.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = {metric: prometheus.by_key(metric) for metric in want}
            if got == want:
                break
            time.sleep(0.5)
        for metric, series in want.items():
            assert prometheus.by_key(metric) == series, metric
        hits = prometheus.by_key("netwatch_policy_rule_hits_total", RULE_KEY)
        assert hits == expected.rule_hits
        assert len(prometheus.query("up == 1")) == len(agents)
        check_dashboards(prometheus)
        check_suggestions(two_nodes, prometheus, manifest.connections, tmp_path)
        for agent in agents.values():
            assert '"level": "error"' not in agent.log(), agent.log()
    finally:
        for d in dumps.values():
            d.stop()
        if prometheus is not None:
            prometheus.stop()
        for agent in agents.values():
            _stop(agent.proc, signal.SIGTERM)
    for name, agent in agents.items():
        assert agent.proc.returncode == 0, agent.log()
        assert_clean(two_nodes.nodes[name].netns)
    assert time.monotonic() - start < 120


def check_dashboards(prometheus: Prometheus) -> None:
    """Every dashboard expression returns data for the scripted traffic."""
    empty = []
    for path in DASHBOARDS:
        for where, expr in expressions(load(path)):
            if not prometheus.query(substituted(expr)):
                empty.append(f"{path.name} {where}: {expr}")
    assert not empty, "expressions without data:\n" + "\n".join(empty)


def check_suggestions(
    handle: LabHandle, prometheus: Prometheus, connections: list[ExpectedConnection], tmp_path: Path
) -> None:
    """`suggest --prometheus` admits every scripted connection that was allowed."""
    out = tmp_path / "suggested"
    result = handle.exec(
        handle.fabric_netns,
        [sys.executable, "-m", "netwatch.cli.main", "suggest",
         "--cluster", str(handle.snapshot_path), "--prometheus", f"http://{prometheus.address}",
         "--window", "10m", "--out", str(out)],
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "verified: all" in result.stderr, result.stderr
    suggested = load_cluster([out])
    assert suggested.problems == ()
    assert suggested.cluster.policies
    attributor = Attributor.from_cluster(load_cluster([handle.snapshot_path]).cluster)
    observed = Observations()
    for c in connections:
        if c.reporter is None:
            continue
        observed.add(_attribute(attributor, c))  # `world` ones too: whole-range rules
    ends = [(o.sample.client.kind, o.sample.server.kind) for o in observed]
    assert any(IdentityKind.EXTERNAL in kinds for kinds in ends)  # the script reaches out
    verification = check_policies(
        observed,
        attributor=attributor,
        policies=suggested.cluster.policies,
        replace=True,
        include_denied=False,
    )
    assert verification.checked > 0
    assert verification.ok, [
        (d.observed.sample.client.name, d.observed.sample.server.name, d.observed.sample.port)
        for d in verification.denials
    ]
