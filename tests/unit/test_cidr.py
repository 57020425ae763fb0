"""Bounded CIDR aggregation: at most K CIDRs, least address space, scopes never mixed."""

from __future__ import annotations

import ipaddress
from itertools import combinations, pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netwatch.core import ipset
from netwatch.core.cidr import PRIVATE_RANGES, aggregate, scope_of
from netwatch.core.policy import IPAddress, IPBlock


def ips(*texts: str) -> list[IPAddress]:
    return [ipaddress.ip_address(t) for t in texts]


def described(blocks: tuple[IPBlock, ...]) -> list[str]:
    return [b.describe() for b in blocks]


def covers(blocks: tuple[IPBlock, ...], addresses: list[IPAddress]) -> bool:
    return all(any(b.contains(a) for b in blocks) for a in addresses)


def test_a_large_enough_budget_admits_exactly_the_observed_addresses() -> None:
    agg = aggregate(ips("1.2.3.4", "1.2.3.6", "8.8.8.8"), budget=8)
    assert described(agg.blocks) == ["1.2.3.4/32", "1.2.3.6/32", "8.8.8.8/32"]
    assert (agg.observed, agg.admitted, agg.extra) == (3, 3, 0)


def test_an_exact_cover_uses_the_fewest_cidrs() -> None:
    agg = aggregate(ips("1.2.3.4", "1.2.3.5", "8.8.8.8"), budget=8)
    assert described(agg.blocks) == ["1.2.3.4/31", "8.8.8.8/32"]
    assert agg.extra == 0


def test_aggregates_to_at_most_budget_cidrs_with_least_space() -> None:
    addresses = ips("1.2.3.4", "1.2.3.5", "1.2.3.7", "8.8.8.8", "8.8.4.4")
    agg = aggregate(addresses, budget=3)
    # {1.2.3.4, .5, .7} cost 4 as one /30; keeping both 8.8.x.x apart costs 2.
    assert described(agg.blocks) == ["1.2.3.4/30", "8.8.4.4/32", "8.8.8.8/32"]
    assert (agg.observed, agg.admitted, agg.extra) == (5, 6, 1)
    assert covers(agg.blocks, addresses)


def test_repeated_addresses_count_once() -> None:
    agg = aggregate(ips("9.9.9.9", "9.9.9.9"), budget=1)
    assert described(agg.blocks) == ["9.9.9.9/32"]
    assert agg.observed == 1


def test_private_and_public_addresses_are_never_aggregated_together() -> None:
    agg = aggregate(ips("10.0.0.1", "10.0.0.9", "8.8.8.8"), budget=1)
    assert described(agg.blocks) == ["8.8.8.8/32", "10.0.0.0/28"]
    assert agg.over_budget


def test_each_private_range_is_its_own_group() -> None:
    agg = aggregate(ips("10.1.1.1", "172.16.0.1", "192.168.1.1"), budget=3)
    assert [scope_of(b.cidr.network_address) for b in agg.blocks] == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("172.16.0.0/12"),
        ipaddress.ip_network("192.168.0.0/16"),
    ]
    assert not agg.over_budget


def test_a_wide_public_aggregate_excepts_the_private_ranges_inside_it() -> None:
    agg = aggregate(ips("1.1.1.1", "200.1.1.1"), budget=1)
    (block,) = agg.blocks
    assert str(block.cidr) == "0.0.0.0/0"
    assert {str(e) for e in block.excepts} == {str(n) for n in PRIVATE_RANGES if n.version == 4}
    private = sum(n.num_addresses for n in PRIVATE_RANGES if n.version == 4)
    assert agg.admitted == 2**32 - private
    assert not block.contains(ipaddress.ip_address("10.1.2.3"))
    assert agg.widest_prefix == 0


