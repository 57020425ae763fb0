"""Observed traffic, aggregated: one `Observation` per distinct attribution, not per record.

Every attributed record with an equal `Resolution` (`netwatch.core.attribution` hands
the same object to all records between the same identities, addresses, port and
protocol; an attributor rebuilt over a new inventory hands out equal ones) is alike for
everything `suggest`, `whatif` and verification ask — who, to whom, which port, what
verdict — and differs only in counts and times. So records are folded as they stream
in: a million records between a few thousand pod pairs cost a few thousand
observations, in memory and in re-evaluations, however often the inventory changed.
`add_rows` is the hot loop over flow-file rows (`analysis.FlowRow`, as `analyze` reads
them); a sample's `Connection` is rebuilt from its row (both directions' bytes and
packets are summed there, as `_out`).

Also here: which observations a policy set is judged on (`evaluated`, `requires_allow`),
how reports name their endpoints (`labels_of`, as `attribution.peer_key` names peers),
and `FlowGroup`/`group_flows`, the per (client, server, port, protocol) groups of
reports. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from netwatch.core.analysis import FlowRow
from netwatch.core.attribution import Attributed, Attributor, Resolution, VerdictKind, peer_key
from netwatch.core.flow import Connection
from netwatch.core.model import POLICY_PROTOCOLS, Protocol


@dataclass(slots=True)
class Observation:
    """All records of one attribution: the earliest one as `sample`, and the tallies."""

    sample: Attributed
    count: int
    bytes: int
    first_seen: float
    last_seen: float

    @property
    def verdict(self) -> VerdictKind:
        return self.sample.verdict

    def add(self, a: Attributed) -> None:
        conn = a.connection
        self.count += 1
        self.bytes += conn.bytes_out + conn.bytes_in
        self.last_seen = max(self.last_seen, conn.last_seen)
        if conn.first_seen < self.first_seen:
            self.first_seen = conn.first_seen
            self.sample = a


_MEMO_SLACK = 4096
"""Resolutions the identity memo may hold beyond twice the observations (then cleared)."""


class Observations:
    """Attributed records folded per resolution *value*, in order of first appearance.

    Records are matched to their observation through the identity of their `Resolution`
    (a dict probe per record), and new resolutions by value (`_Value`): an agent rebuilds
    its `Attributor` at every inventory change, and the same traffic then resolves to new,
    equal `Resolution` objects — keyed by identity, each rebuild would add a copy of every
    observation. So `len(self)` is the number of distinct (client, client address, server,
    server address, port, protocol, Service, verdict and reasons) seen, however often the
    inventory changed; the identity memo holds at most `2 * len(self) + _MEMO_SLACK`
    resolutions. `retain` drops observations (an agent's bound, `agent.suggestions`).
    """

    def __init__(self, items: Iterable[Attributed] = ()) -> None:
        self._by_value: dict[_Value, Observation] = {}
        # `Resolution` hashes and compares by identity (`eq=False`): a pointer hash per
        # record, and the key keeps the resolution alive, so its identity is not reused.
        self._memo: dict[Resolution, Observation] = {}
        self.records = 0
        for a in items:
            self.add(a)

    def add(self, a: Attributed) -> None:
        self.records += 1
        res = a.resolution
        obs = self._memo.get(res) or self._find(res)
        if obs is not None:
            obs.add(a)
            return
        conn = a.connection
        self._insert(
            res, Observation(a, 1, conn.bytes_out + conn.bytes_in, conn.first_seen, conn.last_seen)
        )

    def add_rows(self, rows: Iterable[FlowRow], attributor: Attributor) -> None:
        """The hot loop over flow-file rows (`analysis.FlowRow`): resolve and fold each;
        a `Connection` is built only for a new observation's first (or earliest) row."""
        resolve, orient = attributor.resolve_fields, attributor.orient_row
        memo = self._memo
        count = 0
        for row in rows:
            if row[10]:
                row = orient(row)  # noqa: PLW2901 - the oriented row replaces the guess
            cip, sip, sport, proto, first, last, nbytes, _packets, svc, _cport, _ = row
            res = resolve(cip, sip, sport, proto, first, svc)
            count += 1
            obs = memo.get(res) or self._find(res)
            if obs is None:
                self._insert(res, Observation(_sample(row, res), 1, nbytes, first, last))
                continue
            obs.count += 1
            obs.bytes += nbytes
            if last > obs.last_seen:  # noqa: PLR1730 - a comparison is cheaper than max()
                obs.last_seen = last
            if first < obs.first_seen:
                obs.first_seen = first
                obs.sample = _sample(row, res)
        self.records += count

    def add_counted(self, row: FlowRow, attributor: Attributor, count: int) -> None:
        """One row standing for `count` records alike (a metric series: `promflows`)."""
        if count <= 0:
            return
        row = attributor.orient_row(row)
        cip, sip, sport, proto, first, last, nbytes, _packets, svc, _cport, _ = row
        res = attributor.resolve_fields(cip, sip, sport, proto, first, svc)
        self.records += count
        obs = self._memo.get(res) or self._find(res)
        if obs is None:
            self._insert(res, Observation(_sample(row, res), count, nbytes, first, last))
            return
        obs.count += count
        obs.bytes += nbytes
        obs.last_seen = max(obs.last_seen, last)
        if first < obs.first_seen:
            obs.first_seen = first
            obs.sample = _sample(row, res)

    def retain(self, keep: Callable[[Observation], bool]) -> int:
        """Drop the observations `keep` rejects; returns how many were dropped.

        A dropped observation's tallies (records, bytes, first and last seen) move to the
        earliest kept one of the same `group_key` — typically the replacement pods of a
        workload whose old pods were deleted — so the group's evidence does not restart;
        with none kept, they are forgotten. `records` still counts every record folded.
        """
        kept: dict[_Value, Observation] = {}
        dropped: list[Observation] = []
        for key, obs in self._by_value.items():
            if keep(obs):
                kept[key] = obs
            else:
                dropped.append(obs)
        if not dropped:
            return 0
        heirs: dict[tuple[str, str, int, Protocol, VerdictKind], Observation] = {}
        for obs in kept.values():
            heirs.setdefault(group_key(obs), obs)
        for obs in dropped:
            heir = heirs.get(group_key(obs))
            if heir is not None:
                heir.count += obs.count
                heir.bytes += obs.bytes
                heir.first_seen = min(heir.first_seen, obs.first_seen)
                heir.last_seen = max(heir.last_seen, obs.last_seen)
        self._by_value = kept
        self._memo = {}
        return len(dropped)

    def __iter__(self) -> Iterator[Observation]:
        return iter(self._by_value.values())

    def __len__(self) -> int:
        return len(self._by_value)

    @property
    def window(self) -> tuple[float, float] | None:
        """(earliest first_seen, latest last_seen) over every record, if any."""
        if not self._by_value:
            return None
        return (min(o.first_seen for o in self), max(o.last_seen for o in self))

    def _find(self, res: Resolution) -> Observation | None:
        """The observation of a resolution equal to `res`, remembered for `res` itself."""
        obs = self._by_value.get(_Value(res))
        if obs is not None:
            self._remember(res, obs)
        return obs

    def _insert(self, res: Resolution, obs: Observation) -> None:
        self._by_value[_Value(res)] = obs
        self._remember(res, obs)

    def _remember(self, res: Resolution, obs: Observation) -> None:
        memo = self._memo
        if len(memo) >= 2 * len(self._by_value) + _MEMO_SLACK:
            memo.clear()  # resolutions of rebuilt attributors: found again by value
        memo[res] = obs


class _Value:
    """A `Resolution` compared by value: every field not derived from the others
    (`peer_key`s and `service_key` follow from the identities). One slot, no tuple kept:
    a dict stores its keys' hashes, so `__hash__` runs only when a key is probed or added.
    """

    __slots__ = ("res",)

    def __init__(self, res: Resolution) -> None:
        self.res = res

    def _fields(self) -> tuple[object, ...]:
        r = self.res
        return (
            r.client,
            r.client_ip,
            r.server,
            r.server_ip,
            r.port,
            r.protocol,
            r.service,
            r.verdict,
            r.decision,
            r.client_known,
            r.server_known,
            r.note,
        )

    def __hash__(self) -> int:
        return hash(self._fields())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Value) and self._fields() == other._fields()


