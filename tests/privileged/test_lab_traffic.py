"""Each traffic kind does exactly what its manifest says, as the servers' own logs confirm."""

from __future__ import annotations

import json
import time

import pytest

from netwatch.lab.lab import LabHandle
from netwatch.lab.manifest import ExpectedConnection, reporting_node
from netwatch.lab.traffic import log_file_name


def _server_log(handle: LabHandle, owner: str) -> list[dict[str, object]]:
    path = handle.run_dir / "logs" / log_file_name(owner)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tcp_moves_exact_payloads_each_way(one_node: LabHandle) -> None:
    manifest = one_node.run_traffic(
        [
            {
                "name": "bulk",
                "kind": "tcp",
                "from": "demo/client",
                "to": "demo/web[1]",
                "port": "http",
                "request": 3000,
                "response": 1_000_000,
                "connections": 3,
            }
        ]
    )
    conns = manifest.step("bulk")
    assert len(conns) == 3
    web = one_node.pod("demo/web[1]")
    log = {r["id"]: r for r in _server_log(one_node, web.key)}
    for c in conns:
        assert (c.payload_out, c.payload_in, c.protocol) == (3000, 1_000_000, "TCP")
        assert c.packets_out is None  # TCP segmentation is not deterministic
        assert c.verified and c.error is None
        # The server's own record, read independently of the driver:
        assert (log[c.id]["received"], log[c.id]["sent"]) == (3000, 1_000_000)
        assert log[c.id]["peer"] == [c.client.peer.ip, c.client.port]
        assert c.server.peer.interface == web.interface
        assert c.five_tuple == (c.client.peer.ip, c.client.port, web.ip, 8080, "TCP")
    assert len({c.client.port for c in conns}) == 3


def test_udp_on_a_high_port_counts_every_datagram(one_node: LabHandle) -> None:
    manifest = one_node.run_traffic(
        [
            {
                "name": "echo",
                "kind": "udp",
                "from": "demo/client",
                "to": "demo/echo-0",
                "port": 40000,
                "request": 200,
                "response": 1000,
                "rounds": 7,
            },
            {
                "name": "one-way",
                "kind": "udp",
                "from": "demo/client",
                "to": "demo/echo-0",
                "port": "echo-udp",
                "request": 64,
                "response": 0,
                "rounds": 3,
                "clientPort": 41234,
            },
        ]
    )
    echo, one_way = manifest.step("echo")[0], manifest.step("one-way")[0]
    assert (echo.packets_out, echo.packets_in) == (7, 7)
    assert (echo.payload_out, echo.payload_in) == (1400, 7000)
    assert (echo.ip_bytes_out, echo.ip_bytes_in) == (7 * 228, 7 * 1028)
    assert echo.server.port == 40000 and echo.verified
    assert echo.server_view is not None and echo.server_view["datagrams"] == 7
    assert (one_way.client.port, one_way.packets_out, one_way.packets_in) == (41234, 3, 0)
    assert one_way.ip_bytes_out == 3 * 92 and one_way.verified


def test_udp_through_a_cluster_ip_lands_on_a_backend(two_node: LabHandle) -> None:
    manifest = two_node.run_traffic(
        [
            {
                "kind": "udp",
                "from": "shop/frontend[1]",
                "to": "service:shop/cart",
                "port": "events",
                "rounds": 4,
                "connections": 3,
            }
        ]
    )
    backends = {p.ip for p in two_node.pods.values() if p.workload.name == "cart"}
    for c in manifest.connections:
        assert c.server.peer.ip in backends and c.server.port == 40000
        assert c.service is not None and c.service.port == 40000
        assert (c.packets_out, c.packets_in) == (4, 4)


def test_icmp_echo_counts_packets_and_bytes(one_node: LabHandle) -> None:
    manifest = one_node.run_traffic(
        [{"kind": "icmp", "from": "demo/client", "to": "demo/web", "rounds": 4, "request": 100}]
    )
    (ping,) = manifest.connections
    assert (ping.packets_out, ping.packets_in) == (4, 4)
    assert ping.ip_bytes_out == ping.ip_bytes_in == 4 * 128
    assert ping.extra["icmp_id"] is not None and ping.verified


