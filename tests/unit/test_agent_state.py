"""The agent's `--state-dir`: counters continue across a crash, exactly once.

An agent "crashes" here by being abandoned — its server stopped and its state lock
released, with no final drain, no final checkpoint (what `kill -9` leaves behind). The
real eBPF journal across a real `kill -9` is `tests/privileged/test_agent_kill.py`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from netwatch.agent import Agent, AgentConfig
from netwatch.agent.inventory import BufferedSink, SnapshotFeed
from netwatch.agent.state import StateDir, StateDirError
from netwatch.capture.base import FlowSource, Journaled
from netwatch.capture.replay import ReplaySource
from netwatch.cli.main import cli
from netwatch.core.flow import Connection
from netwatch.server import ServerConfig
from tests.unit.agent_fixtures import (
    API,
    DB,
    EXTERNAL,
    T0,
    WEB,
    Clock,
    conn,
    flow_labels,
    samples,
    write_cluster,
)


class ScriptedJournal:
    """A `Journaled` source with scripted drains: drain *i* is journal position *i*.

    `recover(p)` queues the batches after `p` that an earlier incarnation drained (the
    `drained` list shared between incarnations plays the journal's files)."""

    def __init__(self, batches: Sequence[Sequence[Connection]], drained: list[int]) -> None:
        self._batches = list(batches)
        self._drained = drained
        self._queue: list[Connection] = []
        self._position = drained[-1] if drained else 0
        self.acknowledged: list[int] = []
        self.recovered_after: int | None = None

    @property
    def finished(self) -> bool:
        return False

    @property
    def position(self) -> int:
        return self._position

    def drain(self) -> list[Connection]:
        self._position += 1
        self._drained.append(self._position)
        out, self._queue = self._queue, []
        index = self._position - 1
        return out + list(self._batches[index] if index < len(self._batches) else [])

    def recover(self, position: int) -> int:
        self.recovered_after = position
        for p in self._drained:
            if p > position:
                self._queue.extend(self._batches[p - 1])
        return len(self._queue)

    def acknowledge(self, position: int) -> None:
        self.acknowledged.append(position)

    def close(self) -> None:
        pass


def start_agent(
    tmp_path: Path, flows: FlowSource, clock: Clock, *, state: Path | None = None
) -> Agent:
    cluster = tmp_path / "cluster.yaml"
    if not cluster.exists():
        tmp_path.mkdir(parents=True, exist_ok=True)
        write_cluster(cluster)
    sink = BufferedSink()
    agent = Agent(
        config=AgentConfig(node="node-a"),
        flows=flows,
        inventory=SnapshotFeed([str(cluster)], sink, clock=clock),
        sink=sink,
        server=ServerConfig(port=0),
        state=StateDir(state or tmp_path / "state"),
        clock=clock,
    )
    agent.start()
    return agent


def crash(agent: Agent) -> None:
    """What kill -9 leaves: no final drain, no final checkpoint, the lock released."""
    agent.server.stop()
    assert agent._state is not None
    agent._state.close()


BATCHES = [
    [],  # the drain in start()
    [conn(WEB, API, 8080, at=T0), conn(DB, API, 8080, at=T0)],
    [conn(WEB, API, 8080, at=T0 + 1), conn(WEB, EXTERNAL, 443, at=T0 + 2, cport=40001)],
    [conn(WEB, API, 8080, at=T0 + 3, cport=40002)],
]


def totals(agent: Agent) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    names = ("netwatch_flows_total", "netwatch_flow_bytes_total", "netwatch_policy_rule_hits_total")
    return {name: samples(agent, name) for name in names}


def uninterrupted_totals(tmp_path: Path, clock: Clock) -> dict[str, Any]:
    """What an agent that never stopped shows after every batch: the reference."""
    reference = start_agent(tmp_path, ReplaySource.from_batches(BATCHES), clock)
    for _ in BATCHES[1:]:
        reference.step()
    want = totals(reference)
    reference.shutdown()
    return want


def test_counters_continue_across_a_crash_without_loss_or_double_counting(
    tmp_path: Path,
) -> None:
    clock = Clock()
    want = uninterrupted_totals(tmp_path / "ref", clock)

    first = start_agent(tmp_path, ReplaySource.from_batches(BATCHES[:2]), clock)
    first.step()
    crash(first)
    second = start_agent(tmp_path, ReplaySource.from_batches([[], *BATCHES[2:]]), clock)
    second.step()
    second.step()
    try:
        assert totals(second) == want
        # the connection on client port 40000 spans the crash: still one connection
        assert (
            samples(second, "netwatch_flows_total")[flow_labels("web", "api", 8080, "allowed")] == 2
        )
    finally:
        second.shutdown()


def test_what_was_drained_but_not_checkpointed_is_replayed_once(tmp_path: Path) -> None:
    clock = Clock()
    want = uninterrupted_totals(tmp_path / "ref", clock)

    drained: list[int] = []
    first_source = ScriptedJournal(BATCHES, drained)
    first = start_agent(tmp_path, first_source, clock)
    first.step()  # position 2 counted and checkpointed
    assert first_source.acknowledged == [1, 2]
    first_source.drain()  # position 3 taken from the kernel; the process dies before counting
    crash(first)

    second_source = ScriptedJournal(BATCHES, drained)
    second = start_agent(tmp_path, second_source, clock)  # recovers 3, drains 4
    try:
        assert second_source.recovered_after == 2
        assert second_source.acknowledged == [4]
        assert totals(second) == want
    finally:
        second.shutdown()


def test_a_failed_checkpoint_does_not_acknowledge_the_journal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = ScriptedJournal(BATCHES, [])
    agent = start_agent(tmp_path, source, Clock())
    try:
        state = tmp_path / "state"
        state.chmod(0o500)  # root ignores modes: make the temp file's name a directory instead
        (state / ".checkpoint.json.tmp").mkdir()
        with caplog.at_level(logging.ERROR, logger="netwatch.agent"):
            agent.step()
        assert "writing the checkpoint failed" in caplog.text
        assert source.acknowledged == [1]
        (state / ".checkpoint.json.tmp").rmdir()
        agent.step()
        assert source.acknowledged == [1, 3]
    finally:
        (tmp_path / "state").chmod(0o700)
        agent.shutdown()


def test_an_unreadable_checkpoint_is_set_aside_and_counting_starts_from_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "checkpoint.json").write_text('{"format": 1, "node": "node-a"')
    with caplog.at_level(logging.ERROR, logger="netwatch.agent"):
        agent = start_agent(tmp_path, ReplaySource.from_batches(BATCHES), Clock())
    try:
        assert "checkpoint.json: unreadable checkpoint (not JSON" in caplog.text
        assert [p.name.split("-")[0] for p in state.glob("checkpoint.json.unusable-*")] == [
            "checkpoint.json.unusable"
        ]
        agent.step()
        assert samples(agent, "netwatch_flows_total")[flow_labels("db", "api", 8080, "denied")] == 1
        assert json.loads((state / "checkpoint.json").read_text())["node"] == "node-a"
    finally:
        agent.shutdown()