def group_key(obs: Observation) -> tuple[str, str, int, Protocol, VerdictKind]:
    """(client, server as `labels_of` names them, port, protocol, verdict)."""
    a = obs.sample
    client, server = labels_of(a)
    return (client, server, a.port, a.protocol, a.verdict)


def _sample(row: FlowRow, res: Resolution) -> Attributed:
    cip, sip, sport, proto, first, last, nbytes, packets, svc, cport, _guessed = row
    conn = Connection(
        client_ip=cip,
        client_port=cport,
        server_ip=sip,
        server_port=sport,
        protocol=proto,
        first_seen=first,
        last_seen=last,
        packets_out=packets,
        bytes_out=nbytes,
        service_ip=svc,
    )
    return Attributed.of(conn, res)


def evaluated(a: Attributed) -> bool:
    """Whether policy decides this connection at all (resolved endpoints, TCP/UDP/SCTP)."""
    return a.verdict is not VerdictKind.UNKNOWN and a.protocol in POLICY_PROTOCOLS


def requires_allow(a: Attributed, *, include_denied: bool) -> bool:
    """Whether a policy set must allow this observed connection to be acceptable."""
    if not evaluated(a):
        return False
    return include_denied or a.verdict is not VerdictKind.DENIED


def labels_of(a: Attributed) -> tuple[str, str]:
    """(client, server) as reports name them: `namespace/workload`, `node:N`, `world`, …"""
    res = a.resolution
    return (
        peer_key(a.client, known=res.client_known, ip=res.client_ip),
        peer_key(a.server, known=res.server_known, ip=res.server_ip),
    )


