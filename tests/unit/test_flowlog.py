"""Flow log format (DESIGN §5): deterministic writing, validated reading, the schema."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jsonschema
import pytest

from netwatch.capture.flowlog import (
    ENDPOINT_FIELDS,
    FIELD_ORDER,
    FlowLogError,
    FlowLogReader,
    connection_to_record,
    format_record,
    read_flow_log,
    schema,
    write_connections,
)
from netwatch.core.flow import Connection, Orientation
from netwatch.core.model import Protocol

FIXTURES = Path(__file__).parents[2] / "fixtures" / "flows"

EXAMPLE = Connection(
    client_ip="10.244.1.5",
    client_port=43512,
    server_ip="10.244.2.7",
    server_port=8080,
    protocol=Protocol.TCP,
    first_seen=1764250000.12,
    last_seen=1764250003.40,
    packets_out=12,
    bytes_out=3456,
    packets_in=10,
    bytes_in=80211,
    orientation=Orientation.SYN,
    node="node-1",
    interface="veth1a2b",
)
EXAMPLE_LINE = (
    '{"client_ip": "10.244.1.5", "client_port": 43512, "server_ip": "10.244.2.7", '
    '"server_port": 8080, "protocol": "TCP", "first_seen": 1764250000.12, '
    '"last_seen": 1764250003.4, "packets_out": 12, "bytes_out": 3456, "packets_in": 10, '
    '"bytes_in": 80211, "orientation": "syn", "node": "node-1", "interface": "veth1a2b"}'
)

VARIANTS = [
    EXAMPLE,
    Connection(
        client_ip="fd00::5",
        client_port=40100,
        server_ip="fd00::7",
        server_port=443,
        protocol=Protocol.TCP,
        first_seen=1.5,
        last_seen=1.5,
    ),
    Connection(
        client_ip="10.0.0.1",
        client_port=77,
        server_ip="10.0.0.2",
        server_port=8,
        protocol=Protocol.ICMP,
        first_seen=0.0,
        last_seen=2.0,
        packets_out=1,
        bytes_out=84,
        orientation=Orientation.SYN,
    ),
    Connection(
        client_ip="10.244.1.5",
        client_port=51000,
        server_ip="10.244.2.9",
        server_port=6379,
        protocol=Protocol.TCP,
        first_seen=10.0,
        last_seen=11.0,
        orientation=Orientation.SOCKET,
        node="node-2",
        service_ip="10.96.0.20",
        service_port=6379,
    ),
]


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_writes_the_design_example_byte_for_byte() -> None:
    out = io.StringIO()
    assert write_connections([EXAMPLE, EXAMPLE], out) == 2
    assert out.getvalue() == f"{EXAMPLE_LINE}\n{EXAMPLE_LINE}\n"


def test_key_order_is_fixed_and_service_fields_follow_when_set() -> None:
    assert list(connection_to_record(EXAMPLE)) == list(FIELD_ORDER)
    assert list(connection_to_record(VARIANTS[3]))[-2:] == ["service_ip", "service_port"]


@pytest.mark.parametrize("conn", VARIANTS, ids=["example", "ipv6", "icmp", "service"])
def test_round_trip_is_lossless_and_written_records_match_the_schema(
    conn: Connection, tmp_path: Path
) -> None:
    record = connection_to_record(conn)
    jsonschema.Draft202012Validator(schema()).validate(json.loads(format_record(record)))
    path = tmp_path / "flows.jsonl"
    with path.open("w") as out:
        write_connections([conn], out)
    log = read_flow_log(path)
    assert log.connections == (conn,)
    assert log.issues == ()


def test_enriched_records_validate_and_read_back_as_their_connection(tmp_path: Path) -> None:
    record = connection_to_record(
        EXAMPLE,
        client={
            "kind": "pod",
            "namespace": "shop",
            "name": "frontend-7d9f-x2",
            "workload": "frontend",
            "workload_kind": "Deployment",
        },
        server={
            "kind": "pod",
            "namespace": "shop",
            "name": "cart-0",
            "workload": "cart",
            "workload_kind": "StatefulSet",
            "service": "cart",
        },
        verdict="allowed",
    )
    assert list(record)[-3:] == ["client", "server", "verdict"]
    assert list(record["client"]) == list(ENDPOINT_FIELDS)  # type: ignore[call-overload]
    path = tmp_path / "enriched.jsonl"
    write_lines(path, [format_record(record)])
    log = read_flow_log(path, strict=True)
    assert log.connections == (EXAMPLE,)


def test_writing_refuses_nan_rather_than_emit_invalid_json() -> None:
    broken = Connection("10.0.0.1", 1, "10.0.0.2", 2, Protocol.UDP, float("nan"), 1.0)
    with pytest.raises(ValueError, match="JSON compliant"):
        write_connections([broken], io.StringIO())


def test_schema_is_valid_and_documents_every_field() -> None:
    doc = schema()
    jsonschema.Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    props = doc["properties"]
    for field in (*FIELD_ORDER, "service_ip", "service_port", "client", "server", "verdict"):
        assert "description" in props[field], field
    endpoint = doc["$defs"]["endpoint"]["properties"]
    assert set(endpoint) == set(ENDPOINT_FIELDS)
    assert props["verdict"]["enum"] == ["allowed", "unrestricted", "denied", "unknown"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"server_port": 70000}, "server_port: 70000 is greater than the maximum of 65535"),
        ({"client_port": -1}, "client_port: -1 is less than the minimum of 0"),
        ({"bytes_out": "12"}, "bytes_out: '12' is not of type 'integer'"),
        ({"packets_in": True}, "packets_in: True is not of type 'integer'"),
        ({"protocol": "tcp"}, "protocol: 'tcp' is not one of ['TCP', 'UDP', 'SCTP', 'ICMP']"),
        ({"orientation": "guess"}, "orientation: 'guess' is not one of"),
        ({"server_ip": "10.0.0.256"}, "server_ip: '10.0.0.256' is not an IPv4 or IPv6 address"),
        ({"client_ip": "fd00::1"}, "server_ip: IPv4 but client_ip is IPv6"),
        ({"last_seen": 1.0}, "last_seen: 1.0 is before first_seen 1764250000.12"),
        ({"bytes_in": None}, "bytes_in: None is not of type 'integer'"),
        ({"nodes": "x"}, "nodes: unknown field"),
        ({"service_port": 80}, "service_ip: required when service_port is set"),
        ({"service_ip": "10.96.0.1", "service_port": 65536}, "service_port: 65536 is greater"),
        ({"client": {"kind": "pod", "labels": {}}}, "client.labels: unknown field"),
        ({"server": {"name": "x"}}, "server.kind: required field is missing"),
        ({"verdict": "ok"}, "verdict: 'ok' is not one of"),
    ],
)
def test_a_bad_field_is_reported_with_file_line_and_field(
    change: dict[str, object], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    bad = json.loads(EXAMPLE_LINE) | change
    write_lines(tmp_path / "flows.jsonl", [EXAMPLE_LINE, json.dumps(bad), EXAMPLE_LINE])
    log = read_flow_log("flows.jsonl")
    assert log.connections == (EXAMPLE, EXAMPLE), "valid lines are never lost"
    assert log.skipped_lines == 1
    assert len(log.issues) == 1
    assert str(log.issues[0]).startswith(f"flows.jsonl:2: {expected}")


def test_missing_field_is_named() -> None:
    record = json.loads(EXAMPLE_LINE)
    del record["bytes_out"]
    reader = FlowLogReader([json.dumps(record)], source="f.jsonl")
    assert list(reader) == []
    assert [str(i) for i in reader.issues] == ["f.jsonl:1: bytes_out: required field is missing"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (EXAMPLE_LINE[:85], "not valid JSON: Unterminated string starting at column 78"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"a": NaN}', "not valid JSON: NaN is not valid JSON"),
        ('{"a": 1, "a": 2}', "not valid JSON: duplicate field 'a'"),
        (b"\xff\xfe{}", "not UTF-8 (byte 1 of the line)"),
    ],
)
def test_lines_that_are_not_records_are_reported(line: str | bytes, expected: str) -> None:
    reader = FlowLogReader([line], source="f.jsonl")
    assert list(reader) == []
    assert [str(i) for i in reader.issues] == [f"f.jsonl:1: {expected}"]


def test_blank_lines_are_ignored_but_counted_for_line_numbers() -> None:
    lines = [EXAMPLE_LINE, "", "   ", "\r\n", "oops", EXAMPLE_LINE + "\r\n"]
    reader = FlowLogReader(lines, source="f")
    assert list(reader) == [EXAMPLE, EXAMPLE]
    assert [(i.line, i.field) for i in reader.issues] == [(5, None)]


def test_a_byte_order_mark_on_the_first_line_is_tolerated() -> None:
    reader = FlowLogReader([b"\xef\xbb\xbf" + EXAMPLE_LINE.encode()], source="f")
    assert list(reader) == [EXAMPLE]


def test_strict_mode_makes_the_first_bad_line_fatal(tmp_path: Path) -> None:
    path = tmp_path / "flows.jsonl"
    write_lines(path, [EXAMPLE_LINE, "{}", "also bad"])
    with pytest.raises(FlowLogError) as info:
        read_flow_log(path, strict=True)
    assert info.value.issues[0].line == 2
    assert f"{path}:2: client_ip: required field is missing" in str(info.value)


def test_issues_are_capped_but_every_skipped_line_is_counted() -> None:
    reader = FlowLogReader(["x"] * 50 + [EXAMPLE_LINE], source="f", max_issues=10)
    assert list(reader) == [EXAMPLE]
    assert (len(reader.issues), reader.skipped_lines) == (10, 50)


def test_unreadable_file_is_a_flow_log_error(tmp_path: Path) -> None:
    with pytest.raises(FlowLogError, match=r"missing\.jsonl: No such file"):
        read_flow_log(tmp_path / "missing.jsonl")


def test_good_fixture_reads_cleanly_and_is_written_back_identically() -> None:
    path = FIXTURES / "good.jsonl"
    log = read_flow_log(path, strict=True)
    assert len(log.connections) == 8
    assert {c.protocol for c in log.connections} == set(Protocol)
    out = io.StringIO()
    write_connections(log.connections, out)
    assert out.getvalue() == path.read_text(), "the fixture is in canonical form"


def test_broken_fixture_keeps_valid_lines_and_reports_each_bad_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(FIXTURES)
    log = read_flow_log("broken.jsonl")
    assert len(log.connections) == 4
    assert log.skipped_lines == 10
    assert [str(i) for i in log.issues] == [
        "broken.jsonl:3: server_port: 70000 is greater than the maximum of 65535",
        "broken.jsonl:5: not valid JSON: Unterminated string starting at column 118",
        "broken.jsonl:6: bytes_in: required field is missing",
        "broken.jsonl:7: protocol: 'tcp' is not one of ['TCP', 'UDP', 'SCTP', 'ICMP']",
        "broken.jsonl:9: client_ip: '10.244.1.300' is not an IPv4 or IPv6 address",
        "broken.jsonl:10: last_seen: 1764249999.0 is before first_seen 1764250000.05",
        "broken.jsonl:11: byte_out: unknown field",
        "broken.jsonl:12: expected a JSON object, got list",
        "broken.jsonl:14: orientation: 'guess' is not one of ['syn', 'socket', 'heuristic']",
        "broken.jsonl:14: packets_out: -12 is less than the minimum of 0",
        "broken.jsonl:15: not valid JSON: Expecting ',' delimiter at column 201",
    ]