def test_another_nodes_checkpoint_is_not_adopted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = start_agent(tmp_path, ReplaySource.from_batches(BATCHES), Clock())
    first.step()
    first.shutdown()
    state = StateDir(tmp_path / "state")
    with caplog.at_level(logging.ERROR, logger="netwatch.agent"):
        assert state.load(node="node-b") is None
    state.close()
    assert "checkpoint of node 'node-a', this agent is 'node-b'" in caplog.text


def test_one_agent_per_state_directory(tmp_path: Path) -> None:
    held = StateDir(tmp_path / "state")
    try:
        with pytest.raises(StateDirError, match="in use by another netwatch agent"):
            StateDir(tmp_path / "state")
        result = CliRunner().invoke(
            cli, ["agent", "--backend", "sniff", "--state-dir", str(tmp_path / "state")]
        )
        assert result.exit_code == 2, result.output
        assert "in use by another netwatch agent" in result.output
    finally:
        held.close()


def test_the_replay_backend_refuses_a_state_directory(tmp_path: Path) -> None:
    flows = tmp_path / "flows.jsonl"
    flows.write_text("")
    result = CliRunner().invoke(
        cli,
        ["agent", "--backend", "replay", "--flows", str(flows), "--state-dir", str(tmp_path / "s")],
    )
    assert result.exit_code == 2
    assert "--state-dir does not go with --backend replay" in result.output


def test_the_scripted_source_is_journaled() -> None:
    assert isinstance(ScriptedJournal([], []), Journaled)
    assert not isinstance(ReplaySource.from_batches([]), Journaled)


def test_the_flow_map_size_is_bounded_below() -> None:
    result = CliRunner().invoke(cli, ["agent", "--backend", "ebpf", "--map-size", "8"])
    assert result.exit_code == 2
    assert "--map-size" in result.output and "8 is not in the range x>=16" in result.output
