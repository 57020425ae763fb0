"""`netwatch.metrics`: exposition rendered and parsed back, registry hygiene, cardinality."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from netwatch.core.model import Protocol
from netwatch.core.telemetry import (
    FLOW_LABELS,
    FlowCounts,
    FlowKey,
    Health,
    RuleHitRow,
    TelemetryAccumulator,
    TelemetrySnapshot,
    UnexpectedFlow,
    flow_series_bound,
    live_peers,
)
from netwatch.metrics import TelemetryCollector, build_registry
from tests.telemetry_builders import (
    API,
    API_POLICY,
    BUILD,
    DB,
    DB_POLICY,
    HEALTH,
    T0,
    WEB_1,
    WEB_2,
    attributor,
    conn,
    shop_cluster,
)

ALLOWED = FlowKey("shop", "web", "shop", "api", "8080", "TCP", "allowed")
DENIED = FlowKey("shop", "web", "shop", "db", "5432", "TCP", "denied")
RULE_0 = RuleHitRow("shop", "api-ingress", "ingress", 0, hits=2, last_hit=T0 + 9.5)
RULE_1 = RuleHitRow("shop", "api-ingress", "ingress", 1, hits=0, last_hit=None)
SNAPSHOT = TelemetrySnapshot(
    generated_at=T0 + 10,
    build=BUILD,
    flows=(
        (ALLOWED, FlowCounts(flows=2, bytes=2200, packets=10, last_seen=T0 + 9.5)),
        (DENIED, FlowCounts(flows=1, bytes=1100, packets=5, last_seen=T0 + 1)),
    ),
    rule_hits=(RULE_0, RULE_1),
    findings=(("unexpected-flow", 1), ("unprotected-workload", 0), ("unused-rule", 1)),
    unused_rules=(RULE_1,),
    unexpected_flows=(
        UnexpectedFlow(key=DENIED[:6], flows=1, bytes=1100, packets=5, last_seen=T0 + 1),
    ),
    health=HEALTH,
)

EXPECTED_TYPES = {
    "netwatch_flows": "counter",
    "netwatch_flow_bytes": "counter",
    "netwatch_flow_packets": "counter",
    "netwatch_policy_rule_hits": "counter",
    "netwatch_policy_rule_last_hit_timestamp_seconds": "gauge",
    "netwatch_findings": "gauge",
    "netwatch_unused_rule_info": "gauge",
    "netwatch_unexpected_flows": "counter",
    "netwatch_capture_lost": "counter",
    "netwatch_bpf_map_entries": "gauge",
    "netwatch_inventory_objects": "gauge",
    "netwatch_watch_restarts": "counter",
    "netwatch_inventory_stale_seconds": "gauge",
    "netwatch_build_info": "gauge",
}


def scrape(registry: CollectorRegistry) -> dict[str, list[Sample]]:
    text = generate_latest(registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def samples(registry: CollectorRegistry) -> Iterator[tuple[str, dict[str, str], float]]:
    for family in scrape(registry).values():
        for s in family:
            yield s.name, s.labels, s.value


def labels(key: FlowKey) -> dict[str, str]:
    return dict(zip(FLOW_LABELS, key, strict=True))


def rule_labels(rule: int) -> dict[str, str]:
    return {"namespace": "shop", "policy": "api-ingress", "direction": "ingress", "rule": str(rule)}


def test_every_sample_has_its_exact_name_labels_and_value() -> None:
    got = sorted(
        samples(build_registry(lambda: SNAPSHOT)), key=lambda s: (s[0], sorted(s[1].items()))
    )
    expected = [
        ("netwatch_bpf_map_entries", {"map": "flows"}, 42.0),
        ("netwatch_build_info", {"version": "0.1.0", "python": "3.11.2", "node": "n1"}, 1.0),
        ("netwatch_capture_lost_total", {}, 7.0),
        ("netwatch_findings", {"kind": "unexpected-flow"}, 1.0),
        ("netwatch_findings", {"kind": "unprotected-workload"}, 0.0),
        ("netwatch_findings", {"kind": "unused-rule"}, 1.0),
        ("netwatch_flow_bytes_total", labels(DENIED), 1100.0),
        ("netwatch_flow_bytes_total", labels(ALLOWED), 2200.0),
        ("netwatch_flow_packets_total", labels(DENIED), 5.0),
        ("netwatch_flow_packets_total", labels(ALLOWED), 10.0),
        ("netwatch_flows_total", labels(DENIED), 1.0),
        ("netwatch_flows_total", labels(ALLOWED), 2.0),
        ("netwatch_inventory_objects", {"kind": "Namespace"}, 1.0),
        ("netwatch_inventory_objects", {"kind": "Pod"}, 4.0),
        ("netwatch_inventory_stale_seconds", {}, 0.0),
        ("netwatch_policy_rule_hits_total", rule_labels(0), 2.0),
        ("netwatch_policy_rule_hits_total", rule_labels(1), 0.0),
        ("netwatch_policy_rule_last_hit_timestamp_seconds", rule_labels(0), T0 + 9.5),
        (
            "netwatch_unexpected_flows_total",
            {k: v for k, v in labels(DENIED).items() if k != "verdict"},
            1.0,
        ),
        ("netwatch_unused_rule_info", rule_labels(1), 1.0),
        ("netwatch_watch_restarts_total", {}, 3.0),
    ]
    assert got == sorted(expected, key=lambda s: (s[0], sorted(s[1].items())))


def test_families_have_the_documented_types() -> None:
    text = generate_latest(build_registry(lambda: SNAPSHOT)).decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types == EXPECTED_TYPES


def test_the_source_is_read_once_per_scrape_and_never_at_registration() -> None:
    calls: list[int] = []

    def source() -> TelemetrySnapshot:
        calls.append(1)
        return SNAPSHOT

    registry = build_registry(source)
    assert calls == []
    generate_latest(registry)
    assert len(calls) == 1


def test_each_scrape_shows_the_latest_published_snapshot() -> None:
    current = [SNAPSHOT]
    registry = build_registry(lambda: current[0])
    before = scrape(registry)["netwatch_capture_lost"]
    current[0] = TelemetrySnapshot(generated_at=T0 + 20, build=BUILD, health=Health(capture_lost=9))
    after = scrape(registry)
    assert before[0].value == 7.0 and after["netwatch_capture_lost"][0].value == 9.0
    assert after["netwatch_flows"] == []


def test_before_the_first_snapshot_nothing_is_exported() -> None:
    assert list(samples(build_registry(lambda: None))) == []


def test_nothing_is_registered_globally() -> None:
    build_registry(lambda: SNAPSHOT)
    assert not any(name.startswith("netwatch_") for name in REGISTRY._names_to_collectors)


def test_the_collector_describes_every_family_without_samples() -> None:
    described = list(TelemetryCollector(lambda: SNAPSHOT).describe())
    assert {m.name for m in described} == set(EXPECTED_TYPES)
    assert all(m.samples == [] for m in described)


def test_an_accumulated_snapshot_exports_consistent_families() -> None:
    att = attributor()
    acc = TelemetryAccumulator()
    acc.add_all(
        att.attribute(c)
        for c in (
            conn(WEB_1, API, 8080),
            conn(WEB_2, API, 8080, client_port=9),
            conn(WEB_1, DB, 5432),
        )
    )
    acc.observe_inventory(live=live_peers(shop_cluster()), policies=[API_POLICY, DB_POLICY], at=T0)
    snap = acc.snapshot(now=T0 + 5, build=BUILD, health=HEALTH)
    got = scrape(build_registry(lambda: snap))
    flows = {tuple(sorted(s.labels.items())): s.value for s in got["netwatch_flows"]}
    assert flows == {
        tuple(sorted(labels(ALLOWED).items())): 2.0,
        tuple(sorted(labels(DENIED).items())): 1.0,
    }
    for family in ("netwatch_flow_bytes", "netwatch_flow_packets"):
        assert {tuple(sorted(s.labels.items())) for s in got[family]} == set(flows)
    unused = {s.labels["policy"] + "/" + s.labels["rule"] for s in got["netwatch_unused_rule_info"]}
    assert unused == {"api-ingress/1", "db-ingress/0"}


# ------------------------------------------------------------------ cardinality

PODS = (WEB_1, WEB_2, API, DB)
SERVER_PORTS = (53, 80, 443, 5432, 8080)


def _external(n: int) -> str:
    """Any IPv4 address outside the cluster's ranges (10/8) — `world` or the `corp` CIDR."""
    address = ipaddress.IPv4Address(n)
    return str(address) if address not in ipaddress.IPv4Network("10.0.0.0/8") else "198.51.100.1"


