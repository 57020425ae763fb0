"""`netwatch analyze` and `netwatch graph` from the command line: input problems, formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
import yaml
from click.testing import CliRunner, Result
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import PcapWriter

from netwatch.cli.main import cli

AUDIT = Path(__file__).resolve().parents[2] / "fixtures" / "scenarios" / "audit"
CLUSTER = str(AUDIT / "cluster")
T0 = 1764237600.0
WEB, API, DB, TOOLBOX = "10.42.0.10", "10.42.0.20", "10.42.1.30", "10.42.0.50"


def record(client: str, server: str, port: int, *, t: float = 0.0, **extra: Any) -> str:
    return json.dumps(
        {
            "client_ip": client,
            "client_port": 40000,
            "server_ip": server,
            "server_port": port,
            "protocol": extra.pop("protocol", "TCP"),
            "first_seen": T0 + t,
            "last_seen": T0 + t + 1,
            "packets_out": 2,
            "bytes_out": 200,
            "packets_in": 2,
            "bytes_in": 300,
            "orientation": "syn",
            **extra,
        }
    )


def write(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "flows.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def analyze_json(flows: str, *extra: str) -> tuple[dict[str, Any], Result]:
    result = run("analyze", "--cluster", CLUSTER, "--flows", flows, "-o", "json", *extra)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), result


# ------------------------------------------------------------------ bad input


def test_malformed_lines_are_reported_with_their_number_and_skipped(tmp_path: Path) -> None:
    flows = write(
        tmp_path,
        record(WEB, API, 8080),
        '{"client_ip": "10.42.0.10", "client_port": 1',
        record(WEB, API, 8080, client_port=70000),
        "",
        record(TOOLBOX, DB, 5432),
    )
    data, result = analyze_json(flows)
    assert sum(data["summary"]["verdicts"].values()) == 2
    assert f"{flows}:2: not valid JSON" in result.stderr
    assert f"{flows}:3: client_port:" in result.stderr
    assert "skipped 2 malformed line(s)" in result.stderr


def test_strict_makes_a_malformed_line_fatal(tmp_path: Path) -> None:
    flows = write(tmp_path, record(WEB, API, 8080), "not json")
    result = run("analyze", "--cluster", CLUSTER, "--flows", flows, "--strict", "-o", "json")
    assert result.exit_code == 2
    assert f"{flows}:2: not valid JSON" in result.stderr
    assert result.stdout == ""


def test_unknown_addresses_get_verdict_unknown(tmp_path: Path) -> None:
    flows = write(
        tmp_path,
        record("10.42.1.77", API, 8080),  # node-b's pod range, no pod
        record(WEB, "10.42.0.99", 8080),  # node-a's pod range, no pod
        record("fd00::7", "fd00::8", 80),  # nothing knows these: external on both ends
        record("10.60.0.1", API, 8080),  # outside every range: world
    )
    data, _ = analyze_json(flows)
    assert data["summary"]["verdicts"]["unknown"] == 2
    unknown = [c for c in data["connections"] if c["verdict"] == "unknown"]
    assert {c["client"]["name"] for c in unknown} == {"10.42.1.77", "web-7c9d4-aaaaa"}
    assert all(c["egress"] is None and c["ingress"] is None for c in unknown)
    data, _ = analyze_json(flows, "--pod-cidr", "10.60.0.0/16")
    assert data["summary"]["verdicts"]["unknown"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "--since 'yesterday'"),
        (["--since", "2000", "--until", "1000"], "before --since"),
        (["--cidr", "office"], "expected NAME=CIDR"),
        (["--pod-cidr", "10.0.0.0/33"], "--pod-cidr"),
    ],
)
def test_bad_options_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    flows = write(tmp_path, record(WEB, API, 8080))
    result = run("analyze", "--cluster", CLUSTER, "--flows", flows, *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_a_missing_flows_file_exits_2(tmp_path: Path) -> None:
    result = run("analyze", "--cluster", CLUSTER, "--flows", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 2 and "No such file" in result.stderr


# ------------------------------------------------------------------ outputs


def test_json_and_yaml_carry_the_same_document(tmp_path: Path) -> None:
    flows = write(tmp_path, record(WEB, "10.43.0.20", 80), record(TOOLBOX, DB, 5432, t=5))
    data, _ = analyze_json(flows)
    assert list(data) == ["summary", "connections", "findings"]
    assert list(data["summary"]) == ["verdicts"]
    assert list(data["summary"]["verdicts"]) == ["allowed", "denied", "unrestricted", "unknown"]
    conn = data["connections"][0]
    assert list(conn) == [
        "client",
        "server",
        "port",
        "protocol",
        "verdict",
        "egress",
        "ingress",
        "count",
        "bytes",
    ]
    as_yaml = run("analyze", "--cluster", CLUSTER, "--flows", flows, "-o", "yaml")
    assert yaml.safe_load(as_yaml.stdout) == data
    kinds = [f["kind"] for f in data["findings"]]
    assert kinds[0] == "unexpected-flow"


def test_the_window_selects_records(tmp_path: Path) -> None:
    flows = write(tmp_path, record(WEB, API, 8080), record(TOOLBOX, DB, 5432, t=3600))
    data, _ = analyze_json(flows, "--since", "2025-11-27T10:30:00Z")
    assert data["summary"]["verdicts"] == {
        "allowed": 0,
        "denied": 1,
        "unrestricted": 0,
        "unknown": 0,
    }


def test_the_table_has_summary_connections_and_findings(tmp_path: Path) -> None:
    flows = write(
        tmp_path, record(WEB, API, 8080), record(TOOLBOX, DB, 5432), record(API, DB, 5432)
    )
    result = run("analyze", "--cluster", CLUSTER, "--flows", flows, "--top", "1")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "3 connection record(s) from flow log" in out
    assert "verdict" in out and "denied" in out
    assert "top 1 by bytes; --all for every one" in out
    assert "unexpected-flow (1)" in out and "unused-rule" in out
    assert "more (--all, or -o json)" in out
    every = run("analyze", "--cluster", CLUSTER, "--flows", flows, "--all").stdout
    assert "Connections by workload (3 groups)" in every and "more (--all" not in every


def test_a_pcap_is_analysed_like_a_flow_log(tmp_path: Path) -> None:
    path = tmp_path / "capture.pcap"
    frames = [
        (IP(src=TOOLBOX, dst=DB) / TCP(sport=47000, dport=5432, flags="S")),
        (IP(src=DB, dst=TOOLBOX) / TCP(sport=5432, dport=47000, flags="SA")),
        (IP(src=TOOLBOX, dst=DB) / TCP(sport=47000, dport=5432, flags="A")),
    ]
    with PcapWriter(str(path), linktype=1) as writer:
        for i, frame in enumerate(frames):
            packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / frame
            packet.time = T0 + i
            writer.write(packet)
    data, _ = analyze_json(str(path))
    assert data["summary"]["verdicts"]["denied"] == 1
    (conn,) = data["connections"]
    assert (conn["client"]["workload"], conn["server"]["workload"], conn["port"]) == (
        "toolbox",
        "db",
        5432,
    )


# ------------------------------------------------------------------ graph


def test_graph_formats(tmp_path: Path) -> None:
    flows = write(tmp_path, record(WEB, API, 8080), record(TOOLBOX, DB, 5432))
    base = ["graph", "--cluster", CLUSTER, "--flows", flows]
    grafana = json.loads(run(*base).stdout)
    assert {e["id"] for e in grafana["edges"]} == {"ops/toolbox->store/db", "store/web->store/api"}
    dot = run(*base, "--format", "dot").stdout
    assert dot.startswith("digraph netwatch {") and '"ops/toolbox" -> "store/db"' in dot
    out = tmp_path / "g.graphml"
    result = run(*base, "--format", "graphml", "--out", str(out))
    assert result.exit_code == 0 and result.stdout == ""
    g = nx.read_graphml(out)
    assert g.edges["ops/toolbox", "store/db"]["verdict"] == "denied"