@dataclass
class FlowGroup:
    """Connections of one (client, server, port, protocol), with the earliest as example."""

    client: str
    server: str
    port: int
    protocol: Protocol
    example: Connection
    count: int = 0
    bytes: int = 0
    first_seen: float = float("inf")
    last_seen: float = float("-inf")
    verdicts: dict[str, int] = field(default_factory=dict)
    """Verdicts under the policies in force when the connections were seen."""

    def add(self, obs: Observation) -> None:
        self.count += obs.count
        self.bytes += obs.bytes
        self.first_seen = min(self.first_seen, obs.first_seen)
        self.last_seen = max(self.last_seen, obs.last_seen)
        verdict = obs.verdict.value
        self.verdicts[verdict] = self.verdicts.get(verdict, 0) + obs.count
        if obs.sample.connection.first_seen < self.example.first_seen:
            self.example = obs.sample.connection

    @property
    def sort_key(self) -> tuple[str, str, str, int]:
        return (self.client, self.server, self.protocol.value, self.port)


def group_flows(items: Iterable[Observation]) -> list[FlowGroup]:
    """Group per (client, server, port, protocol), sorted."""
    groups: dict[tuple[str, str, int, Protocol], FlowGroup] = {}
    for obs in items:
        a = obs.sample
        client, server = labels_of(a)
        key = (client, server, a.port, a.protocol)
        group = groups.get(key)
        if group is None:
            group = groups[key] = FlowGroup(client, server, a.port, a.protocol, a.connection)
        group.add(obs)
    return sorted(groups.values(), key=lambda g: g.sort_key)
