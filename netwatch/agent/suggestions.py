"""This node's suggested NetworkPolicies, as `/api/suggestions` serves them (DESIGN §7).

The agent folds every attributed record into `Observations` (one entry per distinct
resolution *value*: who, to whom, which addresses, port, protocol and verdict — so
memory follows the number of distinct peer pairs, not of records, nor of inventory
rebuilds) and, every `interval` seconds, asks `core.suggest` for a least-privilege set,
verifies it with `core.verify.check_policies` (every observed connection must stay
allowed) and renders it as multi-document YAML. A set that fails verification is not
published: the previous YAML stays, and the failure is logged. Cluster-wide suggestions
come from Prometheus (`suggest --prometheus`); this is one node's view.

**Memory bound.** Observations are kept for the pods the inventory holds: at each
render, an observation with a pod endpoint (client or server) that has been absent from
the inventory for `grace` seconds is dropped — its evidence moves to a surviving
observation of the same workloads, port, protocol and verdict (`Observations.retain`),
so a rolling update does not restart a rule's evidence. The entries are thus at most
the distinct (client, server, addresses, port, protocol, verdict) among the live pods,
the pods deleted in the last `grace + interval` seconds, nodes and external addresses,
and never more than `max_observations`: beyond that, the least recently seen half is
dropped (logged), so a node facing a scan of many external addresses cannot grow
without limit. An entry costs about 0.8 KiB with its sample connection and resolution
(measured with distinct external addresses): about 75 MiB at the default bound.
An observation outlives its pod by at most `grace + 2 * interval` (plus a drain: the
absence is noticed at a render), which must stay below twice the identity index's grace
(`IdentityIndex.grace`, 120 s): verification re-attributes each observation's sample at
its own time, and the index forgets a deleted pod's history `2 * grace` after the
deletion. The defaults give 180 s of 240.
"""

from __future__ import annotations

import io
import logging

from netwatch.core.attribution import Attributed, Attributor
from netwatch.core.cluster import Cluster
from netwatch.core.identity import Identity, IdentityKind
from netwatch.core.observed import Observation, Observations
from netwatch.core.suggest import SuggestMode, SuggestOptions, suggest
from netwatch.core.verify import check_policies
from netwatch.render.policy_yaml import dump_manifests
from netwatch.render.suggest import manifest

log = logging.getLogger("netwatch.agent")

DEFAULT_INTERVAL = 60.0
DEFAULT_MAX_OBSERVATIONS = 100_000
DEFAULT_GRACE = 60.0
"""Seconds an observation outlives its deleted pod (late records, replacement pods)."""


class Suggester:
    def __init__(
        self,
        *,
        interval: float = DEFAULT_INTERVAL,
        max_observations: int = DEFAULT_MAX_OBSERVATIONS,
        grace: float = DEFAULT_GRACE,
        pod_cidrs: tuple[str, ...] = (),
    ) -> None:
        if max_observations < 2:
            raise ValueError("max_observations must be at least 2")
        self.interval = interval
        self.max_observations = max_observations
        self.grace = grace
        self._pod_cidrs = pod_cidrs
        self._observed = Observations()
        self._gone: dict[str, float] = {}
        """Pod UID of an observation's endpoint → when a render first found it deleted."""
        self._next: float | None = None
        self._dirty = False
        self.yaml = ""

    @property
    def observations(self) -> int:
        """Observations held (see the module doc for their bound)."""
        return len(self._observed)

    def add(self, item: Attributed) -> None:
        if len(self._observed) >= self.max_observations:
            self._shed()
        self._observed.add(item)
        self._dirty = True

    def due(self, now: float) -> bool:
        return self._dirty and (self._next is None or now >= self._next)

    def render(self, attributor: Attributor, *, now: float) -> str:
        """Expire, suggest, verify, render; returns the YAML now published (maybe the previous)."""
        self._next = now + self.interval
        self._dirty = False
        self.expire(attributor.cluster, now=now)
        try:
            result = suggest(
                self._observed,
                engine=attributor.engine,
                options=SuggestOptions(mode=SuggestMode.REPLACE),
            )
            verification = check_policies(
                self._observed,
                attributor=attributor,
                policies=[p.policy for p in result.policies],
                replace=True,
                include_denied=False,
                pod_cidrs=self._pod_cidrs,
            )
        except Exception:  # a suggestion bug must not stop the capture loop
            log.exception("suggesting policies failed")
            return self.yaml
        if not verification.ok:
            log.warning(
                "suggested policies failed verification; keeping the previous ones",
                extra={"denials": len(verification.denials)},
            )
            return self.yaml
        out = io.StringIO()
        dump_manifests([manifest(p) for p in result.policies], out)
        self.yaml = out.getvalue()
        return self.yaml

    def expire(self, cluster: Cluster, *, now: float) -> int:
        """Drop observations of pods absent from `cluster` for `grace` seconds (module doc);
        returns how many were dropped."""
        live = {p.uid for p in cluster.pods}
        absent = {uid for obs in self._observed for uid in _pod_uids(obs) if uid not in live}
        gone = self._gone = {uid: self._gone.get(uid, now) for uid in absent}
        dead = {uid for uid, since in gone.items() if now - since >= self.grace}
        if not dead:
            return 0
        for uid in dead:
            del gone[uid]
        return self._observed.retain(lambda obs: not any(u in dead for u in _pod_uids(obs)))

    def _shed(self) -> None:
        """At the bound: keep the most recently seen half."""
        held = len(self._observed)
        recent = sorted(self._observed, key=lambda obs: obs.last_seen, reverse=True)
        keep = {id(obs) for obs in recent[: self.max_observations // 2]}
        dropped = self._observed.retain(lambda obs: id(obs) in keep)
        log.warning(
            "suggestion observations reached their bound; dropped the least recently seen",
            extra={"observations": held, "dropped": dropped},
        )


def _pod_uids(obs: Observation) -> tuple[str, ...]:
    a = obs.sample
    return tuple(uid for who in (a.client, a.server) if (uid := _pod_uid(who)) is not None)


def _pod_uid(who: Identity) -> str | None:
    return who.uid if who.kind is IdentityKind.POD else None
