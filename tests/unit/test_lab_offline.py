"""The lab's pure parts, without root: scenarios, plans, snapshots, rules, commands, wire."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from netwatch.k8s.snapshot import load_cluster
from netwatch.lab import wire
from netwatch.lab.manifest import ExpectedConnection, Side, TrafficManifest, reporting_node
from netwatch.lab.plan import LabPlan, Peer, ServiceRef, make_plan
from netwatch.lab.scenario import ScenarioError, load_scenario, parse_scenario
from netwatch.lab.services import node_rules
from netwatch.lab.snapshot import dns_records, write_snapshot
from netwatch.lab.topology import build

SCENARIOS = Path(__file__).resolve().parents[2] / "fixtures" / "lab"
FIXTURES = sorted(p.name for p in SCENARIOS.glob("*.yaml"))


def _plan(name: str = "two-node.yaml", run_id: str = "ab12") -> LabPlan:
    return make_plan(load_scenario(SCENARIOS / name), run_id=run_id)


def _minimal(**extra: Any) -> dict[str, Any]:
    return {"name": "t", "nodes": [{"name": "node-1"}], **extra}


# ------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("name", FIXTURES)
def test_shipped_scenarios_plan_and_resolve_every_step(name: str) -> None:
    plan = _plan(name)
    for step in plan.scenario.traffic:
        resolved = plan.resolve(step)
        assert resolved.servers


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"nodes": [{"name": "n"}]}, "name: required"),
        (_minimal(nodes=[]), "nodes: at least one node is required"),
        (_minimal(nodes=[{"name": "Node_1"}]), "nodes[0].name: 'Node_1' is not a valid node name"),
        (_minimal(nodes=[{"name": "a", "ip": "10.0.0.1"}]), "nodes[0].ip: 10.0.0.1 is not in"),
        (
            _minimal(nodes=[{"name": "a"}, {"name": "b", "podCIDR": "10.244.1.0/25"}]),
            "nodes[1].podCIDR: overlaps the podCIDR of a",
        ),
        (_minimal(workloads=[{"name": "w", "kind": "Job"}]), "workloads[0].kind: 'Job' is not"),
        (
            _minimal(workloads=[{"name": "w", "ports": [{"containerPort": 70000}]}]),
            "workloads[0].ports[0].containerPort: 70000 is out of range",
        ),
        (
            _minimal(workloads=[{"name": "w", "labels": {"a": "b c"}}]),
            "workloads[0].labels.a: label value 'b c'",
        ),
        (_minimal(workloads=[{"name": "w", "dns": True}]), "workloads[0].dns: a DNS workload"),
        (_minimal(services=[{"name": "s", "ports": [{"port": 80}]}]), "services[0].selector"),
        (_minimal(traffic=[{"kind": "tcp", "from": "a/b"}]), "traffic[0].to: required"),
        (
            _minimal(
                traffic=[{"kind": "udp", "from": "a/b", "to": "a/c", "port": 1, "request": 2000}]
            ),
            "traffic[0].request: 2000 is out of range 20..1472",
        ),
        (_minimal(traffic=[{"kind": "ftp"}]), "traffic[0].kind: 'ftp' is not one of"),
        (_minimal(colour="blue"), "colour: unknown field"),
        (_minimal(internet={"ip": "10.244.0.9"}), "internet.ip: 10.244.0.9 is inside clusterCIDR"),
    ],
)
def test_scenario_errors_name_the_file_and_the_field(document: Any, expected: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(document, source="lab.yaml")
    assert any(expected in line for line in str(caught.value).splitlines()), str(caught.value)
    assert str(caught.value).startswith("lab.yaml: ")


def test_every_problem_is_reported_at_once() -> None:
    document = _minimal(workloads=[{"name": "w", "replicas": -1, "hostNetwork": "yes"}])
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(document, source="lab.yaml")
    assert len(caught.value.problems) == 2


def test_a_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nnodes: [\n")
    with pytest.raises(ScenarioError, match=r"bad\.yaml: YAML syntax error: line 3"):
        load_scenario(path)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (
            {"kind": "tcp", "from": "shop/nothing", "to": "shop/cart", "port": 80},
            "no pod or workload",
        ),
        ({"kind": "tcp", "from": "shop/cart[7]", "to": "shop/db", "port": 5432}, "[7] does not"),
        (
            {"kind": "tcp", "from": "shop/cart", "to": "shop/db", "port": "http"},
            "no TCP port 'http'",
        ),
        ({"kind": "udp", "from": "shop/cart", "to": "shop/db", "port": 5432}, "no UDP port 5432"),
        ({"kind": "icmp", "from": "shop/cart", "to": "service:shop/cart"}, "do not answer ICMP"),
        ({"kind": "tcp", "from": "shop/cart", "to": "service:shop/db", "port": 5432}, "headless"),
        ({"kind": "tcp", "from": "shop/cart", "to": "node:node-9", "port": 1}, "no node 'node-9'"),
        ({"kind": "tcp", "from": "shop/cart", "to": "node:node-1", "port": 22}, "nothing listens"),
        ({"kind": "tcp", "from": "1.2.3.4", "to": "internet", "port": 443}, "not a reference"),
    ],
)
def test_traffic_references_are_checked_against_the_lab(
    step: dict[str, Any], expected: str
) -> None:
    raw = yaml.safe_load((SCENARIOS / "two-node.yaml").read_text())
    raw["traffic"] = [{"name": "bad", **step}]
    scenario = parse_scenario(raw, source="two.yaml")
    plan = make_plan(scenario, run_id="ab12")
    with pytest.raises(ScenarioError, match=re.escape(expected)) as caught:
        plan.resolve(scenario.traffic[0])
    assert "traffic[bad]." in str(caught.value)


# ------------------------------------------------------------------------ plan


def test_host_network_pods_cannot_share_a_port_on_one_node() -> None:
    ports = [{"containerPort": 9100}]
    scenario = parse_scenario(
        _minimal(
            workloads=[
                {"name": "a", "hostNetwork": True, "ports": ports},
                {"name": "b", "hostNetwork": True, "ports": ports},
            ]
        ),
        source="lab.yaml",
    )
    with pytest.raises(ScenarioError, match="both bind TCP port 9100 on node-1"):
        make_plan(scenario, run_id="ab12")


def test_plans_are_deterministic_and_only_names_depend_on_the_run() -> None:
    a, b, c = _plan(run_id="ab12"), _plan(run_id="ab12"), _plan(run_id="cd34")
    assert a == b
    assert [(p.key, p.ip, p.node) for p in a.pods] == [(p.key, p.ip, p.node) for p in c.pods]
    assert {p.interface for p in a.pods}.isdisjoint({p.interface for p in c.pods} - {None})
    assert all(name.startswith("nwab12-") for name in a.netns_names())
    assert len(set(a.netns_names())) == len(a.netns_names())
    for pod in a.pods:
        assert pod.interface is None or re.fullmatch(r"veth[0-9a-f]{8}", pod.interface)


def test_pods_spread_over_their_nodes_with_addresses_from_the_node_pod_cidr() -> None:
    plan = _plan()
    frontends = [p for p in plan.pods if p.workload.name == "frontend"]
    assert [p.node for p in frontends] == ["node-1", "node-2"]
    assert [p.ip for p in frontends] == ["10.244.1.2", "10.244.2.2"]
    exporters = [p for p in plan.pods if p.workload.name == "node-exporter"]
    assert [(p.ip, p.netns, p.interface) for p in exporters] == [
        (n.ip, n.netns, None) for n in plan.nodes
    ]


def test_snapshot_loads_without_problems_and_resolves_owners(tmp_path: Path) -> None:
    plan = _plan()
    path = tmp_path / "cluster.yaml"
    write_snapshot(plan, path, created=1764250000.0)
    result = load_cluster([path])
    assert result.problems == () and result.skipped == 0
    cluster = result.cluster
    assert [(p.key, p.primary_ip) for p in cluster.pods] == sorted((p.key, p.ip) for p in plan.pods)
    kinds = {p.name.split("-")[0]: cluster.workload_of(p).kind.value for p in cluster.pods}
    assert kinds["frontend"] == "Deployment" and kinds["db"] == "StatefulSet"
    assert kinds["node"] == "DaemonSet"
    (cart,) = [s for s in cluster.endpoint_slices if s.service_name == "cart"]
    assert sorted((p.name, p.port, p.protocol.value) for p in cart.ports) == [
        ("events", 40000, "UDP"),
        ("http", 8080, "TCP"),
    ]
    write_snapshot(plan, tmp_path / "again.yaml", created=1764250000.0)
    assert (tmp_path / "again.yaml").read_text() == path.read_text()


def test_dns_records_cover_services_headless_pods_and_the_internet() -> None:
    records = dns_records(_plan())
    assert records["cart.shop.svc.cluster.local"] == ["10.96.10.20"]
    assert records["db.shop.svc.cluster.local"] == ["10.244.2.4"]
    assert records["internet.lab"] == ["203.0.113.10"]
    assert records["10-244-1-2.shop.pod.cluster.local"] == ["10.244.1.2"]


# ---------------------------------------------------------------------- system


def test_service_rules_balance_over_backends_like_kube_proxy() -> None:
    plan = _plan()
    rules = node_rules(plan, plan.nodes[0])
    assert rules.startswith("*nat\n") and rules.count("COMMIT") == 2
    chain = re.search(r"-d 10\.96\.10\.20/32 -p tcp -m tcp --dport 80 .* -j (KUBE-SVC-\w+)", rules)
    assert chain
    svc = [r for r in rules.splitlines() if r.startswith(f"-A {chain[1]} ")]
    assert "--probability 0.5000000000" in svc[1] and "statistic" not in svc[2]
    assert "-j DNAT --to-destination 10.244.1.3:8080" in rules
    assert "-j DNAT --to-destination 10.244.2.3:8080" in rules
    assert "10.244.2.4" not in rules  # the headless db Service is never proxied
    assert "-A POSTROUTING -s 10.244.1.0/24 -o eth0" in rules  # ip-masq toward the internet


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, argv: Sequence[str], *, stdin: str | None = None) -> str:
        self.calls.append((list(argv), stdin))
        return ""


def test_every_command_runs_inside_a_lab_namespace() -> None:
    """The safety rule: nothing is ever configured in the root namespace."""
    plan = _plan()
    names = set(plan.netns_names())
    recorder = _Recorder()
    build(plan, recorder)
    assert recorder.calls
    for argv, stdin in recorder.calls:
        match argv:
            case ["ip", "netns", "add", name]:
                assert name in names
            case ["ip", "-n", name, "-batch", "-"]:
                assert name in names and stdin
                for line in stdin.splitlines():
                    netns = re.search(r"\bnetns (\S+)", line)
                    assert netns is None or netns[1] in names, line
            case ["ip", "netns", "exec", name, *_]:
                assert name in names
            case _:
                pytest.fail(f"command outside the lab's namespaces: {argv}")


# ------------------------------------------------------------------------ wire


def test_dns_messages_round_trip() -> None:
    query = wire.build_query(txid=0x1234, name="cart.shop.svc.cluster.local")
    question = wire.parse_question(query)
    assert question is not None and question.name == "cart.shop.svc.cluster.local"
    answer = wire.parse_response(wire.build_response(query, question, ["10.96.10.20", "10.0.0.1"]))
    assert answer == wire.DnsAnswer(0x1234, 0, ("10.96.10.20", "10.0.0.1"))
    missing = wire.parse_response(wire.build_response(query, question, None))
    assert missing == wire.DnsAnswer(0x1234, wire.RCODE_NXDOMAIN, ())


def test_request_headers_are_recognised_and_foreign_bytes_are_not() -> None:
    data = wire.request_bytes(request=100, response=7, conn_id=b"abcdefgh")
    assert len(data) == 100
    assert wire.unpack_header(data) == wire.Header(100, 7, b"abcdefgh")
    assert wire.unpack_header(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") is None
    with pytest.raises(ValueError, match="header"):
        wire.pack_header(request=5, response=0, conn_id=b"abcdefgh")


# -------------------------------------------------------------------- manifest


def _peer(kind: str, node: str | None = None, *, host_network: bool = False) -> Peer:
    return Peer(kind, f"x/{kind}", "10.0.0.1", "ns", node=node, host_network=host_network)


@pytest.mark.parametrize(
    ("client", "server", "reporter"),
    [
        (_peer("pod", "n1"), _peer("pod", "n2"), "n2"),  # the server pod's node
        (_peer("pod", "n1"), _peer("pod", "n1"), "n1"),
        (_peer("internet"), _peer("pod", "n2"), "n2"),
        (_peer("node", "n1"), _peer("pod", "n2"), "n2"),
        (_peer("pod", "n1"), _peer("internet"), "n1"),  # no server pod: the client's node
        (_peer("pod", "n1"), _peer("node", "n2"), "n1"),
        (_peer("pod", "n1"), _peer("pod", "n2", host_network=True), "n1"),
        (_peer("pod", "n1", host_network=True), _peer("internet"), None),  # no pod veth at all
        (_peer("node", "n1"), _peer("node", "n2"), None),
    ],
)
def test_each_connection_has_exactly_one_reporting_node(
    client: Peer, server: Peer, reporter: str | None
) -> None:
    assert reporting_node(client, server) == reporter


def test_manifests_round_trip_through_json() -> None:
    conn = ExpectedConnection(
        id="00",
        step="s",
        kind="dns",
        protocol="UDP",
        client=Side(_peer("pod", "n1"), 40000),
        server=Side(_peer("pod", "n2"), 53),
        service=ServiceRef("kube-system/kube-dns", "10.96.0.10", 53),
        rounds=1,
        payload_out=45,
        payload_in=61,
        packets_out=1,
        packets_in=1,
        ip_bytes_out=73,
        ip_bytes_in=89,
        first_seen=1.0,
        last_seen=2.0,
        reporter="n2",
        verified=True,
        server_view={"peer": ["10.0.0.1", 40000]},
        extra={"dns": {"query": "a.b", "answers": ["10.96.0.10"]}},
    )
    manifest = TrafficManifest("ab12", "two-node", (), (conn,))
    assert TrafficManifest.from_json(manifest.to_json()) == manifest


# ------------------------------------------------------------------------- CLI


def test_lab_up_rejects_a_bad_scenario_before_touching_the_system(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from netwatch.cli.main import cli

    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: x\nnodes: [{name: n1}]\ntraffic: [{kind: tcp, from: a/b, to: internet, port: 443}]\n"
    )
    result = CliRunner().invoke(cli, ["lab", "up", "--scenario", str(path)])
    assert result.exit_code == 2
    assert f"{path}: traffic[step-0].from: no pod or workload a/b" in result.output


def test_lab_down_needs_to_be_told_which_lab() -> None:
    from click.testing import CliRunner

    from netwatch.cli.main import cli

    result = CliRunner().invoke(cli, ["lab", "down"])
    assert result.exit_code == 2 and "--run-id" in result.output
