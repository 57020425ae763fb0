"""The replay backend: a FlowSource over a flow log, and the scripted test double."""

from __future__ import annotations

from pathlib import Path

import pytest

from netwatch.capture.base import FlowSource
from netwatch.capture.flowlog import FlowLogError, read_flow_log
from netwatch.capture.replay import ReplaySource
from netwatch.core.flow import Connection
from netwatch.core.model import Protocol

FIXTURES = Path(__file__).parents[2] / "fixtures" / "flows"


def conn(port: int) -> Connection:
    return Connection("10.0.0.1", port, "10.0.0.2", 80, Protocol.TCP, 1.0, 2.0, 1, 60, 1, 40)


def test_file_source_returns_every_record_verbatim_on_the_first_drain() -> None:
    source: FlowSource = ReplaySource.from_file(FIXTURES / "good.jsonl")
    first = source.drain()
    assert tuple(first) == read_flow_log(FIXTURES / "good.jsonl").connections
    assert len({c.five_tuple for c in first}) == 7, "delta records of one flow are not merged"
    assert source.finished
    assert source.drain() == []
    source.close()
    source.close()


def test_batches_stream_a_log_in_bounded_pieces() -> None:
    source = ReplaySource.from_file(FIXTURES / "good.jsonl", batch_size=3)
    sizes = []
    while not source.finished:
        sizes.append(len(source.drain()))
    assert sizes == [3, 3, 2]


def test_bad_lines_are_skipped_and_exposed() -> None:
    source = ReplaySource.from_file(FIXTURES / "broken.jsonl")
    assert len(source.drain()) == 4
    assert source.skipped_lines == 10
    assert source.issues[0].line == 3


def test_strict_replay_fails_on_the_first_bad_line() -> None:
    source = ReplaySource.from_file(FIXTURES / "broken.jsonl", strict=True)
    with pytest.raises(FlowLogError, match=r"broken\.jsonl:3: server_port"):
        source.drain()
    source.close()


def test_missing_file_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(FlowLogError, match="No such file"):
        ReplaySource.from_file(tmp_path / "nope.jsonl")


def test_scripted_batches_come_back_one_per_drain() -> None:
    source = ReplaySource.from_batches([[conn(1), conn(2)], [], [conn(3)]])
    assert [c.client_port for c in source.drain()] == [1, 2]
    assert source.drain() == []
    assert not source.finished, "an empty interval is not the end of a live source"
    assert [c.client_port for c in source.drain()] == [3]
    assert source.drain() == []
    assert source.finished


def test_in_memory_connections_batch_like_a_file() -> None:
    source = ReplaySource.from_connections([conn(p) for p in range(5)], batch_size=5)
    assert len(source.drain()) == 5
    assert not source.finished
    assert source.drain() == []
    assert source.finished


def test_closing_early_finishes_the_source() -> None:
    source = ReplaySource.from_file(FIXTURES / "good.jsonl", batch_size=1)
    source.drain()
    source.close()
    assert source.finished
    assert source.drain() == []
