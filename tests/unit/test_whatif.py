"""`netwatch.core.whatif`: which observed connections a proposed policy set would deny."""

from __future__ import annotations

from netwatch.core.model import Protocol
from netwatch.core.policy import Peer
from netwatch.core.whatif import whatif
from tests.builders import deny_all, policy, port, rule, sel
from tests.unit.test_suggest import API, CLIENT, DB, WEB_A, WEB_B, attribute, conn, shop

DB_FROM_API = policy("a/db", sel(app="db"), ingress=[rule([Peer(pod_selector=sel(app="api"))])])


def test_nothing_denied_is_ok() -> None:
    attributor, observed = attribute(shop(), [conn(API, DB, 5432)])
    result = whatif(observed, attributor=attributor, policies=[DB_FROM_API], replace=False)
    assert result.ok and result.checked == 1 and result.denied == ()


def test_denials_are_grouped_per_workload_pair_port_and_protocol() -> None:
    conns = [
        conn(WEB_A, DB, 5432, at=200.0),
        conn(WEB_B, DB, 5432, at=100.0),
        conn(WEB_A, DB, 5433),
        conn(API, DB, 5432),
    ]
    attributor, observed = attribute(shop(), conns)
    result = whatif(observed, attributor=attributor, policies=[DB_FROM_API], replace=False)
    assert not result.ok and result.denied_connections == 3
    groups = [(g.client, g.server, g.protocol, g.port, g.count) for g in result.denied]
    assert groups == [
        ("a/web", "a/db", Protocol.TCP, 5432, 2),
        ("a/web", "a/db", Protocol.TCP, 5433, 1),
    ]
    first = result.denied[0]
    assert first.example.client_ip == WEB_B  # the earliest record
    assert first.verdicts == {"unrestricted": 2}  # what today's (no) policies said


def test_with_replace_the_existing_policies_are_dropped() -> None:
    existing = deny_all("b/lockdown")  # isolates the client in b both ways
    cluster = shop([existing])
    attributor, observed = attribute(cluster, [conn(CLIENT, API, 8080)])
    allow_api = policy("a/api", sel(app="api"), ingress=[rule()])
    assert whatif(observed, attributor=attributor, policies=[allow_api], replace=True).ok
    alongside = whatif(observed, attributor=attributor, policies=[allow_api], replace=False)
    assert alongside.already_denied == 1 and alongside.still_denied == 1 and alongside.ok


def test_a_same_named_proposal_replaces_the_existing_policy() -> None:
    cluster = shop([DB_FROM_API])
    attributor, observed = attribute(cluster, [conn(API, DB, 5432)])
    narrowed = policy("a/db", sel(app="db"), ingress=[rule([], [port(1)])])
    result = whatif(observed, attributor=attributor, policies=[narrowed], replace=False)
    assert not result.ok


def test_connections_denied_today_are_counted_unless_included() -> None:
    cluster = shop([DB_FROM_API])
    attributor, observed = attribute(cluster, [conn(WEB_A, DB, 5432), conn(API, DB, 5432)])
    same = [DB_FROM_API]
    result = whatif(observed, attributor=attributor, policies=same, replace=True)
    assert result.ok
    assert (result.checked, result.already_denied, result.still_denied) == (1, 1, 1)
    strict = whatif(
        observed, attributor=attributor, policies=same, replace=True, include_denied=True
    )
    assert not strict.ok and strict.checked == 2
    assert [(g.client, g.verdicts) for g in strict.denied] == [("a/web", {"denied": 1})]


def test_unknown_and_icmp_records_are_not_judged() -> None:
    attributor, observed = attribute(
        shop(), [conn("10.0.1.250", API, 8080), conn(WEB_A, DB, 0, "ICMP")]
    )
    result = whatif(observed, attributor=attributor, policies=[deny_all("a/all")], replace=False)
    assert result.ok and result.checked == 0 and result.not_evaluated == 2
