"""What-if: which observed connections a proposed NetworkPolicy set would deny.

The proposal is judged next to the existing policies (a policy of the same
namespace/name replaces the existing one, as applying it would, §3.8) or, with
`replace`, instead of all of them. Each observed connection is attributed again against
the resulting cluster by a fresh engine (`verify.check_policies`).

**Which connections are judged.** Those whose endpoints resolve and whose protocol
policy evaluates (`unknown` and ICMP records are counted, not judged). Connections that
today's policies already deny are an enforcement gap, not something the proposal
breaks: by default they are left out of the verdict and only counted (`already_denied`,
and how many of them the proposal still denies); `include_denied` judges them like the
rest — the same switch as `netwatch suggest --include-denied`, so a set suggested with
or without it passes a what-if run with the same setting.

Denials are grouped per (client workload, server workload, port, protocol) with a count
and the earliest record as an example. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from netwatch.core.attribution import Attributor, VerdictKind
from netwatch.core.observed import FlowGroup, Observation, Observations, evaluated, group_flows
from netwatch.core.policy import NetworkPolicy
from netwatch.core.verify import check_policies


@dataclass(frozen=True)
class WhatIf:
    denied: tuple[FlowGroup, ...]
    """Judged connections the proposal denies, per workload pair, port and protocol."""
    denied_connections: int
    checked: int
    """Connections judged."""
    not_evaluated: int
    """`unknown` or ICMP records: nothing to judge."""
    already_denied: int
    """Denied by today's policies and left out of the verdict (without `include_denied`)."""
    still_denied: int
    """Of `already_denied`: how many the proposal denies too."""

    @property
    def ok(self) -> bool:
        return not self.denied


def whatif(
    observed: Observations,
    *,
    attributor: Attributor,
    policies: Sequence[NetworkPolicy],
    replace: bool,
    include_denied: bool = False,
    pod_cidrs: Iterable[str] = (),
) -> WhatIf:
    """Judge `observed` (attributed by `attributor`, today's policies) against a proposal."""
    result = check_policies(
        observed,
        attributor=attributor,
        policies=policies,
        replace=replace,
        include_denied=True,
        pod_cidrs=pod_cidrs,
    )
    judged: list[Observation] = []
    already = still = 0
    for d in result.denials:
        if d.observed.verdict is VerdictKind.DENIED and not include_denied:
            still += d.observed.count
        else:
            judged.append(d.observed)  # grouped with the verdicts of today
    for obs in observed:
        if evaluated(obs.sample) and obs.verdict is VerdictKind.DENIED and not include_denied:
            already += obs.count
    not_evaluated = sum(o.count for o in observed if not evaluated(o.sample))
    return WhatIf(
        denied=tuple(group_flows(judged)),
        denied_connections=sum(o.count for o in judged),
        checked=result.checked - (0 if include_denied else already),
        not_evaluated=not_evaluated,
        already_denied=already,
        still_denied=still,
    )
