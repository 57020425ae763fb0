"""Observed traffic against policy: verdict counts, connection groups, findings, rule hits.

`TrafficAnalysis` accumulates attributed records (DESIGN §6) and `result()` turns them
into what `netwatch analyze` prints:

- `verdicts`: connection *records* per verdict;
- `groups`: records grouped by (client workload, server workload, Service, port,
  protocol, verdict) with counts, bytes and the merged policy reasons of each side;
- findings: `unexpected-flow` (denied yet observed), `unprotected-workload` (receives
  policy-evaluated traffic while no policy isolates it for ingress), `unused-rule` (no
  observed connection matched it), `overly-broad-rule` (admits far more than was used,
  see `too_wide`), plus the static lint findings of `netwatch.core.lint`.

**Rule hits.** A rule is *hit* by a record when it appears in `allowed_by` of either side
of the record's evaluation — whatever the other side decided: the rule matched the
connection. `RuleHits` keeps count, first and last hit per rule; it is a plain
accumulator so the agent can feed it per drained connection and export it as
`netwatch_policy_rule_hits_total` / `..._last_hit_timestamp_seconds`. `unused-rule`
is "zero hits in the window" for every rule of a direction its policy isolates.

The hot loop (`add_rows`) resolves each record through the attributor's cache and adds
it to a tally per shared `Resolution` object (hashed by identity); grouping, rule hits and
findings are computed once per distinct resolution at the end, not per record.

Neighbours: `traffic` (tallies, groups, `RuleHits`) and `flowfindings` (the traffic
findings and the over-breadth threshold) do the work; names used by other modules are
re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from netwatch.core.attribution import VERDICT_ORDER, Attributor, Resolution, VerdictKind
from netwatch.core.flow import FlowRow
from netwatch.core.flowfindings import (
    ALL_PORTS,
    BROAD_MIN_EXCESS,
    BROAD_RATIO,
    Breadth,
    FlowFinding,
    FlowFindingKind,
    rule_findings,
    too_wide,
    unexpected_flows,
    unprotected_workloads,
)
from netwatch.core.lint import Finding, lint
from netwatch.core.model import LoadProblem
from netwatch.core.traffic import (
    ConnectionGroup,
    EndpointView,
    RuleHit,
    RuleHits,
    Tally,
    group_tallies,
)

__all__ = [
    "ALL_PORTS",
    "BROAD_MIN_EXCESS",
    "BROAD_RATIO",
    "AnalysisResult",
    "AnyFinding",
    "Breadth",
    "ConnectionGroup",
    "EndpointView",
    "FlowFinding",
    "FlowFindingKind",
    "FlowRow",
    "RuleHit",
    "RuleHits",
    "TrafficAnalysis",
    "too_wide",
]

AnyFinding = FlowFinding | Finding


@dataclass(frozen=True)
class AnalysisResult:
    verdicts: dict[VerdictKind, int]
    """Connection records per verdict, every verdict present, in `VERDICT_ORDER`."""
    groups: list[ConnectionGroup]
    """Sorted by client, server, protocol, port, verdict, Service."""
    findings: list[AnyFinding]
    """Observed-traffic findings first (by kind, then subject), then the lint findings."""
    rule_hits: RuleHits
    records: int
    resolutions: int = 0
    """Distinct (client, server, port, protocol) resolutions the records fell into."""
    evaluations: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class TrafficAnalysis:
    """Accumulates records; `result()` may be called at any time (see the module doc)."""

    def __init__(self, attributor: Attributor) -> None:
        self.attributor = attributor
        self._tallies: dict[Resolution, Tally] = {}
        self.records = 0

    def add(
        self,
        res: Resolution,
        *,
        count: int = 1,
        nbytes: int = 0,
        packets: int = 0,
        first_seen: float,
        last_seen: float,
    ) -> None:
        """Add `count` records that resolved to `res`."""
        t = self._tallies.get(res)
        if t is None:
            t = self._tallies[res] = Tally(res)
        t.count += count
        t.bytes += nbytes
        t.packets += packets
        t.first = min(t.first, first_seen)
        t.last = max(t.last, last_seen)
        self.records += count

    def add_rows(self, rows: Iterable[FlowRow]) -> int:
        """The hot loop: resolve and tally every row; returns how many were added."""
        resolve, orient = self.attributor.resolve_fields, self.attributor.orient_row
        tallies = self._tallies
        added = 0
        for row in rows:
            if row[10]:
                row = orient(row)  # noqa: PLW2901 - the oriented row replaces the guess
            cip, sip, sport, proto, first, last, nbytes, npackets, svc, _cport, _ = row
            res = resolve(cip, sip, sport, proto, first, svc)
            t = tallies.get(res)
            if t is None:
                t = tallies[res] = Tally(res)
            t.count += 1
            t.bytes += nbytes
            t.packets += npackets
            if first < t.first:  # noqa: PLR1730 - a comparison is cheaper than min() here
                t.first = first
            if last > t.last:  # noqa: PLR1730
                t.last = last
            added += 1
        self.records += added
        return added

    # ------------------------------------------------------------------ results

    def result(
        self, *, problems: Sequence[LoadProblem] = (), static: bool = True
    ) -> AnalysisResult:
        """Everything `analyze` prints; `static` adds the lint findings."""
        tallies = list(self._tallies.values())  # every use below is order-independent
        verdicts = dict.fromkeys(VERDICT_ORDER, 0)
        hits = RuleHits()
        for t in tallies:
            verdicts[t.res.verdict] += t.count
            if t.res.decision is not None:
                hits.add(t.res.decision, count=t.count, first_seen=t.first, last_seen=t.last)
        groups = group_tallies(tallies)
        findings: list[AnyFinding] = []
        findings += unexpected_flows(groups)
        findings += unprotected_workloads(tallies)
        findings += rule_findings(self.attributor.engine, tallies, hits)
        findings.sort(key=lambda f: f.sort_key() if isinstance(f, FlowFinding) else ())
        if static:
            findings += lint(self.attributor.engine, problems=problems)
        return AnalysisResult(
            verdicts=verdicts,
            groups=groups,
            findings=findings,
            rule_hits=hits,
            records=self.records,
            resolutions=len(tallies),
            evaluations=self.attributor.evaluations,
        )
