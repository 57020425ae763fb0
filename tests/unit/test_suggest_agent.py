"""`netwatch.agent.suggestions.Suggester`: the agent's suggestions and their memory bound."""

from __future__ import annotations

from dataclasses import replace

import pytest

from netwatch.agent.suggestions import Suggester
from netwatch.core.attribution import Attributor
from netwatch.core.model import PodName, Uid
from tests.unit.test_suggest import API, CLIENT, DB, T0, WEB_A, conn, shop, shop_pods


def test_inventory_rebuilds_do_not_grow_the_observations() -> None:
    cluster = shop()
    suggester = Suggester()
    for generation in range(20):
        attributor = Attributor.from_cluster(cluster)
        suggester.add(attributor.attribute(conn(CLIENT, API, 8080, at=T0 + generation)))
        suggester.add(attributor.attribute(conn(WEB_A, DB, 5432, at=T0 + generation)))
    assert suggester.observations == 2


def test_observations_of_a_deleted_pod_are_dropped_after_the_grace_period() -> None:
    attributor = Attributor.from_cluster(shop())
    suggester = Suggester(grace=60.0)
    suggester.add(attributor.attribute(conn(CLIENT, API, 8080)))
    suggester.add(attributor.attribute(conn(WEB_A, DB, 5432)))
    without_client = shop(pods=[p for p in shop_pods() if p.name != "client-h3-x"])
    assert suggester.expire(without_client, now=T0 + 10) == 0
    assert suggester.expire(without_client, now=T0 + 69) == 0
    assert suggester.expire(without_client, now=T0 + 70) == 1
    assert suggester.observations == 1


def test_a_pod_back_in_the_inventory_starts_its_grace_period_over() -> None:
    attributor = Attributor.from_cluster(shop())
    suggester = Suggester(grace=60.0)
    suggester.add(attributor.attribute(conn(CLIENT, API, 8080)))
    without_client = shop(pods=[p for p in shop_pods() if p.name != "client-h3-x"])
    assert suggester.expire(without_client, now=T0) == 0
    assert suggester.expire(shop(), now=T0 + 30) == 0
    assert suggester.expire(without_client, now=T0 + 60) == 0
    assert suggester.expire(without_client, now=T0 + 120) == 1


def test_expiring_a_replaced_pod_keeps_its_workloads_suggestion_and_evidence() -> None:
    """A rolling update: web-h1-x is replaced by web-h1-z (another uid and address)."""
    replaced = next(p for p in shop_pods() if p.name == "web-h1-x")
    successor = replace(
        replaced, name=PodName("web-h1-z"), uid=Uid("uid-a-web-h1-z"), ips=("10.0.1.11",)
    )
    both = shop(extra_pods=[successor])
    after = shop(pods=[*(p for p in shop_pods() if p.name != "web-h1-x"), successor])
    attributor = Attributor.from_cluster(both)
    suggester = Suggester(interval=0.0, grace=60.0)
    suggester.add(attributor.attribute(conn(WEB_A, DB, 5432, at=T0)))
    suggester.add(attributor.attribute(conn("10.0.1.11", DB, 5432, at=T0 + 500)))
    before = suggester.render(Attributor.from_cluster(both), now=T0 + 1000)
    assert "web-netwatch" in before
    suggester.render(Attributor.from_cluster(after), now=T0 + 1000)
    assert suggester.observations == 2
    assert suggester.render(Attributor.from_cluster(after), now=T0 + 1060) == before
    assert suggester.observations == 1


def test_at_the_bound_the_least_recently_seen_half_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attributor = Attributor.from_cluster(shop())
    suggester = Suggester(max_observations=4)
    for i, port in enumerate((8080, 8081, 8082, 8083)):
        suggester.add(attributor.attribute(conn(CLIENT, API, port, at=T0 + 100 - i)))
    suggester.add(attributor.attribute(conn(CLIENT, API, 9000, at=T0)))
    assert suggester.observations == 3
    assert "reached their bound" in caplog.text
    ports = sorted(o.sample.port for o in suggester._observed)
    assert ports == [8080, 8081, 9000]


def test_the_bound_must_leave_room_for_half() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        Suggester(max_observations=1)
