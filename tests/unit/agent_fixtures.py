"""What the in-process agent tests share: a snapshot-file cluster, connections, a clock.

`test_agent` runs the three-workload shop (`write_cluster`); `test_agent_scrapes` builds
its own larger cluster from the same `CLUSTER` head and `POD` template. Both build the
agent with `make_agent`: replay capture, snapshot files, real HTTP on 127.0.0.1:0.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from netwatch.agent import Agent, AgentConfig
from netwatch.agent.inventory import BufferedSink, SnapshotFeed
from netwatch.capture.replay import ReplaySource
from netwatch.core.flow import Connection, Orientation
from netwatch.core.model import Protocol
from netwatch.server import ServerConfig

T0 = 1_764_250_000.0
WEB, API, DB, EXTERNAL = "10.42.0.10", "10.42.0.20", "10.42.0.30", "203.0.113.9"

CLUSTER = """\
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- apiVersion: v1
  kind: Node
  metadata: {name: node-a}
  spec: {podCIDR: 10.42.0.0/24}
  status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
"""
POD = """\
- apiVersion: v1
  kind: Pod
  metadata:
    name: {name}-0
    namespace: shop
    uid: uid-{name}
    creationTimestamp: "2025-11-27T08:00:00Z"
    labels: {{app: {name}}}
    ownerReferences: [{{apiVersion: apps/v1, kind: StatefulSet, name: {name}, controller: true}}]
  spec:
    nodeName: node-a
    containers: [{{name: c, image: i, ports: [{{name: http, containerPort: {port}}}]}}]
  status: {{phase: Running, podIP: {ip}}}
"""
INGRESS = """\
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {target}-from-{source}, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: {target}}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: {source}}}}}}}]
    ports: [{{port: 8080}}]
"""
"""A policy admitting only `source` to `target` on 8080 (`INGRESS.format(...)`)."""
POLICY = INGRESS.format(target="api", source="web")


def write_cluster(path: Path, *, policy: str = POLICY) -> None:
    pods = "".join(
        POD.format(name=name, ip=ip, port=port)
        for name, ip, port in (("web", WEB, 80), ("api", API, 8080), ("db", DB, 5432))
    )
    path.write_text(CLUSTER + pods + policy)


def conn(client: str, server: str, port: int, *, at: float, cport: int = 40000) -> Connection:
    return Connection(
        client_ip=client,
        client_port=cport,
        server_ip=server,
        server_port=port,
        protocol=Protocol.TCP,
        first_seen=at,
        last_seen=at + 0.5,
        packets_out=3,
        bytes_out=200,
        packets_in=2,
        bytes_in=120,
        orientation=Orientation.SYN,
        node="node-a",
    )


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_agent(
    tmp_path: Path,
    batches: Iterable[Sequence[Connection]],
    clock: Clock,
    *,
    cluster_yaml: str | None = None,
    **config: float,
) -> tuple[Agent, Path]:
    """An agent over `tmp_path/cluster.yaml`: `cluster_yaml`, or the shop (`write_cluster`)."""
    cluster = tmp_path / "cluster.yaml"
    if cluster_yaml is None:
        write_cluster(cluster)
    else:
        cluster.write_text(cluster_yaml)
    sink = BufferedSink()
    agent = Agent(
        config=AgentConfig(node="node-a", **config),  # type: ignore[arg-type]
        flows=ReplaySource.from_batches(batches),
        inventory=SnapshotFeed([str(cluster)], sink, clock=clock),
        sink=sink,
        server=ServerConfig(port=0),
        clock=clock,
    )
    return agent, cluster


def get(agent: Agent, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(agent.server.url + path, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(agent: Agent, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    status, text = get(agent, "/metrics")
    assert status == 200
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def flow_labels(src: str, dst: str, port: int, verdict: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted(
            {
                "src_namespace": "shop" if src != "world" else "",
                "src_workload": src,
                "dst_namespace": "shop" if dst != "world" else "",
                "dst_workload": dst,
                "dst_port": str(port),
                "protocol": "TCP",
                "verdict": verdict,
            }.items()
        )
    )
