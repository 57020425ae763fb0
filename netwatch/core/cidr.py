"""Bounded CIDR aggregation: cover observed IPs with at most K CIDRs, least space first.

Suggestions (`netwatch.core.suggest`) turn external peers into ipBlocks. One /32 per
address does not scale (a CDN answers from hundreds), and one 0.0.0.0/0 admits the
world, so `aggregate` picks the set of at most `budget` CIDRs that covers every observed
address while admitting the fewest addresses in total — exactly, by dynamic programming
over the binary trie of the addresses (`O(n * budget**2)`):

    best(node, k) = min(size(node),                                   # one CIDR
                        min over a + b = k of best(left, a) + best(right, b))

where a node is the longest common prefix of the addresses below it.

Scopes are never mixed: addresses are grouped first — each well-known private or
special-purpose range (RFC 1918, CGNAT, loopback, link-local, IPv6 ULA and link-local)
is a group of its own, and the remaining public addresses of each family form one — and
no CIDR covers addresses of two groups. The budget is shared between the groups (each
needs at least one CIDR); when there are more groups than budget, each group gets one
CIDR and the result says `over_budget`. A wide public CIDR never silently admits private
space: every `exclude` range (the private ranges for public groups, plus whatever the
caller passes, e.g. the cluster's pod CIDRs) lying strictly inside a chosen CIDR and
holding no observed address becomes an `except` entry, and does not count as admitted.

Pure: no I/O. Neighbours: `suggest` calls it per rule; `ipset` does exact IP-set algebra.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

from netwatch.core.policy import IPAddress, IPBlock, IPNetwork

DEFAULT_BUDGET = 8
"""CIDRs per rule unless configured otherwise (`netwatch suggest --max-cidrs`)."""

PRIVATE_RANGES: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(text)
    for text in (
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # RFC 6598 carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local (node-local DNS caches live here)
        "172.16.0.0/12",  # RFC 1918
        "192.168.0.0/16",  # RFC 1918
        "::1/128",  # loopback
        "fc00::/7",  # unique local addresses
        "fe80::/10",  # link-local
    )
)
"""Ranges that are groups of their own and never part of a public aggregate."""


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The chosen ipBlocks and what they cost in extra address space."""

    blocks: tuple[IPBlock, ...]
    """Sorted (IPv4 first, then by address); `except` entries sorted too."""
    observed: int
    """Distinct observed addresses covered."""
    admitted: int
    """Addresses the blocks admit (their CIDRs minus their excepts)."""
    over_budget: bool = False
    """More scope groups than budget: each group got one CIDR, so there are more than K."""

    @property
    def extra(self) -> int:
        """Admitted addresses that were never observed."""
        return self.admitted - self.observed

    @property
    def widest_prefix(self) -> int | None:
        """The shortest prefix length among the blocks (the broadest one)."""
        return min((b.cidr.prefixlen for b in self.blocks), default=None)


def scope_of(ip: IPAddress) -> IPNetwork | None:
    """The private range holding `ip`, or None for a public address."""
    return next((net for net in PRIVATE_RANGES if ip in net), None)


def aggregate(
    ips: Iterable[IPAddress],
    *,
    budget: int = DEFAULT_BUDGET,
    exclude: Sequence[IPNetwork] = (),
) -> Aggregate:
    """Cover `ips` with at most `budget` CIDRs (see module doc); `budget >= 1`."""
    if budget < 1:
        raise ValueError(f"CIDR budget must be at least 1, got {budget}")
    groups: dict[tuple[int, str], list[int]] = {}
    for ip in set(ips):
        private = scope_of(ip)
        groups.setdefault((ip.version, str(private) if private else ""), []).append(int(ip))
    if not groups:
        return Aggregate((), 0, 0)
    solved = []
    for (version, scope), values in sorted(groups.items()):
        values.sort()
        excl = _exclusions(version, public=not scope, extra=exclude)
        solved.append(_Group(version, values, excl, _solve(version, tuple(values), excl, budget)))
    over = len(solved) > budget
    shares = [1] * len(solved) if over else _share(solved, budget)
    blocks: list[IPBlock] = []
    admitted = 0
    for group, k in zip(solved, shares, strict=True):
        for net in group.tree.pick(k):
            block = _block(group, net)
            blocks.append(block)
            admitted += _block_size(block)
    blocks.sort(key=lambda b: (b.cidr.version, int(b.cidr.network_address), b.cidr.prefixlen))
    observed = sum(len(g.values) for g in solved)
    return Aggregate(tuple(blocks), observed, admitted, over_budget=over)


# ----------------------------------------------------------------- internals


@dataclass(frozen=True)
class _Node:
    """A trie node: the longest common prefix of some addresses, with its best covers."""

    value: int
    prefix: int
    cost: tuple[int, ...]
    """cost[k - 1]: fewest addresses admitted by at most k CIDRs covering this subtree."""
    split: tuple[int, ...]
    """split[k - 1]: CIDRs given to the left child (0: one CIDR, this node)."""
    left: _Node | None
    right: _Node | None

    def pick(self, k: int) -> list[tuple[int, int]]:
        """(network value, prefix length) of the best cover with at most k CIDRs."""
        k = min(k, len(self.cost))
        a = self.split[k - 1]
        if a == 0 or self.left is None or self.right is None:
            return [(self.value, self.prefix)]
        return self.left.pick(a) + self.right.pick(k - a)


