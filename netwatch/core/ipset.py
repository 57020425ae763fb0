"""Sets of IP addresses as sorted, disjoint inclusive integer intervals.

IPv4 and IPv6 share one number line (IPv6 shifted above the 2**32 IPv4 addresses) so a
rule's ipBlocks — CIDRs minus excepts, of either family — are one value that unions and
differences handle uniformly. Used by lint to decide exactly whether one rule's external
peers are covered by others'.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence

from netwatch.core.policy import IPAddress, IPBlock, IPNetwork

Interval = tuple[int, int]
IPSet = tuple[Interval, ...]

_V6_BASE = 1 << 32
EMPTY: IPSet = ()
EVERY_IP: IPSet = ((0, _V6_BASE + (1 << 128) - 1),)


def ip_key(ip: IPAddress) -> int:
    return int(ip) if ip.version == 4 else _V6_BASE + int(ip)


def _network(net: IPNetwork) -> Interval:
    lo = ip_key(net.network_address)
    return lo, lo + net.num_addresses - 1


def normalize(intervals: Iterable[Interval]) -> IPSet:
    """Sort and merge overlapping or adjacent intervals."""
    merged: list[list[int]] = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((a, b) for a, b in merged)


def union(*sets: IPSet) -> IPSet:
    return normalize(iv for s in sets for iv in s)


def difference(a: IPSet, b: IPSet) -> IPSet:
    out: list[Interval] = []
    j = 0
    for lo, hi in a:
        cur = lo
        while j < len(b) and b[j][1] < cur:
            j += 1
        k = j
        while k < len(b) and b[k][0] <= hi and cur <= hi:
            blo, bhi = b[k]
            if blo > cur:
                out.append((cur, blo - 1))
            cur = max(cur, bhi + 1)
            k += 1
        if cur <= hi:
            out.append((cur, hi))
    return tuple(out)


def from_block(block: IPBlock) -> IPSet:
    """§3.6: cidr minus every except."""
    return difference((_network(block.cidr),), normalize(_network(e) for e in block.excepts))


def size(s: IPSet) -> int:
    return sum(hi - lo + 1 for lo, hi in s)


def only_points(s: IPSet, points: Sequence[int]) -> bool:
    """Whether every address of `s` is one of the sorted `points` (e.g. pod IPs)."""
    return all(bisect_right(points, hi) - bisect_left(points, lo) >= hi - lo + 1 for lo, hi in s)
