"""Claims on IP addresses over time, and which claim answers for an IP at time t.

The time half of the identity index (`netwatch.core.identity` maps Kubernetes objects to
claims and holds the rules' Kubernetes meaning). A *claim* is one holder's hold on one IP
over `[start, end)`: opened when the holder is first seen with the IP, closed when it
changes, loses the IP or goes away. A claim closed by deletion becomes a *tombstone* that
still answers for `grace` seconds after `end`. At time t:

1. a live claim (`start <= t < end`) beats a tombstone (`end <= t < end + grace`);
2. among live claims the greatest `Rank` wins;
3. among tombstones the most recently ended wins, then the greatest `Rank`.

Lookups are the hot path and memory-bound (each pointer followed is a likely cache
miss with tens of thousands of IPs), so an IP whose only claim is one open interval is
answered without looking at its segments (so are IPs whose open claims all carry the
same value object — a node and its hostNetwork pods): from `settled` (ip → value) when the claim
started before `settled_before` and the time asked is not earlier — one dict probe, the
agent's everyday case, as `expire` moves `settled_before` up to `now - grace` — else from
`fast` (ip → (start, value)), one probe and one comparison. `settled` is a subset of
`fast`, so older times lose nothing.
"""

from __future__ import annotations

import heapq
import math
from typing import Generic, TypeVar

V = TypeVar("V")
Rank = tuple[int, int, float, str]
"""Compared as a tuple; the greater live claim wins (see `netwatch.core.identity`)."""
_INF = math.inf


class Segment(Generic[V]):
    """One claim on one IP. `until` is `end`, plus the grace period for tombstones."""

    __slots__ = ("end", "rank", "start", "until", "value")

    def __init__(self, start: float, rank: Rank, value: V) -> None:
        self.start = start
        self.end = _INF
        self.until = _INF
        self.rank = rank
        self.value = value


class ClaimTimeline(Generic[V]):
    """Every claim on every IP, with history bounded by `expire`."""

    def __init__(self, *, grace: float) -> None:
        if not grace >= 0:
            raise ValueError(f"grace must be >= 0 seconds, got {grace!r}")
        self.grace = float(grace)
        self.settled_before = -_INF
        self.settled: dict[str, V] = {}
        """IPs whose only claim is one open interval started at or before `settled_before`:
        the answer for any time `>= settled_before`."""
        self.fast: dict[str, tuple[float, V]] = {}
        """Every IP whose claims are all open and carry one value → (earliest start, value)."""
        self._to_settle: list[tuple[float, str]] = []
        """(start, ip) of opened segments: a heap, so `expire` settles only what is due."""
        self._segments: dict[str, list[Segment[V]]] = {}
        self._open: dict[str, dict[str, Segment[V]]] = {}
        """Open segments per claim key, by IP."""
        self._expiry: list[tuple[float, str]] = []
        """(until, ip) of closed segments: a heap, so `expire` touches only what expires."""

    def resolve(self, ip: str, at: float) -> V | None:
        """Rules 1-3 over the IP's claims; None when nothing answers at `at`."""
        segments = self._segments.get(ip)
        if segments is None:
            return None
        best: V | None = None
        best_key: tuple[int, float, Rank] | None = None
        for s in segments:
            if s.start <= at < s.end:
                key = (1, 0.0, s.rank)
            elif s.end <= at < s.until:
                key = (0, s.end, s.rank)
            else:
                continue
            if best_key is None or key > best_key:
                best, best_key = s.value, key
        return best

    def holds(self, ip: str) -> bool:
        """Whether any claim (live, closed or tombstone) on `ip` is still kept."""
        return ip in self._segments

    def ips(self) -> list[str]:
        """Every IP with a claim (live, closed or tombstone) not yet expired."""
        return list(self._segments)

    def started(self, claim: str) -> float | None:
        """The `Rank` start time the claim's open segments carry, if it holds any IP."""
        held = self._open.get(claim)
        return next(iter(held.values())).rank[2] if held else None

    def set(self, claim: str, ips: list[str], value: V, rank: Rank, at: float) -> None:
        """From `at` on, `claim` holds exactly `ips` (canonical, no repeats) as `value`."""
        current = self._open.get(claim, {})
        held: dict[str, Segment[V]] = {}
        for ip, old in current.items():
            if ip not in ips:
                self._close(ip, old, at, tombstone=False)
        for ip in ips:
            segment = current.get(ip)
            if segment is not None:
                if segment.rank == rank and segment.value == value:
                    held[ip] = segment
                    continue
                self._close(ip, segment, at, tombstone=False)
            held[ip] = new = Segment(at, rank, value)
            self._segments.setdefault(ip, []).append(new)
            heapq.heappush(self._to_settle, (at, ip))
            self._refresh(ip)
        if held:
            self._open[claim] = held
        else:
            self._open.pop(claim, None)

    def release(self, claim: str, at: float, *, tombstone: bool) -> None:
        """`claim` holds nothing from `at` on; deletions leave tombstones."""
        for ip, segment in self._open.pop(claim, {}).items():
            self._close(ip, segment, at, tombstone=tombstone)

    def _close(self, ip: str, segment: Segment[V], at: float, *, tombstone: bool) -> None:
        segment.end = max(at, segment.start)
        if tombstone:
            segment.until = segment.end + self.grace
        elif segment.end == segment.start:  # it never answered for any time: forget it
            self._segments[ip] = [s for s in self._segments[ip] if s is not segment]
            self._refresh(ip)
            return
        else:
            segment.until = segment.end
        heapq.heappush(self._expiry, (segment.until, ip))
        self._refresh(ip)

    def _refresh(self, ip: str) -> None:
        """Keep the fast-path entries in step with the IP's segments."""
        segments = self._segments.get(ip)
        if not segments:
            self._segments.pop(ip, None)
        else:
            value = segments[0].value
            if all(s.end == _INF and s.value is value for s in segments):
                # Whichever claim wins, the answer is `value` from the earliest start on.
                start = min(s.start for s in segments)
                self.fast[ip] = (start, value)
                if start <= self.settled_before:
                    self.settled[ip] = value
                else:
                    self.settled.pop(ip, None)
                return
        self.fast.pop(ip, None)
        self.settled.pop(ip, None)

    def expire(self, now: float) -> int:
        """Drop segments that cannot answer any time `>= now - grace`; returns how many.

        Answers for times `>= now - grace` never change; a deleted holder costs memory
        until `end + 2 * grace` at most (its tombstone answers until `end + grace`).
        """
        horizon = now - self.grace
        if horizon > self.settled_before:
            self.settled_before = horizon
            while self._to_settle and self._to_settle[0][0] <= horizon:
                self._refresh(heapq.heappop(self._to_settle)[1])
        dropped = 0
        while self._expiry and self._expiry[0][0] <= horizon:
            _, ip = heapq.heappop(self._expiry)
            segments = self._segments.get(ip)
            if segments is None:
                continue
            kept = [s for s in segments if s.until > horizon]
            dropped += len(segments) - len(kept)
            self._segments[ip] = kept
            self._refresh(ip)
        return dropped

    def stats(self) -> dict[str, int]:
        return {
            "ips": len(self._segments),
            "segments": sum(len(s) for s in self._segments.values()),
            "open_segments": sum(len(s) for s in self._open.values()),
            "pending_expiry": len(self._expiry),
            "settled_ips": len(self.settled),
        }
