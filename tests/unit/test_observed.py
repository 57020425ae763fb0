"""`netwatch.core.observed.Observations`: folding by resolution value, and `retain`."""

from __future__ import annotations

import pytest

from netwatch.core import observed as observed_module
from netwatch.core.attribution import Attributor, VerdictKind
from netwatch.core.observed import Observations, group_key
from tests.builders import deny_all
from tests.unit.test_suggest import API, CLIENT, T0, WEB_A, WEB_B, conn, shop


def test_records_resolved_by_a_rebuilt_attributor_fold_into_the_same_observation() -> None:
    cluster = shop()
    first, again = Attributor.from_cluster(cluster), Attributor.from_cluster(cluster)
    early, late = conn(CLIENT, API, 8080, at=T0), conn(CLIENT, API, 8080, at=T0 + 50)
    observed = Observations([again.attribute(late), first.attribute(early)])
    assert first.attribute(early).resolution is not again.attribute(late).resolution
    [obs] = observed
    assert (obs.count, obs.first_seen, obs.last_seen) == (2, T0, T0 + 51)
    assert obs.sample.connection is early
    assert observed.records == 2


def test_a_different_verdict_for_the_same_peers_is_another_observation() -> None:
    open_, closed = (
        Attributor.from_cluster(shop()),
        Attributor.from_cluster(shop([deny_all("a/deny")])),
    )
    observed = Observations(
        [open_.attribute(conn(CLIENT, API, 8080)), closed.attribute(conn(CLIENT, API, 8080))]
    )
    assert sorted(o.verdict.value for o in observed) == ["denied", "unrestricted"]


def test_rows_and_counted_rows_find_observations_of_attributed_records() -> None:
    cluster = shop()
    first, again = Attributor.from_cluster(cluster), Attributor.from_cluster(cluster)
    observed = Observations([first.attribute(conn(CLIENT, API, 8080, at=T0 + 10))])
    row = (
        CLIENT,
        API,
        8080,
        conn(CLIENT, API, 8080).protocol,
        T0,
        T0 + 1,
        100,
        2,
        None,
        40000,
        False,
    )
    observed.add_rows([row], again)
    observed.add_counted(row, Attributor.from_cluster(cluster), 3)
    [obs] = observed
    assert (obs.count, obs.first_seen, obs.sample.connection.client_port) == (5, T0, 40000)


def test_the_identity_memo_is_bounded_by_the_observations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observed_module, "_MEMO_SLACK", 4)
    cluster = shop()
    observed = Observations()
    for _ in range(30):  # an agent rebuilding its attributor at every inventory change
        observed.add(Attributor.from_cluster(cluster).attribute(conn(CLIENT, API, 8080)))
    assert len(observed) == 1
    assert len(observed._memo) <= 2 * 1 + 4
    assert next(iter(observed)).count == 30


def test_retain_moves_dropped_evidence_to_a_kept_observation_of_the_same_group() -> None:
    attributor = Attributor.from_cluster(shop())
    old = attributor.attribute(conn(WEB_A, API, 8080, at=T0, duration=5))
    new = attributor.attribute(conn(WEB_B, API, 8080, at=T0 + 100))
    observed = Observations([old, new])
    assert group_key(next(iter(observed))) == ("a/web", "a/api", 8080, old.protocol, old.verdict)
    assert observed.retain(lambda o: o.sample is not old) == 1
    [heir] = observed
    assert heir.sample is new
    assert (heir.count, heir.first_seen, heir.last_seen) == (2, T0, T0 + 101)
    assert observed.window == (T0, T0 + 101)


def test_retain_forgets_evidence_with_no_kept_observation_of_its_group() -> None:
    attributor = Attributor.from_cluster(shop())
    observed = Observations(
        [
            attributor.attribute(conn(CLIENT, API, 8080)),
            attributor.attribute(conn(WEB_A, API, 8080)),
        ]
    )
    assert observed.retain(lambda o: o.sample.client.name != "client-h3-x") == 1
    [kept] = observed
    assert (kept.count, kept.sample.verdict) == (1, VerdictKind.UNRESTRICTED)
    assert observed.retain(lambda o: False) == 1
    assert (len(observed), observed.window, observed.records) == (0, None, 2)
    observed.add(attributor.attribute(conn(CLIENT, API, 8080)))  # the memo was reset too
    assert len(observed) == 1
