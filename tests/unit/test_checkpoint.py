"""`netwatch.core.checkpoint` + `TelemetryAccumulator.state/restore`: counters that
continue across a restart exactly as if the process had never stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netwatch.core.checkpoint import Checkpoint, CheckpointError, decode, encode
from netwatch.core.telemetry import TelemetryAccumulator, live_peers
from tests.builders import pod
from tests.telemetry_builders import (
    API,
    API_POLICY,
    BUILD,
    CORP,
    DB,
    DB_POLICY,
    T0,
    WEB_1,
    WEB_2,
    attribute,
    attributor,
    conn,
    shop_cluster,
    shop_pods,
)

POLICIES = [API_POLICY, DB_POLICY]
REPO = Path(__file__).resolve().parents[2]


def busy_accumulator() -> TelemetryAccumulator:
    """Every kind of state: counters, rule hits, an unprotected workload, a deleted
    workload inside its grace period, a deleted policy's rule, the `other` port."""
    att = attributor()
    acc = TelemetryAccumulator(grace=100.0, max_ports=2)
    acc.add_all(
        attribute(
            att,
            conn(WEB_1, API, 8080, client_port=1, at=T0, until=T0 + 4),
            conn(WEB_2, DB, 5432, client_port=2, at=T0 + 1),  # denied
            conn(API, WEB_1, 80, client_port=3, at=T0 + 2),  # web is unprotected
            conn(API, CORP, 443, client_port=4, at=T0 + 2),
            conn(API, DB, 5432, client_port=5, at=T0 + 3),
            conn(API, DB, 6000, client_port=6, at=T0 + 3),
            conn(API, DB, 7000, client_port=7, at=T0 + 3),  # beyond max_ports: `other`
        )
    )
    without_web = shop_cluster(pods=[p for p in shop_pods() if not p.name.startswith("web")])
    acc.observe_inventory(live=live_peers(without_web), policies=[DB_POLICY], at=T0 + 5)
    return acc


def roundtrip(acc: TelemetryAccumulator, *, position: int = 7) -> tuple[Checkpoint, bytes]:
    data = encode(
        Checkpoint(node="n1", position=position, written_at=T0 + 6, telemetry=acc.state())
    )
    return decode(data), data


def restored(acc: TelemetryAccumulator) -> TelemetryAccumulator:
    checkpoint, _ = roundtrip(acc)
    again = TelemetryAccumulator(grace=acc.grace, max_ports=acc.max_ports)
    again.restore(checkpoint.telemetry)
    return again


def test_a_restored_accumulator_publishes_the_same_snapshot() -> None:
    acc = busy_accumulator()
    again = restored(acc)
    assert again.snapshot(now=T0 + 10, build=BUILD) == acc.snapshot(now=T0 + 10, build=BUILD)
    assert again.state() == acc.state()


def test_the_checkpoint_keeps_node_position_and_time() -> None:
    checkpoint, data = roundtrip(busy_accumulator(), position=41)
    assert (checkpoint.node, checkpoint.position, checkpoint.written_at) == ("n1", 41, T0 + 6)
    assert json.loads(data)["format"] == 1


def test_counting_goes_on_after_a_restore_as_if_nothing_had_happened() -> None:
    """Same later input → identical state, whether or not the process restarted between."""
    later = attribute(
        attributor(),
        conn(WEB_1, API, 8080, client_port=1, at=T0 + 6, until=T0 + 8),  # same conversation
        conn(API, DB, 8000, client_port=8, at=T0 + 7),  # `other` again (port cap kept)
        conn(API, DB, 5432, client_port=9, at=T0 + 7),
    )
    never_stopped, restarted = busy_accumulator(), restored(busy_accumulator())
    for acc in (never_stopped, restarted):
        acc.add_all(later)
        acc.observe_inventory(live=live_peers(shop_cluster()), policies=POLICIES, at=T0 + 9)
        acc.expire(T0 + 200)
    assert restarted.state() == never_stopped.state()
    flows = dict(restarted.snapshot(now=T0 + 200, build=BUILD).flows)
    web_api = next(c for k, c in flows.items() if k[1] == "web" and k[3] == "api")
    assert web_api.flows == 1  # the connection open across the restart counted once
    assert {k.dst_port for k in flows if k[3] == "db"} == {"5432", "6000", "other"}


def test_deletion_clocks_survive_the_restart() -> None:
    acc = restored(busy_accumulator())
    assert acc.expire(T0 + 104) == 0  # web deleted at T0 + 5, grace 100
    assert acc.expire(T0 + 105) == 3
    rules = acc.snapshot(now=T0 + 106, build=BUILD).rule_hits
    assert {r.policy for r in rules} == {"db-ingress"}  # api-ingress's rules expired with it


CONVERSATION_ID = """
from tests.telemetry_builders import API, WEB_1, attribute, attributor, conn
from netwatch.core.telemetry import TelemetryAccumulator
acc = TelemetryAccumulator()
acc.add_all(attribute(attributor(), conn(WEB_1, API, 8080, client_port=1)))
print(acc.state().conversations[0][0])
"""


def test_conversation_ids_do_not_depend_on_the_interpreter_run() -> None:
    """`hash()` of strings changes per process; the checkpointed ids must not."""
    ids = {
        subprocess.run(
            [sys.executable, "-c", CONVERSATION_ID],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout.strip()
        for seed in ("1", "2", "random")
    }
    acc = TelemetryAccumulator()
    acc.add_all(attribute(attributor(), conn(WEB_1, API, 8080, client_port=1)))
    assert ids == {str(acc.state().conversations[0][0])}


def test_restore_refuses_an_accumulator_that_already_counted() -> None:
    acc = busy_accumulator()
    with pytest.raises(RuntimeError, match="fresh"):
        acc.restore(acc.state())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"format": 9}', "format 9"),
        (b'{"format": 1, "node": "n1", "written_at": 1}', "missing key"),
    ],
)
def test_unreadable_checkpoints_say_why(data: bytes, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        decode(data)


def test_a_malformed_row_is_named_by_its_place() -> None:
    _, data = roundtrip(busy_accumulator())
    doc = json.loads(data)
    doc["telemetry"]["flows"][1][1] = "many"
    with pytest.raises(CheckpointError, match=r"telemetry\.flows\[1\]"):
        decode(json.dumps(doc).encode())
    doc = json.loads(data)
    doc["position"] = -1
    with pytest.raises(CheckpointError, match="position"):
        decode(json.dumps(doc).encode())


def test_a_pod_reappearing_under_the_same_workload_keeps_the_deleted_state_apart() -> None:
    """Restoring does not resurrect a deleted peer as live: only observe_inventory does."""
    acc = restored(busy_accumulator())
    back = shop_cluster(pods=[*shop_pods(), pod("shop/extra", {"app": "x"}, ip="10.244.1.99")])
    acc.observe_inventory(live=live_peers(back), policies=POLICIES, at=T0 + 50)
    assert acc.expire(T0 + 1000) == 0  # web is back before its grace ran out
