"""The two-node lab is a working cluster network, and its snapshot describes it truly."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import yaml

from netwatch.k8s.snapshot import load_cluster
from netwatch.lab.lab import LabHandle, up
from netwatch.lab.scenario import parse_scenario
from tests.privileged.conftest import SCENARIOS


def _addresses(handle: LabHandle, netns: str, interface: str) -> list[str]:
    out = handle.exec(netns, ["ip", "-j", "-4", "addr", "show", "dev", interface]).stdout
    return [a["local"] for link in json.loads(out) for a in link["addr_info"]]


def _tcp(source: str, target: str, port: int | str, **extra: object) -> dict[str, object]:
    return {"kind": "tcp", "from": source, "to": target, "port": port, **extra}


def test_pods_reach_pods_on_the_same_node_and_across_nodes(two_node: LabHandle) -> None:
    manifest = two_node.run_traffic(
        [
            {**_tcp("shop/frontend[0]", "shop/cart[0]", "http"), "name": "same-node"},
            {**_tcp("shop/frontend[0]", "shop/cart[1]", "http"), "name": "cross-node"},
            {**_tcp("shop/frontend[1]", "shop/db-0", 5432), "name": "cross-back"},
        ]
    )
    same, cross, back = (manifest.step(n)[0] for n in ("same-node", "cross-node", "cross-back"))
    assert same.client.peer.node == same.server.peer.node == "node-1"
    assert (cross.client.peer.node, cross.server.peer.node) == ("node-1", "node-2")
    assert back.server.peer.name == "shop/db-0"
    # No NAT between pods: the server saw the client's own address and port.
    for c in (same, cross, back):
        assert c.server_view is not None
        assert c.server_view["peer"] == [c.client.peer.ip, c.client.port]


def test_cluster_ip_is_dnat_to_a_backend_and_conntrack_shows_it(two_node: LabHandle) -> None:
    service = two_node.services["shop/cart"]
    backends = {b.pod.ip: b.port for sp in service.ports for b in sp.backends if sp.spec.port == 80}
    manifest = two_node.run_traffic(
        [_tcp("shop/frontend[0]", "service:shop/cart", 80, connections=6)]
    )
    table = two_node.conntrack("node-1")  # the client's node did the DNAT
    for c in manifest.connections:
        assert c.service is not None and (c.service.ip, c.service.port) == ("10.96.10.20", 80)
        assert backends[c.server.peer.ip] == c.server.port == 8080
        entry = re.search(
            rf"src={c.client.peer.ip} dst={service.cluster_ip} sport={c.client.port} dport=80 "
            rf"src=(\S+) dst={c.client.peer.ip} sport=(\d+) dport={c.client.port}",
            table,
        )
        assert entry, f"no DNAT entry for {c.client.port} in:\n{table}"
        assert (entry[1], int(entry[2])) == (c.server.peer.ip, 8080)


def test_a_pod_reaches_itself_through_its_service(two_node: LabHandle) -> None:
    # Hairpin: kube-proxy masquerades it, or the pod would see its own address as source.
    manifest = two_node.run_traffic(
        [_tcp("shop/cart[0]", "service:shop/cart", 80, connections=8)], check=False
    )
    assert not manifest.failures()


def test_the_internet_host_is_reachable_and_pod_egress_is_masqueraded(
    two_node: LabHandle,
) -> None:
    assert two_node.internet is not None
    manifest = two_node.run_traffic(
        [
            {**_tcp("shop/cart[1]", "internet", 443), "name": "tcp"},
            {"name": "ping", "kind": "icmp", "from": "shop/cart[1]", "to": "internet", "rounds": 3},
        ]
    )
    tcp = manifest.step("tcp")[0]
    assert tcp.server.peer.ip == two_node.internet.ip
    assert tcp.server_view is not None
    assert tcp.server_view["peer"][0] == two_node.nodes["node-2"].ip  # SNAT to the node
    assert manifest.step("ping")[0].packets_in == 3


def test_the_internet_host_reaches_pods_and_nodes_reach_host_network_pods(
    two_node: LabHandle,
) -> None:
    manifest = two_node.run_traffic(
        [
            {**_tcp("internet", "shop/frontend[1]", "http"), "name": "inbound"},
            {**_tcp("node:node-1", "node:node-2", 9100), "name": "node-to-node"},
        ]
    )
    inbound = manifest.step("inbound")[0]
    assert inbound.server_view is not None
    assert inbound.server_view["peer"][0] == two_node.internet.ip  # type: ignore[union-attr]
    assert manifest.step("node-to-node")[0].reporter is None  # no pod veth on either end


def test_snapshot_loads_cleanly_and_matches_the_live_topology(two_node: LabHandle) -> None:
    result = load_cluster([two_node.snapshot_path])
    assert result.problems == ()
    cluster = result.cluster
    assert {p.key for p in cluster.pods} == set(two_node.pods)
    for pod in cluster.pods:
        live = two_node.pods[pod.key]
        node = two_node.nodes[live.node]
        assert pod.node_name == live.node
        assert pod.host_ip == node.ip
        if pod.host_network:
            assert pod.ips == (node.ip,)
            continue
        assert _addresses(two_node, live.netns, "eth0") == [live.ip]
        assert pod.ips == (live.ip,)
        assert ipaddress.ip_address(live.ip) in ipaddress.ip_network(node.pod_cidr)
        link = two_node.exec(node, ["ip", "-j", "link", "show", "dev", live.interface or ""])
        assert json.loads(link.stdout)[0]["operstate"] == "UP"
        assert cluster.workload_of(pod).name == live.workload.name
    for node in cluster.nodes:
        live_node = two_node.nodes[node.name]
        assert node.addresses == (live_node.ip,)
        assert _addresses(two_node, live_node.netns, "eth0") == [live_node.ip]
    services = {s.key: s for s in cluster.services}
    assert services["shop/cart"].cluster_ips == ("10.96.10.20",)
    slices = [s for s in cluster.endpoint_slices if s.service_name == "cart"]
    assert sorted(a for s in slices for e in s.endpoints for a in e.addresses) == sorted(
        p.ip for p in two_node.pods.values() if p.workload.name == "cart"
    )
    assert {p.key for p in cluster.policies} == {
        "shop/cart-from-frontend", "shop/db-from-backup", "shop/db-from-cart",
        "shop/default-deny-ingress",
    }  # fmt: skip


def test_offloads_can_be_turned_off_for_wire_sized_packets(state_dir: Path) -> None:
    raw = yaml.safe_load((SCENARIOS / "one-node.yaml").read_text())
    scenario = parse_scenario({**raw, "offloads": False}, source="one-node, offloads off")
    with up(scenario, state_dir=state_dir) as handle:
        pod = handle.pod("demo/web")
        for netns, interface in (
            (handle.nodes["node-1"].netns, pod.interface),
            (pod.netns, "eth0"),
        ):
            features = handle.exec(netns, ["ethtool", "-k", interface or ""]).stdout
            assert "tcp-segmentation-offload: off" in features
            assert "generic-receive-offload: off" in features
        manifest = handle.run_traffic(
            [{"kind": "tcp", "from": "demo/client", "to": "demo/web", "port": 8080}]
        )
        assert manifest.connections[0].verified
