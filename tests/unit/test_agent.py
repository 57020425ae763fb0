"""The agent end to end in one process: replay capture, snapshot files, real HTTP.

The replay backend scripts each drain (`ReplaySource.from_batches`), a fake clock drives
time, and every assertion reads what a scraper would: `/metrics` and `/readyz` over a
real HTTP connection to the agent's server on 127.0.0.1 (an ephemeral port).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from netwatch.agent import Agent
from netwatch.agent.logs import JsonFormatter
from netwatch.cli.main import cli
from netwatch.core.flow import Connection
from tests.unit.agent_fixtures import (
    API,
    DB,
    EXTERNAL,
    T0,
    WEB,
    Clock,
    conn,
    flow_labels,
    get,
    make_agent,
    samples,
    write_cluster,
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def running(tmp_path: Path, clock: Clock) -> Iterator[tuple[Agent, Path]]:
    batches = [
        [],  # the drain in start()
        [conn(WEB, API, 8080, at=T0), conn(DB, API, 8080, at=T0)],
        [conn(WEB, API, 8080, at=T0 + 1), conn(WEB, EXTERNAL, 443, at=T0 + 2, cport=40001)],
        [conn(WEB, API, 8080, at=T0 + 3, cport=40002)],
    ]
    agent, cluster = make_agent(tmp_path, batches, clock, max_stale=10.0)
    agent.start()
    try:
        yield agent, cluster
    finally:
        agent.shutdown()


def test_drains_are_attributed_evaluated_and_exported(running: tuple[Agent, Path]) -> None:
    agent, _ = running
    for _ in range(3):
        agent.step()
    flows = samples(agent, "netwatch_flows_total")
    # port 40000 arrives in two drains: one connection; 40002 is the second
    assert flows[flow_labels("web", "api", 8080, "allowed")] == 2
    assert flows[flow_labels("db", "api", 8080, "denied")] == 1
    assert flows[flow_labels("web", "world", 443, "unrestricted")] == 1
    nbytes = samples(agent, "netwatch_flow_bytes_total")
    assert nbytes[flow_labels("web", "api", 8080, "allowed")] == 3 * 320
    hits = samples(agent, "netwatch_policy_rule_hits_total")
    assert list(hits.values()) == [2]
    unexpected = samples(agent, "netwatch_findings")
    assert unexpected[(("kind", "unexpected-flow"),)] == 1
    assert samples(agent, "netwatch_inventory_objects")[(("kind", "Pod"),)] == 3


def test_suggestions_are_served_as_verified_yaml(tmp_path: Path, clock: Clock) -> None:
    batches = [[], [conn(WEB, API, 8080, at=T0), conn(WEB, DB, 5432, at=T0)]]
    agent, _ = make_agent(tmp_path, batches, clock, suggest_interval=0.0)
    agent.start()
    try:
        agent.step()
        status, text = get(agent, "/api/suggestions")
    finally:
        agent.shutdown()
    assert status == 200
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert docs and {d["kind"] for d in docs} == {"NetworkPolicy"}
    db = [d for d in docs if d["spec"]["podSelector"] == {"matchLabels": {"app": "db"}}]
    (rule,) = db[0]["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["http"]  # the pod names its 5432 `http`


def test_connections_older_than_the_agent_resolve_against_the_first_snapshot(
    tmp_path: Path, clock: Clock
) -> None:
    old = T0 - 3600  # drained from pinned maps, or a replayed log
    agent, _ = make_agent(tmp_path, [[], [conn(WEB, API, 8080, at=old)]], clock)
    agent.start()
    try:
        agent.step()
        flows = samples(agent, "netwatch_flows_total")
    finally:
        agent.shutdown()
    assert flows == {flow_labels("web", "api", 8080, "allowed"): 1}


def test_readiness_needs_capture_and_a_fresh_inventory(running: tuple[Agent, Path]) -> None:
    agent, _ = running
    assert get(agent, "/readyz")[0] == 200
    assert get(agent, "/healthz")[0] == 200


def test_a_malformed_snapshot_update_keeps_the_previous_inventory(
    running: tuple[Agent, Path], clock: Clock
) -> None:
    agent, cluster = running
    cluster.write_text(cluster.read_text() + "---\nkind: [unclosed\n")
    clock.advance(5)
    agent.step()  # web -> api and db -> api still evaluated against the old policy
    flows = samples(agent, "netwatch_flows_total")
    assert flows[flow_labels("db", "api", 8080, "denied")] == 1
    assert agent.generation == 1
    assert get(agent, "/readyz")[0] == 200  # stale, but not for longer than max_stale yet
    assert samples(agent, "netwatch_inventory_stale_seconds")[()] == 0


def test_an_unavailable_inventory_turns_readiness_off_and_reports_staleness(
    running: tuple[Agent, Path], clock: Clock
) -> None:
    agent, cluster = running
    cluster.unlink()
    clock.advance(5)
    agent.step()
    clock.advance(20)
    agent.step()
    assert samples(agent, "netwatch_inventory_stale_seconds")[()] == 20
    assert get(agent, "/readyz")[0] == 503
    assert get(agent, "/healthz")[0] == 200  # still serving
    assert samples(agent, "netwatch_flows_total")  # previous inventory and counters kept
    write_cluster(cluster)
    clock.advance(5)
    agent.step()
    assert get(agent, "/readyz")[0] == 200
    assert samples(agent, "netwatch_inventory_stale_seconds")[()] == 0


def test_a_changed_snapshot_rebuilds_the_engine(running: tuple[Agent, Path], clock: Clock) -> None:
    agent, cluster = running
    agent.step()
    write_cluster(cluster, policy="")
    clock.advance(5)
    agent.step()
    agent.step()  # web -> api from port 40002 is evaluated without the policy now
    assert agent.generation == 2
    flows = samples(agent, "netwatch_flows_total")
    assert flows[flow_labels("web", "api", 8080, "unrestricted")] == 1
    assert samples(agent, "netwatch_policy_rule_hits_total")  # the old rule in its grace period


def test_graceful_shutdown_flushes_the_last_drain(tmp_path: Path, clock: Clock) -> None:
    batches = [[], [conn(WEB, API, 8080, at=T0)], [conn(DB, API, 8080, at=T0 + 1)]]
    agent, _ = make_agent(tmp_path, batches, clock)
    agent.start()
    agent.step()
    agent.shutdown()  # the third batch is drained by shutdown itself
    flows = dict(agent.box.current().telemetry.flows)
    denied = [k for k in flows if k.verdict == "denied"]
    assert len(denied) == 1
    assert flows[denied[0]].flows == 1
    assert not agent.ready


def test_run_steps_until_stopped_then_shuts_down(tmp_path: Path, clock: Clock) -> None:
    agent, _ = make_agent(tmp_path, [[], [conn(WEB, API, 8080, at=T0)]], clock, drain_interval=0.01)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,))
    thread.start()
    while agent.drains < 3:
        stop.wait(0.01)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert agent.records_total == 1


def test_a_failing_capture_drain_turns_readiness_off(running: tuple[Agent, Path]) -> None:
    agent, _ = running

    def broken() -> list[Connection]:
        raise OSError("map gone")

    agent._flows.drain = broken  # type: ignore[method-assign]
    agent.step()
    assert get(agent, "/readyz")[0] == 503
    assert get(agent, "/metrics")[0] == 200


def test_logs_are_json_lines() -> None:
    record = logging.makeLogRecord(
        {"name": "netwatch.agent", "levelname": "INFO", "msg": "x %s", "args": (1,), "node": "n"}
    )
    doc = json.loads(JsonFormatter().format(record))
    assert doc["msg"] == "x 1"
    assert doc["node"] == "n"
    assert doc["level"] == "info"


def test_cli_rejects_cluster_with_kubeconfig(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["agent", "--cluster", str(tmp_path), "--kubeconfig", "k", "--node-name", "n"]
    )
    assert result.exit_code == 2


def test_cli_replay_needs_flows(tmp_path: Path) -> None:
    cluster = tmp_path / "c.yaml"
    write_cluster(cluster)
    result = CliRunner().invoke(
        cli,
        ["agent", "--cluster", str(cluster), "--backend", "replay", "--listen", "127.0.0.1:0"],
        env={"NETWATCH_NODE_NAME": "n"},
    )
    assert result.exit_code == 2
    assert "--flows" in result.output


class InParts:
    """A `Parted` source over the replay: every drain one record per part; `fail_at`
    raises before that part (a map that vanished mid-drain). `drain()` must not be used."""

    def __init__(self, inner: object, fail_at: int | None = None) -> None:
        self.inner = inner
        self.fail_at = fail_at

    @property
    def finished(self) -> bool:
        return False

    def close(self) -> None:
        self.inner.close()  # type: ignore[attr-defined]

    def drain(self) -> list[Connection]:
        raise AssertionError("the agent must consume a Parted source in parts")

    def drain_parts(self) -> Iterator[list[Connection]]:
        for i, record in enumerate(self.inner.drain()):  # type: ignore[attr-defined]
            if i == self.fail_at:
                raise OSError("map gone mid-drain")
            yield [record]


def test_a_source_in_parts_is_counted_part_by_part(tmp_path: Path, clock: Clock) -> None:
    batches = [[], [conn(WEB, API, 8080, at=T0), conn(DB, API, 8080, at=T0, cport=40001)]]
    agent, _ = make_agent(tmp_path, batches, clock)
    agent._flows = InParts(agent._flows)
    agent.start()
    try:
        agent.step()
        assert agent.records_total == 2
        assert get(agent, "/readyz")[0] == 200
    finally:
        agent.shutdown()


def test_a_drain_failing_midway_keeps_what_came_before_and_turns_readiness_off(
    tmp_path: Path, clock: Clock
) -> None:
    batches = [[], [conn(WEB, API, 8080, at=T0), conn(DB, API, 8080, at=T0, cport=40001)]]
    agent, _ = make_agent(tmp_path, batches, clock)
    agent._flows = InParts(agent._flows, fail_at=1)
    agent.start()
    try:
        agent.step()
        assert agent.records_total == 1  # the first part was counted
        assert get(agent, "/readyz")[0] == 503
        flows = samples(agent, "netwatch_flows_total")
        assert sum(flows.values()) == 1
    finally:
        agent.shutdown()