endpoint = st.one_of(st.sampled_from(PODS), st.integers(0, 2**32 - 1).map(_external))
connection = st.tuples(
    endpoint,  # client
    endpoint,  # server
    st.one_of(st.sampled_from(SERVER_PORTS), st.integers(1, 65535)),  # server port
    st.integers(1024, 65535),  # client (ephemeral) port
    st.sampled_from([Protocol.TCP, Protocol.UDP]),
)
ATTRIBUTOR = attributor()
PEERS = 3 + 2 + 1 + 2  # workloads web/api/db, nodes n1/n2, CIDR `corp`, world + unknown


def _series(
    conns: list[tuple[str, str, int, int, Protocol]], *, max_ports: int
) -> dict[str, set[tuple[str, ...]]]:
    acc = TelemetryAccumulator(max_ports=max_ports)
    for i, (client, server, sport, cport, proto) in enumerate(conns):
        record = conn(client, server, sport, client_port=cport, protocol=proto, at=T0 + i)
        acc.add(ATTRIBUTOR.attribute(record))
    snap = acc.snapshot(now=T0 + len(conns), build=BUILD)
    got = scrape(build_registry(lambda: snap))
    return {
        name: {tuple(sorted(s.labels.items())) for s in got[name]}
        for name in ("netwatch_flows", "netwatch_flow_bytes", "netwatch_flow_packets")
    }


