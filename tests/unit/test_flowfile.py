"""`--flows` input: the fast flow-log path answers exactly like the schema-validating reader."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netwatch.capture.flowfile import FlowFile, FlowInputError, is_capture_file
from netwatch.capture.flowlog import FlowLogReader
from netwatch.core.model import Protocol

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "flows"
GOOD = {
    "client_ip": "10.244.1.5",
    "client_port": 43512,
    "server_ip": "10.244.2.7",
    "server_port": 8080,
    "protocol": "TCP",
    "first_seen": 1764250000.12,
    "last_seen": 1764250003.4,
    "packets_out": 12,
    "bytes_out": 3456,
    "packets_in": 10,
    "bytes_in": 80211,
    "orientation": "syn",
    "node": "node-1",
    "interface": "veth1a2b",
}


def exact(path: Path) -> tuple[list[Any], list[str], int]:
    with path.open("rb") as f:
        reader = FlowLogReader(f, source=str(path))
        conns = list(reader)
    return conns, [str(i) for i in reader.issues], reader.skipped_lines


def fast(path: Path) -> tuple[list[Any], list[str], int]:
    flows = FlowFile(str(path))
    conns = list(flows.connections())
    return conns, [str(i) for i in flows.issues], flows.skipped_lines


@pytest.mark.parametrize("name", ["good.jsonl", "broken.jsonl"])
def test_fixture_logs_read_the_same_on_both_paths(name: str) -> None:
    assert fast(FIXTURES / name) == exact(FIXTURES / name)


def test_rows_sum_both_directions() -> None:
    (row,) = list(FlowFile(str(_write_lines(Path("/tmp"), [json.dumps(GOOD)]))).rows())
    assert row == (
        "10.244.1.5",
        "10.244.2.7",
        8080,
        Protocol.TCP,
        1764250000.12,
        1764250003.4,
        3456 + 80211,
        22,
        None,
        43512,
        False,
    )


def test_rows_say_whether_the_orientation_was_guessed(tmp_path: Path) -> None:
    guessed = {**GOOD, "orientation": "heuristic"}
    (row,) = list(FlowFile(str(_write_lines(tmp_path, [json.dumps(guessed)]))).rows())
    assert row[10] is True


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-2, max_value=70000),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1, max_value=2e9),
    st.sampled_from(
        [
            "TCP",
            "ICMP",
            "tcp",
            "syn",
            "socket",
            "",
            "10.0.0.1",
            "fe80::1%eth0",
            "::1",
            "1.2.3",
            "10.0.0.256",
            "node-1",
            "2001:db8::1",
        ]
    ),
    st.lists(st.integers(), max_size=2),
)


@st.composite
def records(draw: st.DrawFn) -> str:
    record: dict[str, Any] = dict(GOOD)
    for key in draw(st.lists(st.sampled_from([*GOOD, "service_ip", "service_port", "extra"]))):
        if draw(st.booleans()):
            record.pop(key, None)
        else:
            record[key] = draw(_VALUES)
    text = json.dumps(record)
    if draw(st.integers(0, 9)) == 0:
        text = text.replace(", ", ",")  # compact writers
    if draw(st.integers(0, 19)) == 0:
        text = text[: draw(st.integers(0, len(text)))]  # cut off
    return text


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(records(), min_size=1, max_size=5))
def test_fast_path_never_disagrees_with_the_schema(lines: list[str], tmp_path: Path) -> None:
    path = _write_lines(tmp_path, lines)
    assert fast(path) == exact(path)


def test_repeated_keys_take_the_exact_path() -> None:
    line = json.dumps(GOOD)[:-1] + ', "server_port": 9090}'
    path = _write_lines(Path("/tmp"), [line], name="dup.jsonl")
    conns, issues, skipped = fast(path)
    assert conns == [] and skipped == 1 and "duplicate field" in issues[0]


def test_strict_stops_at_the_first_bad_line(tmp_path: Path) -> None:
    path = _write_lines(tmp_path, [json.dumps(GOOD), "{", json.dumps(GOOD)])
    with pytest.raises(FlowInputError, match=r":2: not valid JSON"):
        list(FlowFile(str(path), strict=True).rows())


def test_the_window_keeps_records_that_overlap_it(tmp_path: Path) -> None:
    lines = [
        json.dumps({**GOOD, "first_seen": t, "last_seen": t + 10.0})
        for t in (100.0, 195.0, 250.0, 301.0)
    ]
    flows = FlowFile(str(_write_lines(tmp_path, lines)), since=200.0, until=300.0)
    assert [r[4] for r in flows.rows()] == [195.0, 250.0]
    assert flows.outside_window == 2 and flows.records == 4


def test_gzipped_logs_are_read(tmp_path: Path) -> None:
    path = tmp_path / "flows.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps(GOOD) + "\n").encode()))
    assert not is_capture_file(str(path))
    assert len(list(FlowFile(str(path)).rows())) == 1


def test_captures_are_recognized_by_magic(tmp_path: Path) -> None:
    path = tmp_path / "capture.bin"
    path.write_bytes(b"\xd4\xc3\xb2\xa1" + bytes(20))
    assert is_capture_file(str(path))
    assert is_capture_file(str(tmp_path / "missing.pcap"))
    assert not is_capture_file(str(FIXTURES / "good.jsonl"))


def test_a_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(FlowInputError, match="No such file"):
        list(FlowFile(str(tmp_path / "nope.jsonl")).rows())


def _write_lines(directory: Path, lines: list[str], *, name: str = "flows.jsonl") -> Path:
    path = directory / name
    path.write_text("".join(line + "\n" for line in lines))
    return path
