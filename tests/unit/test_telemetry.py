"""`netwatch.core.telemetry`: counters, labels, rule hits, findings, expiry, the bound."""

from __future__ import annotations

import dataclasses

import pytest

from netwatch.core.attribution import Attributed
from netwatch.core.model import Protocol
from netwatch.core.telemetry import (
    DEFAULT_MAX_PORTS,
    OTHER_PORT,
    UNEXPECTED_FLOW,
    UNPROTECTED_WORKLOAD,
    UNUSED_RULE,
    FlowCounts,
    FlowKey,
    TelemetryAccumulator,
    TelemetrySnapshot,
    flow_series_bound,
    live_peers,
    policy_rules,
)
from tests.builders import policy, rule, sel
from tests.telemetry_builders import (
    API,
    API_POLICY,
    BUILD,
    CORP,
    DB,
    DB_POLICY,
    HEALTH,
    N1,
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


def accumulate(*items: Attributed, **options: float) -> TelemetryAccumulator:
    acc = TelemetryAccumulator(**options)  # type: ignore[arg-type]
    acc.add_all(items)
    return acc


def flows_of(acc: TelemetryAccumulator) -> dict[FlowKey, FlowCounts]:
    return dict(acc.snapshot(now=T0 + 10, build=BUILD).flows)


def test_connections_are_counted_per_workload_pair_port_protocol_and_verdict() -> None:
    att = attributor()
    acc = accumulate(
        *attribute(
            att,
            conn(WEB_1, API, 8080, client_port=40001, at=T0),
            conn(WEB_2, API, 8080, client_port=51234, at=T0 + 2, nbytes=(10, 20)),
            conn(WEB_1, DB, 5432, client_port=40002),
        )
    )
    assert flows_of(acc) == {
        FlowKey("shop", "web", "shop", "api", "8080", "TCP", "allowed"): FlowCounts(
            flows=2, bytes=1130, packets=10, last_seen=T0 + 3
        ),
        FlowKey("shop", "web", "shop", "db", "5432", "TCP", "denied"): FlowCounts(
            flows=1, bytes=1100, packets=5, last_seen=T0 + 1
        ),
    }


def test_deltas_of_one_conversation_are_one_connection_with_every_byte() -> None:
    att = attributor()
    first = conn(WEB_1, API, 8080, client_port=40001, at=T0, until=T0 + 5)
    later = conn(WEB_1, API, 8080, client_port=40001, at=T0 + 6, until=T0 + 9)
    acc = accumulate(*attribute(att, first, later, later))
    (counts,) = flows_of(acc).values()
    assert counts.flows == 1
    assert counts.bytes == 3 * 1100 and counts.packets == 3 * 5
    assert counts.last_seen == T0 + 9
    assert acc.conversations == 1


def test_a_conversation_flipped_by_a_later_drain_is_still_one_connection() -> None:
    att = attributor()
    acc = TelemetryAccumulator()
    acc.add(att.attribute(conn(WEB_1, API, 8080, client_port=40001)))
    flipped = conn(API, WEB_1, 40001, client_port=8080, at=T0 + 2)
    acc.add(att.attribute(flipped))
    assert sum(c.flows for c in flows_of(acc).values()) == 1


def test_a_5_tuple_reused_after_the_idle_time_is_a_new_connection() -> None:
    att = attributor()
    acc = TelemetryAccumulator(conversation_idle=60.0)
    acc.add(att.attribute(conn(WEB_1, API, 8080, at=T0, until=T0 + 1)))
    acc.add(att.attribute(conn(WEB_1, API, 8080, at=T0 + 30, until=T0 + 31)))  # same one
    acc.add(att.attribute(conn(WEB_1, API, 8080, at=T0 + 100, until=T0 + 101)))  # reused
    (counts,) = flows_of(acc).values()
    assert counts.flows == 2


def test_expire_forgets_idle_conversations() -> None:
    att = attributor()
    acc = TelemetryAccumulator(conversation_idle=60.0)
    acc.add(att.attribute(conn(WEB_1, API, 8080, at=T0, until=T0 + 1)))
    acc.expire(T0 + 30)
    assert acc.conversations == 1
    acc.expire(T0 + 62)
    assert acc.conversations == 0


def test_external_peers_collapse_to_world_or_their_cidr_name() -> None:
    att = attributor()
    items = attribute(
        att,
        *(conn(f"203.0.113.{i}", API, 8080, client_port=30000 + i) for i in range(1, 40)),
        conn(API, CORP, 443),
        conn(API, "198.51.100.9", 443),
    )
    keys = set(flows_of(accumulate(*items)))
    assert keys == {
        FlowKey("", "world", "shop", "api", "8080", "TCP", "denied"),
        FlowKey("shop", "api", "", "corp", "443", "TCP", "unrestricted"),
        FlowKey("shop", "api", "", "world", "443", "TCP", "unrestricted"),
    }


def test_nodes_and_unresolved_addresses_have_fixed_peer_names() -> None:
    att = attributor()
    items = attribute(att, conn(N1, WEB_1, 80), conn("10.244.1.99", API, 8080))
    keys = set(flows_of(accumulate(*items)))
    assert keys == {
        FlowKey("", "node:n1", "shop", "web", "80", "TCP", "unrestricted"),
        FlowKey("", "unknown", "shop", "api", "8080", "TCP", "unknown"),
    }


def test_ports_beyond_the_cap_of_a_destination_are_counted_as_other() -> None:
    att = attributor()
    items = attribute(att, *(conn(WEB_1, "198.51.100.9", p, client_port=p) for p in range(1, 8)))
    acc = accumulate(*items, max_ports=3)
    ports = sorted(k.dst_port for k in flows_of(acc))
    assert ports == ["1", "2", "3", OTHER_PORT]
    assert (
        flows_of(acc)[FlowKey("shop", "web", "", "world", OTHER_PORT, "TCP", "unrestricted")].flows
        == 4
    )
    # A port given out before keeps its label.
    acc.add(att.attribute(conn(WEB_1, "198.51.100.9", 2, client_port=9)))
    assert flows_of(acc)[FlowKey("shop", "web", "", "world", "2", "TCP", "unrestricted")].flows == 2


def test_max_ports_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_ports"):
        TelemetryAccumulator(max_ports=0)


def test_rule_hits_count_connections_and_keep_the_last_hit_time() -> None:
    att = attributor()
    acc = accumulate(
        *attribute(
            att,
            conn(WEB_1, API, 8080, client_port=1, at=T0, until=T0 + 4),
            conn(WEB_2, API, 8080, client_port=2, at=T0 + 1, until=T0 + 2),
            conn(WEB_1, API, 8080, client_port=1, at=T0 + 5, until=T0 + 9),  # a later delta
            conn(API, DB, 5432),
        )
    )
    acc.observe_inventory(live=live_peers(shop_cluster()), policies=POLICIES, at=T0)
    snap = acc.snapshot(now=T0 + 10, build=BUILD)
    hits = {
        (r.namespace, r.policy, r.direction, r.rule): (r.hits, r.last_hit) for r in snap.rule_hits
    }
    assert hits == {
        ("shop", "api-ingress", "ingress", 0): (2, T0 + 9),
        ("shop", "api-ingress", "ingress", 1): (0, None),
        ("shop", "db-ingress", "ingress", 0): (1, T0 + 1),
    }
    assert [(r.policy, r.rule) for r in snap.unused_rules] == [("api-ingress", 1)]


def test_denied_flows_are_unexpected_flow_findings_merged_over_verdict_series() -> None:
    att = attributor()
    acc = accumulate(
        *attribute(
            att,
            conn(WEB_1, DB, 5432, client_port=1, at=T0),
            conn(WEB_2, DB, 5432, client_port=2, at=T0 + 3),
            conn(WEB_1, API, 8080),
        )
    )
    snap = acc.snapshot(now=T0 + 10, build=BUILD)
    (flow,) = snap.unexpected_flows
    assert flow.key == ("shop", "web", "shop", "db", "5432", "TCP")
    assert (flow.flows, flow.bytes, flow.packets, flow.last_seen) == (2, 2200, 10, T0 + 4)
    assert dict(snap.findings)[UNEXPECTED_FLOW] == 1


def test_findings_count_unprotected_workloads_and_merge_static_kinds() -> None:
    att = attributor()
    acc = accumulate(*attribute(att, conn(N1, WEB_1, 80), conn(API, WEB_2, 80)))
    acc.observe_inventory(live=live_peers(shop_cluster()), policies=POLICIES, at=T0)
    snap = acc.snapshot(
        now=T0 + 10, build=BUILD, static_findings={"redundant-rule": 2, UNUSED_RULE: 99}
    )
    assert dict(snap.findings) == {
        "redundant-rule": 2,
        UNEXPECTED_FLOW: 0,
        UNUSED_RULE: 3,  # computed here: the static value is replaced
        UNPROTECTED_WORKLOAD: 1,  # shop/web (from its own node it is exempt, not unprotected)
    }
    assert [k for k, _ in snap.findings] == sorted(k for k, _ in snap.findings)


def test_a_workload_isolated_later_is_no_longer_unprotected() -> None:
    acc = accumulate(*attribute(attributor(), conn(API, WEB_1, 80)))
    assert dict(acc.snapshot(now=T0 + 1, build=BUILD).findings)[UNPROTECTED_WORKLOAD] == 1
    web_policy = policy("shop/web", sel(app="web"), ingress=[rule()])
    isolated = attributor(shop_cluster(policies=[*POLICIES, web_policy]))
    acc.add(isolated.attribute(conn(API, WEB_1, 80, at=T0 + 5)))
    assert dict(acc.snapshot(now=T0 + 10, build=BUILD).findings)[UNPROTECTED_WORKLOAD] == 0


def test_deleted_workload_series_go_away_after_the_grace_period() -> None:
    att = attributor()
    acc = accumulate(
        *attribute(att, conn(WEB_1, API, 8080), conn(WEB_1, DB, 5432), conn(API, DB, 5432)),
        grace=100.0,
    )
    without_web = shop_cluster(pods=[p for p in shop_pods() if not p.name.startswith("web")])
    acc.observe_inventory(live=live_peers(without_web), policies=POLICIES, at=T0 + 10)
    assert acc.expire(T0 + 109) == 0 and acc.series == 3
    assert acc.expire(T0 + 110) == 2
    assert [k[:4] for k in flows_of(acc)] == [("shop", "api", "shop", "db")]


def test_a_workload_back_within_the_grace_period_keeps_its_counters() -> None:
    att = attributor()
    acc = accumulate(*attribute(att, conn(WEB_1, API, 8080)), grace=100.0)
    without_web = shop_cluster(pods=[p for p in shop_pods() if not p.name.startswith("web")])
    acc.observe_inventory(live=live_peers(without_web), policies=POLICIES, at=T0 + 10)
    acc.observe_inventory(live=live_peers(shop_cluster()), policies=POLICIES, at=T0 + 50)
    assert acc.expire(T0 + 1000) == 0
    (counts,) = flows_of(acc).values()
    assert counts.flows == 1


def test_external_peers_never_expire() -> None:
    att = attributor()
    acc = accumulate(*attribute(att, conn(API, CORP, 443), conn("203.0.113.5", API, 8080)))
    acc.observe_inventory(live=live_peers(shop_cluster()), policies=POLICIES, at=T0)
    assert acc.expire(T0 + 1e6) == 0 and acc.series == 2


def test_rules_of_deleted_policies_go_away_after_the_grace_period() -> None:
    att = attributor()
    acc = accumulate(*attribute(att, conn(WEB_1, API, 8080), conn(API, DB, 5432)), grace=100.0)
    acc.observe_inventory(live=live_peers(shop_cluster()), policies=POLICIES, at=T0)
    acc.observe_inventory(live=live_peers(shop_cluster()), policies=[DB_POLICY], at=T0 + 10)
    during = acc.snapshot(now=T0 + 50, build=BUILD)
    # Still reported during the grace period (its last increments get scraped), not unused.
    assert [(r.policy, r.rule, r.hits) for r in during.rule_hits] == [
        ("api-ingress", 0, 1),
        ("db-ingress", 0, 1),
    ]
    assert during.unused_rules == ()
    acc.expire(T0 + 110)
    after = acc.snapshot(now=T0 + 120, build=BUILD)
    assert [(r.policy, r.rule, r.hits, r.last_hit) for r in after.rule_hits] == [
        ("db-ingress", 0, 1, T0 + 1)
    ]


def test_a_snapshot_does_not_change_when_counting_goes_on() -> None:
    att = attributor()
    acc = accumulate(*attribute(att, conn(WEB_1, API, 8080)))
    snap = acc.snapshot(now=T0 + 1, build=BUILD, health=HEALTH)
    acc.add(att.attribute(conn(WEB_2, API, 8080, client_port=7)))
    assert [c.flows for _, c in snap.flows] == [1]
    assert snap.health is HEALTH and snap.generated_at == T0 + 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.generated_at = 0  # type: ignore[misc]


def test_an_empty_snapshot_has_the_traffic_finding_kinds_at_zero() -> None:
    snap = TelemetrySnapshot.empty(build=BUILD, at=T0)
    assert snap.flows == () and snap.rule_hits == ()
    assert dict(snap.findings) == {UNEXPECTED_FLOW: 0, UNPROTECTED_WORKLOAD: 0, UNUSED_RULE: 0}


def test_live_peers_name_workloads_nodes_and_services() -> None:
    peers = live_peers(shop_cluster())
    assert peers == {
        ("shop", "web"),
        ("shop", "api"),
        ("shop", "db"),
        ("", "node:n1"),
        ("", "node:n2"),
    }


def test_policy_rules_only_count_isolated_directions() -> None:
    refs = policy_rules(POLICIES)
    assert sorted((r.policy, r.direction.value, r.rule) for r in refs) == [
        ("shop/api-ingress", "ingress", 0),
        ("shop/api-ingress", "ingress", 1),
        ("shop/db-ingress", "ingress", 0),
    ]


def test_the_flow_series_bound_is_the_documented_formula() -> None:
    assert flow_series_bound(peers=10) == 10 * 10 * (DEFAULT_MAX_PORTS + 1) * 4 * 4
    assert flow_series_bound(peers=3, max_ports=1, protocols=1, verdicts=1) == 18


def test_udp_and_icmp_are_labelled_by_protocol() -> None:
    att = attributor()
    items = attribute(
        att,
        conn(WEB_1, "198.51.100.9", 53, protocol=Protocol.UDP),
        conn(WEB_1, "198.51.100.9", 8, protocol=Protocol.ICMP),
    )
    assert {(k.protocol, k.verdict) for k in flows_of(accumulate(*items))} == {
        ("UDP", "unrestricted"),
        ("ICMP", "unrestricted"),
    }