@settings(max_examples=60, deadline=None)
@given(conns=st.lists(connection, min_size=1, max_size=300), max_ports=st.integers(1, 8))
def test_series_never_exceed_the_documented_bound(
    conns: list[tuple[str, str, int, int, Protocol]], max_ports: int
) -> None:
    series = _series(conns, max_ports=max_ports)
    flows = series["netwatch_flows"]
    assert series["netwatch_flow_bytes"] == flows == series["netwatch_flow_packets"]
    assert len(flows) <= flow_series_bound(peers=PEERS, max_ports=max_ports)
    # Tighter: per observed (src, dst) edge at most max_ports + 1 port labels per protocol
    # and verdict; ports per destination never exceed the cap plus `other`.
    by_dst: dict[tuple[str, str], set[str]] = {}
    for label_set in flows:
        values = dict(label_set)
        by_dst.setdefault((values["dst_namespace"], values["dst_workload"]), set()).add(
            values["dst_port"]
        )
        for value in values.values():
            assert not _is_address(value), f"an address became a label: {value}"
    assert all(len(ports) <= max_ports + 1 for ports in by_dst.values())


@settings(max_examples=40, deadline=None)
@given(
    conns=st.lists(connection, min_size=1, max_size=100),
    seed=st.integers(0, 2**32 - 1),
)
def test_client_ports_and_external_addresses_add_no_series(
    conns: list[tuple[str, str, int, int, Protocol]], seed: int
) -> None:
    """Re-rolling every ephemeral port and every `world` address leaves the series alone."""

    def reroll(address: str, i: int) -> str:
        if address in PODS or ipaddress.IPv4Address(address) in ipaddress.IPv4Network(
            "192.0.2.0/24"
        ):
            return address
        return str(ipaddress.IPv4Address("203.0.113.0") + (seed + i) % 256)  # still `world`

    rerolled = [
        (reroll(c, i), reroll(s, i + 1), sport, 1024 + (seed + i) % 60000, proto)
        for i, (c, s, sport, _cport, proto) in enumerate(conns)
    ]
    assert _series(conns, max_ports=8) == _series(rerolled, max_ports=8)


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def test_thousands_of_ephemeral_ports_and_addresses_stay_within_a_few_series() -> None:
    rng = random.Random(7)
    conns = [
        (
            rng.choice((*PODS, str(ipaddress.IPv4Address(rng.getrandbits(24) | 0xC6000000)))),
            rng.choice(PODS),
            rng.choice(SERVER_PORTS),
            rng.randint(1024, 65535),
            Protocol.TCP,
        )
        for _ in range(5000)
    ]
    flows = _series(conns, max_ports=8)["netwatch_flows"]
    # 4 client peers (3 workloads, world) x 3 server workloads x 5 ports x <= 2 verdicts.
    assert len(flows) <= 4 * 3 * 5 * 2