def test_extra_exclusions_become_excepts_unless_they_hold_an_observed_address() -> None:
    pod_cidrs = [ipaddress.ip_network("10.244.1.0/24"), ipaddress.ip_network("10.250.0.0/24")]
    agg = aggregate(ips("10.0.0.1", "10.250.0.7"), budget=1, exclude=pod_cidrs)
    (block,) = agg.blocks
    assert block.describe() == "10.0.0.0/8 except 10.244.1.0/24"
    assert agg.admitted == 2**24 - 256


def test_ipv6_scopes_and_families_are_separate_groups() -> None:
    agg = aggregate(ips("::1", "fd00::1", "2001:db8::1", "2001:db8::3", "1.1.1.1"), budget=5)
    assert described(agg.blocks) == [
        "1.1.1.1/32",
        "::1/128",
        "2001:db8::1/128",
        "2001:db8::3/128",
        "fd00::1/128",
    ]
    tight = aggregate(ips("2001:db8::1", "2001:db8::3"), budget=1)
    assert described(tight.blocks) == ["2001:db8::/126"]


def test_nothing_observed_gives_nothing() -> None:
    agg = aggregate([], budget=4)
    assert agg.blocks == () and agg.admitted == 0 and agg.widest_prefix is None


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        aggregate(ips("1.1.1.1"), budget=0)


# ----------------------------------------------------------------- properties


def _lcp_cidr(values: list[int]) -> tuple[int, int]:
    lo, hi = values[0], values[-1]
    prefix = 32 - (lo ^ hi).bit_length()
    return (lo >> (32 - prefix)) << (32 - prefix), prefix


def _brute_force(values: list[int], budget: int) -> int:
    """Least union size over every split of the sorted points into <= budget runs."""
    best = None
    n = len(values)
    for k in range(1, min(budget, n) + 1):
        for cuts in combinations(range(1, n), k - 1):
            bounds = [0, *cuts, n]
            intervals = []
            for a, b in pairwise(bounds):
                base, prefix = _lcp_cidr(values[a:b])
                intervals.append((base, base + (1 << (32 - prefix)) - 1))
            size = ipset.size(ipset.normalize(intervals))
            best = size if best is None else min(best, size)
    assert best is not None
    return best


PUBLIC = st.integers(int(ipaddress.ip_address("52.0.0.0")), int(ipaddress.ip_address("52.0.3.255")))


@settings(max_examples=200, deadline=None)
@given(st.lists(PUBLIC, min_size=1, max_size=7, unique=True), st.integers(1, 4))
def test_aggregation_is_optimal_and_bounded(values: list[int], budget: int) -> None:
    addresses = [ipaddress.IPv4Address(v) for v in values]
    agg = aggregate(addresses, budget=budget)
    assert len(agg.blocks) <= budget
    assert covers(agg.blocks, addresses)
    assert agg.admitted == ipset.size(ipset.union(*(ipset.from_block(b) for b in agg.blocks)))
    assert agg.admitted == _brute_force(sorted(values), budget)


MIXED = st.one_of(
    st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
    st.sampled_from(["10.0.0.1", "10.9.0.1", "172.16.5.5", "192.168.0.9", "100.64.0.1"]).map(
        ipaddress.IPv4Address
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(MIXED, min_size=1, max_size=12), st.integers(1, 8))
def test_no_block_mixes_scopes_and_the_bound_holds_unless_scopes_outnumber_it(
    addresses: list[ipaddress.IPv4Address], budget: int
) -> None:
    agg = aggregate(addresses, budget=budget)
    assert covers(agg.blocks, list(addresses))
    groups = {scope_of(a) for a in addresses}
    assert agg.over_budget == (len(groups) > budget)
    assert len(agg.blocks) <= max(budget, len(groups))
    for block in agg.blocks:
        inside = {scope_of(a) for a in addresses if block.contains(a)}
        assert len(inside) == 1
        if inside == {None}:  # a public block admits no private address
            for net in PRIVATE_RANGES:
                if net.version == 4 and block.cidr.overlaps(net):
                    assert not block.contains(net.network_address)
