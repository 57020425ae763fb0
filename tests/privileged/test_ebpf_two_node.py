"""Counted once, cluster-wide: two nodes, one capture each, every connection exactly once.

Both node namespaces of the two-node lab run `netwatch capture` at the same time, each
knowing the cluster's pod IPs from the lab's snapshot. The union of their outputs must
hold each scripted connection exactly once — on the node the lab's manifest names as
reporter (the server pod's node; the client's when the server is no pod) — with the
packets and bytes tcpdump saw on that node's veth. Connections no pod veth carries
(node to node, hostNetwork to the internet) appear nowhere.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netwatch import lab
from netwatch.lab.lab import LabHandle
from netwatch.lab.manifest import ExpectedConnection
from tests.privileged.ebpf_fixtures import (
    REPO,
    Capture,
    Tcpdump,
    assert_clean,
    find,
    pcap_counts,
    record_view,
    require_privileges,
    view,
)

pytestmark = [pytest.mark.privileged, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[LabHandle]:
    require_privileges()
    with lab.up(REPO / "fixtures" / "lab" / "two-node.yaml") as handle:
        yield handle


def _endpoints(c: ExpectedConnection) -> tuple[tuple[str, int], tuple[str, int]]:
    if c.protocol == "ICMP":
        return (c.client.peer.ip, int(c.extra["icmp_id"])), (c.server.peer.ip, 8)
    return (c.client.peer.ip, c.client.port), (c.server.peer.ip, c.server.port)


def test_each_connection_is_reported_once_by_the_right_node(
    two_nodes: LabHandle, tmp_path: Path
) -> None:
    snapshot = str(two_nodes.snapshot_path)
    captures = {
        name: Capture(
            node.netns, tmp_path=tmp_path, name=name, node=name, args=["--cluster", snapshot]
        ).start()
        for name, node in two_nodes.nodes.items()
    }
    dumps = {
        pod.interface: Tcpdump(
            two_nodes.nodes[pod.node].netns, pod.interface, tmp_path / f"{pod.interface}.pcap"
        )
        for pod in two_nodes.pods.values()
        if pod.interface
    }
    try:
        manifest = two_nodes.run_traffic(
            [
                *two_nodes.plan.scenario.traffic,
                # hostNetwork pod to another node: no pod veth carries it
                {"name": "node-to-node", "kind": "tcp", "from": "monitoring/node-exporter[0]",
                 "to": "node:node-2", "port": 9100, "request": 100, "response": 1000},
            ]
        )  # fmt: skip
        time.sleep(1.0)
    finally:
        pcaps = {v: d.stop() for v, d in dumps.items()}
        results = {name: c.stop() for name, c in captures.items()}
    for result in results.values():
        assert result.returncode == 0, result.stderr
        assert result.stats["lost_packets"] == 0
    counts = {v: pcap_counts(p) for v, p in pcaps.items()}
    everything = [r for result in results.values() for r in result.records]

    reported = [c for c in manifest.connections if c.reporter is not None]
    assert {c.reporter for c in reported} == {"node-1", "node-2"}
    assert any(c.reporter is None for c in manifest.connections)  # node-to-node
    assert len(everything) == len(reported)
    for c in reported:
        client, server = _endpoints(c)
        match = {
            "protocol": c.protocol,
            "client_ip": client[0],
            "client_port": client[1],
            "server_ip": server[0],
            "server_port": server[1],
        }
        recs = find(everything, **match)
        assert len(recs) == 1, (c.step, match, recs)
        rec = recs[0]
        assert rec["node"] == c.reporter, (c.step, rec)
        assert find(results[c.reporter].records, **match) == [rec]
        truth = view(counts[rec["interface"]], protocol=c.protocol, client=client, server=server)
        assert record_view(rec) == truth, (c.step, rec, truth)
        if c.packets_out is not None:
            assert record_view(rec) == (c.packets_out, c.ip_bytes_out, c.packets_in, c.ip_bytes_in)
        assert rec["orientation"] == {"TCP": "syn", "UDP": "socket", "ICMP": "syn"}[c.protocol]
        same_node = c.client.peer.node == c.server.peer.node
        if c.service is not None and same_node:
            assert (rec["service_ip"], rec["service_port"]) == (c.service.ip, c.service.port)
        elif c.service is None:
            assert "service_ip" not in rec
    for node in two_nodes.nodes.values():
        assert_clean(node.netns)
