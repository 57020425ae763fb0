"""Property: the identity index answers like a brute-force reading of the event history.

Random sequences of pod events (add/modify with random IPs from a small pool, phases,
hostNetwork, labels and creation times; deletes; full relists; `expire` calls) are fed
to an `InventoryStore`. Afterwards, `lookup(ip, t)` must equal `reference`, a direct
transcription of the rules in `netwatch.core.identity` over the recorded history: each
pod's state at t is its last event at or before t; a pod deleted at d answers as a
tombstone for [d, d + grace) with its last state; live beats tombstone, then tier,
Running, most recently started, UID; among tombstones the latest deletion wins. Answers
are checked only for times the last `expire(now)` promises to keep (t >= now - grace).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netwatch.core.identity import IdentityIndex
from netwatch.core.inventory import EventType, InventoryEvent, ObjectKind
from netwatch.core.model import (
    Labels,
    NamespaceName,
    NodeName,
    Pod,
    PodName,
    PodPhase,
    Uid,
)
from netwatch.core.store import InventoryStore

GRACE = 4.0
IPS = ("10.0.0.1", "10.0.0.2", "fd00::3")
_POD_IPS = st.sampled_from(IPS[:1] * 3 + IPS[1:])
"""Mostly one IP: reuse and concurrent claims are what the rules are about."""
UIDS = tuple(f"u{i}" for i in range(6))

Answer = tuple[str, str, dict[str, str]]
"""(kind, key, labels) of an identity."""
Record = tuple[float, Pod | None]
"""(time, state) of one pod; None is its deletion."""


@st.composite
def pods(draw: st.DrawFn, uid: str | None = None) -> Pod:
    uid = uid or draw(st.sampled_from(UIDS))
    return Pod(
        namespace=NamespaceName("ns"),
        name=PodName(f"p-{uid}"),
        uid=Uid(uid),
        labels=Labels({"v": draw(st.sampled_from("ab"))}),
        node_name=draw(st.sampled_from([NodeName("n1"), NodeName("n2"), None])),
        host_network=draw(st.integers(0, 4)) == 0,
        ips=tuple(draw(st.lists(_POD_IPS, max_size=2, unique=True))),
        phase=draw(st.sampled_from(list(PodPhase))),
        created_at=draw(st.none() | st.integers(0, 20).map(float)),
    )


@st.composite
def steps(draw: st.DrawFn) -> tuple[float, str, list[Pod], str]:
    dt = float(draw(st.sampled_from([0, 0, 1, 2, 5])))
    op = draw(st.sampled_from(["upsert"] * 3 + ["delete"] * 2 + ["relist", "expire"]))
    chosen: list[Pod] = []
    if op == "relist":
        uids = draw(st.lists(st.sampled_from(UIDS), max_size=4, unique=True))
        chosen = [draw(pods(uid)) for uid in uids]
    elif op == "upsert":
        chosen = [draw(pods())]
    return dt, op, chosen, draw(st.sampled_from(UIDS))


def rank(pod: Pod, first_seen: float) -> tuple[int, int, float, str]:
    started = pod.created_at if pod.created_at is not None else first_seen
    tier = 2 if pod.host_network else 0
    return (tier, int(pod.phase is PodPhase.RUNNING), started, f"pod/{pod.uid}")


def claims(pod: Pod | None, ip: str) -> bool:
    if pod is None or pod.phase.terminal or ip not in pod.ips:
        return False
    return not (pod.host_network and pod.node_name is None)


def answer(pod: Pod) -> Answer:
    if pod.host_network:
        assert pod.node_name is not None
        return ("node", pod.node_name, {})
    return ("pod", pod.key, dict(pod.labels))


def reference(history: dict[str, list[Record]], ip: str, t: float) -> Answer:
    live: list[tuple[tuple[int, int, float, str], Pod]] = []
    tombs: list[tuple[tuple[float, tuple[int, int, float, str]], Pod]] = []
    for records in history.values():
        first_seen = records[0][0]
        upto = [i for i, (when, _) in enumerate(records) if when <= t]
        if not upto:
            continue
        last = upto[-1]
        when, state = records[last]
        if state is not None:
            if claims(state, ip):
                live.append((rank(state, first_seen), state))
        elif last > 0 and t < when + GRACE:
            before = records[last - 1][1]
            if before is not None and claims(before, ip):
                tombs.append(((when, rank(before, first_seen)), before))
    if live:
        return answer(max(live, key=lambda c: c[0])[1])
    if tombs:
        return answer(max(tombs, key=lambda c: c[0])[1])
    return ("external", "world", {})


def observed(index: IdentityIndex, ip: str, t: float) -> Answer:
    found = index.lookup(ip, t)
    return (found.kind.value, found.key, dict(found.labels))


def run(
    script: Sequence[tuple[float, str, list[Pod], str]],
) -> tuple[InventoryStore, dict[str, list[Record]], float, float]:
    """Feed the script to a store; return it, the history, the last time and the horizon."""
    store = InventoryStore(index=IdentityIndex(grace=GRACE))
    history: dict[str, list[Record]] = defaultdict(list)
    present: dict[str, Pod] = {}
    gone: set[str] = set()  # UIDs are never reused once deleted
    t, horizon = 0.0, float("-inf")
    for dt, op, chosen, target in script:
        t += dt
        fresh = [p for p in chosen if p.uid not in gone]
        if op == "upsert" and fresh:
            (p,) = fresh
            kind = EventType.MODIFIED if p.uid in present else EventType.ADDED
            store.apply(InventoryEvent(kind, ObjectKind.POD, p, t))
            present[p.uid] = p
            history[p.uid].append((t, p))
        elif op == "delete" and target in present:
            obj = present.pop(target)
            store.apply(InventoryEvent(EventType.DELETED, ObjectKind.POD, obj, t))
            gone.add(target)
            history[target].append((t, None))
        elif op == "relist":
            store.replace(ObjectKind.POD, fresh, at=t)
            for uid in [u for u in present if u not in {p.uid for p in fresh}]:
                del present[uid]
                gone.add(uid)
                history[uid].append((t, None))
            for p in fresh:
                present[p.uid] = p
                history[p.uid].append((t, p))
        elif op == "expire":
            store.expire(t)
            horizon = max(horizon, t - GRACE)
    return store, history, t, horizon


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(script=st.lists(steps(), min_size=1, max_size=25), data=st.data())
def test_lookup_equals_a_brute_force_reading_of_the_event_history(
    script: list[tuple[float, str, list[Pod], str]], data: st.DataObject
) -> None:
    store, history, end, horizon = run(script)
    index = store.index
    late = data.draw(st.none() | st.integers(0, int(4 * (end + 2 * GRACE))).map(lambda x: x / 4))
    if late is not None:  # a last expire, anywhere: later answers must not change
        index.expire(late)
        horizon = max(horizon, late - GRACE)
    times = sorted({x / 2 for x in range(-2, int(2 * (end + GRACE + 2)))} | {end + 100.0})
    for ip in IPS:
        for t in times:
            if t >= horizon:
                assert observed(index, ip, t) == reference(history, ip, t), (ip, t)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(steps(), min_size=1, max_size=25))
def test_expire_keeps_answers_from_now_minus_grace_and_drops_everything_older(
    script: list[tuple[float, str, list[Pod], str]],
) -> None:
    store, history, end, _ = run(script)
    now = end + 3 * GRACE
    store.expire(now)
    stats = store.index.stats()
    assert stats["segments"] == stats["open_segments"]  # closed history is all gone
    for ip in IPS:
        for t in (now - GRACE, now, now + 1):
            assert observed(store.index, ip, t) == reference(history, ip, t)


def test_reference_agrees_on_the_documented_reuse_example() -> None:
    """A guard on the reference itself: the IP-reuse story from the unit tests."""
    a = Pod(NamespaceName("ns"), PodName("a"), Uid("a"), ips=("10.0.0.1",))
    b = dataclasses.replace(a, name=PodName("b"), uid=Uid("b"))
    history: dict[str, list[Record]] = {"a": [(0.0, a), (10.0, None)], "b": [(12.0, b)]}
    assert reference(history, "10.0.0.1", 9)[1] == "ns/a"
    assert reference(history, "10.0.0.1", 11)[1] == "ns/a"
    assert reference(history, "10.0.0.1", 12)[1] == "ns/b"
    assert reference({"a": history["a"]}, "10.0.0.1", 14)[0] == "external"
