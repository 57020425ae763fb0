"""This node's suggested NetworkPolicies, as `/api/suggestions` serves them (DESIGN §7).

The agent folds every attributed record into `Observations` (one entry per distinct
attribution, so memory follows the number of distinct peer pairs, not of records) and,
every `interval` seconds, asks `core.suggest` for a least-privilege set, verifies it with
`core.verify.check_policies` (every observed connection must stay allowed) and renders
it as multi-document YAML. A set that fails verification is not published: the previous
YAML stays, and the failure is logged. Observations are bounded by `max_observations`;
beyond that they start over (logged), so a node facing a scan of many external
addresses cannot grow without limit. Cluster-wide suggestions come from Prometheus
(`suggest --prometheus`); this is one node's view.
"""

from __future__ import annotations

import io
import logging

from netwatch.core.attribution import Attributed, Attributor
from netwatch.core.observed import Observations
from netwatch.core.suggest import SuggestMode, SuggestOptions, suggest
from netwatch.core.verify import check_policies
from netwatch.render.policy_yaml import dump_manifests
from netwatch.render.suggest import manifest

log = logging.getLogger("netwatch.agent")

DEFAULT_INTERVAL = 60.0
DEFAULT_MAX_OBSERVATIONS = 100_000


class Suggester:
    def __init__(
        self,
        *,
        interval: float = DEFAULT_INTERVAL,
        max_observations: int = DEFAULT_MAX_OBSERVATIONS,
        pod_cidrs: tuple[str, ...] = (),
    ) -> None:
        self.interval = interval
        self.max_observations = max_observations
        self._pod_cidrs = pod_cidrs
        self._observed = Observations()
        self._next: float | None = None
        self._dirty = False
        self.yaml = ""

    def add(self, item: Attributed) -> None:
        if len(self._observed) >= self.max_observations:
            log.warning(
                "suggestion observations reached their bound; starting over",
                extra={"observations": len(self._observed)},
            )
            self._observed = Observations()
        self._observed.add(item)
        self._dirty = True

    def due(self, now: float) -> bool:
        return self._dirty and (self._next is None or now >= self._next)

    def render(self, attributor: Attributor, *, now: float) -> str:
        """Suggest, verify, render; returns the YAML now published (maybe the previous)."""
        self._next = now + self.interval
        self._dirty = False
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
