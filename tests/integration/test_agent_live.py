"""The agent on the live inventory path: `LiveFeed` over list+watch of a real HTTP server
speaking the Kubernetes protocol (`kube_api.KubeAPI`), replay capture, real /metrics.

The watch threads deliver into the agent's `BufferedSink`; the drain loop applies them.
An API server that goes away must turn readiness off and show up in
`netwatch_inventory_stale_seconds` while the agent keeps serving; its return must
turn readiness back on.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from netwatch.agent import Agent, AgentConfig
from netwatch.agent.inventory import BufferedSink, LiveFeed
from netwatch.capture.replay import ReplaySource
from netwatch.core.flow import Connection, Orientation
from netwatch.core.model import Protocol
from netwatch.k8s.live import LiveSource
from netwatch.server import ServerConfig
from tests.integration.conftest import FAST
from tests.integration.kube_api import KubeAPI, kubeconfig_text, wait_until

WEB, API = "10.244.1.10", "10.244.1.20"


def pod(name: str, ip: str) -> dict[str, object]:
    return {
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def web_to_api() -> Iterator[list[Connection]]:
    while True:  # one new connection per drain, stamped when drained
        now = time.time()
        yield [
            Connection(
                client_ip=WEB,
                client_port=40000 + int(now * 1000) % 20000,
                server_ip=API,
                server_port=8080,
                protocol=Protocol.TCP,
                first_seen=now,
                last_seen=now,
                packets_out=1,
                bytes_out=60,
                orientation=Orientation.SYN,
            )
        ]


def get(agent: Agent, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(agent.server.url + path, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def gauge(agent: Agent, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    _, text = get(agent, "/metrics")
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def test_live_inventory_feeds_the_agent_and_an_outage_turns_readiness_off(
    kube_api: KubeAPI, tmp_path: Path
) -> None:
    kube_api.create("namespaces", {"metadata": {"name": "shop"}})
    kube_api.create("pods", pod("web", WEB))
    kube_api.create("pods", pod("api", API))
    kube_api.create(
        "networkpolicies",
        {
            "metadata": {"name": "api-from-web", "namespace": "shop"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "api"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
            },
        },
    )
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(kubeconfig_text(kube_api.url))
    sink = BufferedSink()
    source = LiveSource.from_config(sink, kubeconfig=str(kubeconfig), options=FAST)
    agent = Agent(
        config=AgentConfig(node="node-1", max_stale=0.2),
        flows=ReplaySource.from_batches(web_to_api()),
        inventory=LiveFeed(source, sync_timeout=5),
        sink=sink,
        server=ServerConfig(port=0),
    )
    agent.start()
    try:
        agent.step()
        flows = gauge(agent, "netwatch_flows_total")
        allowed = [v for k, v in flows.items() if ("verdict", "allowed") in k]
        assert allowed and allowed[0] >= 1, flows
        assert gauge(agent, "netwatch_inventory_objects")[(("kind", "Pod"),)] == 2
        assert get(agent, "/readyz")[0] == 200

        kube_api.stop()
        wait_until(lambda: source.stale_seconds(time.time()) > 0.3)
        agent.step()
        assert get(agent, "/readyz")[0] == 503
        assert gauge(agent, "netwatch_inventory_stale_seconds")[()] > 0.2
        assert get(agent, "/metrics")[0] == 200  # still serving, previous inventory kept
        assert gauge(agent, "netwatch_inventory_objects")[(("kind", "Pod"),)] == 2

        kube_api.start()
        wait_until(lambda: source.stale_seconds(time.time()) == 0.0)
        agent.step()
        assert get(agent, "/readyz")[0] == 200
        assert gauge(agent, "netwatch_watch_restarts_total")[()] >= 1
    finally:
        agent.shutdown()
