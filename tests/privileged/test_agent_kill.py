"""`kill -9` the agent mid-traffic, twice, and restart it: nothing lost, nothing twice.

One-node lab, `netwatch agent --backend ebpf --state-dir D`. A client pod keeps a long
TCP connection and a UDP flow busy and opens short connections to a server pod, without
pause, while the agent is SIGKILLed at two moments and restarted with the same state
directory. The programs stay attached and the pinned maps keep counting while no agent
runs; the journal holds what a dead agent had taken from the kernel but not yet
counted; the checkpoint holds its counters. Oracle: tcpdump on the server pod's veth
(the veth that reports pod-to-pod connections). The last agent's `/metrics` — scraped
over HTTP inside the node's namespace — must equal it exactly: connections (the long
ones counted once although three agents saw them), bytes and packets per protocol, and
no capture loss.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netwatch import lab
from netwatch.lab.lab import LabHandle
from tests.privileged.ebpf_fixtures import (
    REPO,
    BusyTraffic,
    Tcpdump,
    _stop,
    assert_clean,
    pcap_counts,
    peers,
    require_privileges,
    tmpfs,
)

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

PORT = 9093
LISTEN = "127.0.0.1:9812"


@pytest.fixture(scope="module")
def one_node() -> Iterator[LabHandle]:
    require_privileges()
    with lab.up(REPO / "fixtures" / "lab" / "one-node.yaml") as handle:
        yield handle


class AgentRun:
    """One `netwatch agent` process inside the node's namespace."""

    def __init__(self, handle: LabHandle, state: Path, log: Path) -> None:
        node = handle.nodes["node-1"]
        self.log_path = log
        argv = [
            sys.executable, "-m", "netwatch.cli.main", "agent", "--backend", "ebpf",
            "--netns", node.netns, "--node-name", "node-1",
            "--cluster", str(handle.snapshot_path), "--listen", LISTEN,
            "--drain-interval", "2", "--state-dir", str(state), "--log-level", "debug",
        ]  # fmt: skip
        with log.open("wb") as err:
            self.proc = subprocess.Popen(argv, stderr=err, stdout=subprocess.DEVNULL, cwd=REPO)

    def wait_started(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if '"agent started"' in self.log():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        pytest.fail(f"agent did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def scrape(handle: LabHandle) -> str:
    code = (
        "import sys, urllib.request; "
        f"sys.stdout.write(urllib.request.urlopen('http://{LISTEN}/metrics', timeout=10)"
        ".read().decode())"
    )
    return handle.exec(handle.nodes["node-1"].netns, [sys.executable, "-c", code]).stdout


def port_totals(text: str) -> dict[tuple[str, str], float]:
    """(metric, protocol) → sum over the series of connections to PORT."""
    out: dict[tuple[str, str], float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("dst_port") == str(PORT) and s.name.startswith("netwatch_flow"):
                assert (s.labels["src_workload"], s.labels["dst_workload"]) == ("client", "web")
                out[(s.name, s.labels["protocol"])] += s.value
    return dict(out)


def single(text: str, name: str) -> float:
    values = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]
    assert len(values) == 1, (name, values)
    return values[0]


def test_kill_9_mid_traffic_loses_and_double_counts_nothing(
    one_node: LabHandle, tmp_path: Path
) -> None:
    client_pod, server_pod = one_node.pod("demo/client"), one_node.pod("demo/web[0]")
    node = one_node.nodes["node-1"]
    state = tmp_path / "state"
    runs: list[AgentRun] = []
    dump: Tcpdump | None = None
    try:
        with peers() as p:
            p.server(server_pod.netns, f"0.0.0.0:{PORT}")
            cli = p.client(client_pod.netns)
            runs.append(AgentRun(one_node, state, tmp_path / "agent-1.log"))
            runs[-1].wait_started()
            dump = Tcpdump(node.netns, server_pod.interface or "", tmp_path / "web.pcap")

            traffic = BusyTraffic(cli, server_pod.ip, PORT)
            try:
                for i, alive in enumerate((3.1, 4.7), start=2):
                    time.sleep(alive)  # a checkpoint or two, then die mid-interval
                    runs[-1].kill()
                    time.sleep(0.5)  # the kernel counts on while no agent runs
                    runs.append(AgentRun(one_node, state, tmp_path / f"agent-{i}.log"))
                    runs[-1].wait_started()
                time.sleep(2.5)
            finally:
                traffic.stop()
            time.sleep(1.0)
            truth = pcap_counts(dump.stop())
            dump = None
        time.sleep(4.5)  # two more drains of the last agent
        text = scrape(one_node)
        for run in runs[1:]:
            assert '"checkpoint restored"' in run.log(), run.log()
    finally:
        if dump is not None:
            dump.stop()
        for run in runs:
            if run.proc.poll() is None:
                _stop(run.proc, signal.SIGTERM)
    assert runs[-1].proc.returncode == 0, runs[-1].log()

    assert port_totals(text) == expected_totals(truth)
    assert single(text, "netwatch_capture_lost_total") == 0
    for run in runs:
        assert '"level": "error"' not in run.log(), run.log()
    assert_clean(node.netns)
    assert not list((state / "journal").glob("seg-*.bin")) or all(
        seg.stat().st_size == 0 for seg in (state / "journal").glob("seg-*.bin")
    )
    checkpoint = json.loads((state / "checkpoint.json").read_text())
    assert checkpoint["node"] == "node-1"


def expected_totals(truth: dict[tuple[str, str, int, str, int], list[int]]) -> dict[Any, float]:
    """What `port_totals` must show for the connections tcpdump saw on PORT."""
    expected: dict[tuple[str, str], float] = defaultdict(float)
    connections = 0
    for (proto, *_), (p_out, b_out, p_in, b_in) in _directions(truth):
        connections += 1
        expected[("netwatch_flows_total", proto)] += 1
        expected[("netwatch_flow_bytes_total", proto)] += b_out + b_in
        expected[("netwatch_flow_packets_total", proto)] += p_out + p_in
    assert connections > 20
    return dict(expected)


def _directions(
    truth: dict[tuple[str, str, int, str, int], list[int]],
) -> Iterator[tuple[tuple[str, str, int, str, int], tuple[int, int, int, int]]]:
    """Per connection (client → server on PORT): packets/bytes each way, from the pcap."""
    for key, counts in truth.items():
        proto, sip, sport, dip, dport = key
        if dport != PORT:
            continue
        back = truth.get((proto, dip, dport, sip, sport), [0, 0])
        yield key, (counts[0], counts[1], back[0], back[1])


def test_a_full_state_directory_costs_crash_safety_never_counts(
    one_node: LabHandle, tmp_path: Path
) -> None:
    """The journal and the checkpoint cannot be written (a 16 KiB tmpfs fills within a
    second): the agent says so in its log and keeps counting exactly."""
    client_pod, server_pod = one_node.pod("demo/client"), one_node.pod("demo/web[0]")
    node = one_node.nodes["node-1"]
    with tmpfs(tmp_path / "state", "size=16k") as state, peers() as p:
        p.server(server_pod.netns, f"0.0.0.0:{PORT}")
        cli = p.client(client_pod.netns)
        run = AgentRun(one_node, state, tmp_path / "agent.log")
        try:
            run.wait_started()
            dump = Tcpdump(node.netns, server_pod.interface or "", tmp_path / "web.pcap")
            try:
                traffic = BusyTraffic(cli, server_pod.ip, PORT)
                time.sleep(5.0)
                traffic.stop()
                time.sleep(1.0)
            finally:
                truth = pcap_counts(dump.stop())
            time.sleep(4.5)
            text = scrape(one_node)
        finally:
            _stop(run.proc, signal.SIGTERM)
    assert run.proc.returncode == 0, run.log()
    assert port_totals(text) == expected_totals(truth)
    assert single(text, "netwatch_capture_lost_total") == 0
    assert "journal append failed" in run.log()
    assert "writing the checkpoint failed" in run.log()
    assert_clean(node.netns)