def test_dns_queries_are_answered_by_the_lab_dns_pod(two_node: LabHandle) -> None:
    names = {
        "cart.shop.svc.cluster.local": ["10.96.10.20"],
        "db.shop.svc.cluster.local": [two_node.pod("shop/db-0").ip],  # headless
        "internet.lab": ["203.0.113.10"],
        "nope.shop.svc.cluster.local": [],
    }
    manifest = two_node.run_traffic(
        [
            {"name": f"q{i}", "kind": "dns", "from": "shop/frontend[1]", "query": name}
            for i, name in enumerate(names)
        ]
    )
    coredns = two_node.pod("kube-system/coredns")
    for i, answers in enumerate(names.values()):
        (c,) = manifest.step(f"q{i}")
        assert c.extra["dns"]["answers"] == answers
        assert c.extra["dns"]["rcode"] == (0 if answers else 3)  # NXDOMAIN
        assert c.server.peer.name == coredns.key and c.server.port == 53
        assert c.service is not None and c.service.ip == "10.96.0.10"
        assert (c.packets_out, c.packets_in) == (1, 1) and c.verified
        assert c.ip_bytes_in == c.payload_in + 28


def test_churn_opens_connections_at_the_requested_rate(two_node: LabHandle) -> None:
    manifest = two_node.run_traffic(
        [
            {
                "name": "churn",
                "kind": "churn",
                "from": "shop/frontend[1]",
                "to": "shop/cart[0]",
                "port": "http",
                "rate": 150,
                "duration": 2,
                "request": 64,
                "response": 64,
            }
        ]
    )
    (summary,) = manifest.steps
    conns = manifest.step("churn")
    assert len(conns) == 300 and summary.failed == 0
    assert len({c.client.port for c in conns}) == 300
    assert summary.rate is not None and 120 <= summary.rate <= 180
    assert all((c.payload_out, c.payload_in) == (64, 64) for c in conns)


def test_a_long_lived_connection_is_open_while_other_steps_run(two_node: LabHandle) -> None:
    run = two_node.start_traffic(
        [
            {
                "name": "session",
                "kind": "tcp",
                "from": "shop/frontend[0]",
                "to": "shop/cart[1]",
                "port": "http",
                "rounds": 5,
                "interval": 0.3,
                "background": True,
            },
            {"name": "meanwhile", "kind": "icmp", "from": "shop/frontend[0]", "to": "shop/db"},
        ]
    )
    (conn_id,) = run.wait_connected("session", timeout=10)
    client = two_node.pod("shop/frontend[0]")
    sockets = two_node.exec(client, ["ss", "-Htn", "state", "established"]).stdout
    assert ":8080" in sockets  # open now, before the script ends
    started = time.monotonic()
    manifest = run.wait()
    assert time.monotonic() - started > 0.5
    (session,) = manifest.step("session")
    assert session.id == conn_id and session.rounds == 5 and session.verified
    assert session.last_seen - session.first_seen >= 1.2
    assert manifest.step("meanwhile")[0].first_seen < session.last_seen


def test_failures_are_recorded_not_hidden(one_node: LabHandle) -> None:
    from netwatch.lab.traffic import TrafficError

    # The echo pod drops UDP: the client's datagram is never answered.
    steps = [{"kind": "udp", "from": "demo/client", "to": "demo/echo-0", "port": 40000}]
    one_node.exec(
        one_node.pod("demo/echo-0"), ["iptables", "-A", "INPUT", "-p", "udp", "-j", "DROP"]
    )
    try:
        with pytest.raises(TrafficError) as caught:
            one_node.run_traffic(steps)
    finally:
        one_node.exec(one_node.pod("demo/echo-0"), ["iptables", "-F", "INPUT"])
    (c,) = caught.value.manifest.connections
    assert c.error is not None and not c.verified and c.packets_in == 0


def _check_scenario_script(handle: LabHandle) -> list[ExpectedConnection]:
    manifest = handle.run_traffic()
    assert {s.name for s in manifest.steps} == {s.name for s in handle.plan.scenario.traffic}
    for c in manifest.connections:
        assert c.verified, c
        assert c.reporter == reporting_node(c.client.peer, c.server.peer)
    return list(manifest.connections)


def test_the_one_node_scenario_script_runs_clean(one_node: LabHandle) -> None:
    conns = _check_scenario_script(one_node)
    assert {c.reporter for c in conns} == {"node-1"}


def test_the_two_node_scenario_script_runs_clean_and_names_one_reporter_each(
    two_node: LabHandle,
) -> None:
    conns = _check_scenario_script(two_node)
    by_step = {c.step: c for c in conns}
    assert by_step["cart-db"].reporter == "node-2"  # the server pod's node
    assert by_step["egress"].reporter == "node-2"  # server outside: the client's node
    assert by_step["inbound"].reporter == "node-2"
    assert by_step["scrape-node"].reporter == "node-1"  # hostNetwork server: client's node
    for c in conns:
        if c.step == "frontend-cart":  # through the Service: wherever DNAT sent it
            assert c.reporter == c.server.peer.node