@dataclass(frozen=True)
class _Group:
    version: int
    values: list[int]
    exclusions: tuple[tuple[int, int, int], ...]
    """(first, last, prefix length) of ranges to except, sorted, non-overlapping."""
    tree: _Node


def _bits(version: int) -> int:
    return 32 if version == 4 else 128


def _exclusions(
    version: int, *, public: bool, extra: Sequence[IPNetwork]
) -> tuple[tuple[int, int, int], ...]:
    nets = [n for n in extra if n.version == version]
    if public:
        nets += [n for n in PRIVATE_RANGES if n.version == version]
    kept: list[IPNetwork] = []
    for net in sorted(nets, key=lambda n: (int(n.network_address), n.prefixlen)):
        if not kept or not _inside(net, kept[-1]):  # sorted: a container comes first
            kept.append(net)
    return tuple((int(n.network_address), int(n.broadcast_address), n.prefixlen) for n in kept)


def _inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    return int(outer.network_address) <= int(inner.network_address) and int(
        inner.broadcast_address
    ) <= int(outer.broadcast_address)


def _network(version: int, value: int, prefix: int) -> IPNetwork:
    if version == 4:
        return ipaddress.IPv4Network((value, prefix))
    return ipaddress.IPv6Network((value, prefix))


def _solve(
    version: int, values: tuple[int, ...], exclusions: tuple[tuple[int, int, int], ...], k: int
) -> _Node:
    bits = _bits(version)

    def excluded(lo: int, hi: int, prefix: int) -> int:
        """Addresses of exclusions strictly inside [lo, hi] that hold no observed address."""
        total = 0
        start = bisect_left(exclusions, (lo, -1, -1))
        for first, last, plen in exclusions[start:]:
            if first > hi:
                break
            if last > hi or plen <= prefix:
                continue
            if bisect_right(values, last) - bisect_left(values, first) == 0:
                total += last - first + 1
        return total

    @cache
    def node(i: int, j: int) -> _Node:
        """The subtree of values[i:j] (sorted, distinct, non-empty)."""
        lo, hi = values[i], values[j - 1]
        prefix = bits - (lo ^ hi).bit_length()
        base = (lo >> (bits - prefix)) << (bits - prefix)
        size = 1 << (bits - prefix)
        one = size - excluded(base, base + size - 1, prefix)
        if j - i == 1:
            return _Node(base, prefix, (one,), (0,), None, None)
        # The first value with the next bit set starts the right subtree.
        mid_value = base | (1 << (bits - prefix - 1))
        m = bisect_left(values, mid_value, i, j)
        left, right = node(i, m), node(m, j)
        cost, split = [one], [0]
        for budget in range(2, min(k, j - i) + 1):
            best, best_a = one, 0
            for a in range(1, budget):
                c = _cost(left, a) + _cost(right, budget - a)
                if c < best:
                    best, best_a = c, a
            cost.append(best)
            split.append(best_a)
        return _Node(base, prefix, tuple(cost), tuple(split), left, right)

    return node(0, len(values))


def _cost(n: _Node, k: int) -> int:
    return n.cost[min(k, len(n.cost)) - 1]


def _share(groups: Sequence[_Group], budget: int) -> list[int]:
    """Split the budget between groups (each at least 1) minimizing total admitted space."""
    # best[g][b]: least cost of groups[:g] with b CIDRs; a small knapsack.
    inf = float("inf")
    best: list[list[float]] = [[0.0] + [inf] * budget]
    choice: list[list[int]] = [[0] * (budget + 1)]
    for group in groups:
        prev = best[-1]
        row = [inf] * (budget + 1)
        pick = [0] * (budget + 1)
        for b in range(budget + 1):
            for a in range(1, b + 1):
                if prev[b - a] == inf:
                    continue
                c = prev[b - a] + _cost(group.tree, a)
                if c < row[b]:
                    row[b], pick[b] = c, a
        best.append(row)
        choice.append(pick)
    b = min(range(budget + 1), key=lambda x: (best[-1][x], x))
    shares = []
    for g in range(len(groups), 0, -1):
        a = choice[g][b]
        shares.append(a)
        b -= a
    return shares[::-1]


def _block(group: _Group, net: tuple[int, int]) -> IPBlock:
    value, prefix = net
    bits = _bits(group.version)
    cidr = _network(group.version, value, prefix)
    lo, hi = value, value + (1 << (bits - prefix)) - 1
    excepts = [
        _network(group.version, first, plen)
        for first, last, plen in group.exclusions
        if lo <= first
        and last <= hi
        and plen > prefix
        and bisect_right(group.values, last) - bisect_left(group.values, first) == 0
    ]
    return IPBlock(cidr, tuple(excepts))


def _block_size(block: IPBlock) -> int:
    return block.cidr.num_addresses - sum(e.num_addresses for e in block.excepts)
