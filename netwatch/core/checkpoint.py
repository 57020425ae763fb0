"""The agent's checkpoint as bytes: what survives a restart (`kill -9` included).

A checkpoint pairs the `TelemetryAccumulator`'s state with the capture journal
`position` it includes — the last journal segment whose records are already counted.
On restart the agent restores the counters and the capture replays only the segments
after `position`: nothing drained from the kernel is lost, nothing is counted twice
(the protocol: `netwatch.agent.state`; the journal: `netwatch.capture.journal`).

The format is JSON (`FORMAT` 1), one object:

    {"format": 1, "node": "node-1", "position": 41, "written_at": 1795...,
     "telemetry": {"flows": [[[7 label values], flows, bytes, packets, last_seen], ...],
                   "ports": [[[ns, workload], [port labels]], ...],
                   "gone": [[[ns, workload], since], ...], "unprotected": [[ns, workload]],
                   "conversations": [[id, last_seen], ...],
                   "hits": [[[policy, direction, rule], count, first, last], ...],
                   "gone_rules": [[[policy, direction, rule], since], ...]}}

Pure: bytes in, values out; `CheckpointError` names what is wrong and where.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from netwatch.core.engine import RuleRef
from netwatch.core.model import Direction
from netwatch.core.policy import PolicyKey
from netwatch.core.telemetry import AccumulatorState, FlowCounts, FlowKey, Peer
from netwatch.core.traffic import RuleHit

FORMAT = 1

T = TypeVar("T")


class CheckpointError(ValueError):
    """The checkpoint cannot be read (corrupt, truncated, another format)."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    node: str
    position: int
    """The last capture-journal segment counted in `telemetry` (0: none)."""
    written_at: float
    telemetry: AccumulatorState


def encode(checkpoint: Checkpoint) -> bytes:
    t = checkpoint.telemetry
    doc = {
        "format": FORMAT,
        "node": checkpoint.node,
        "position": checkpoint.position,
        "written_at": checkpoint.written_at,
        "telemetry": {
            "flows": [[list(k), c.flows, c.bytes, c.packets, c.last_seen] for k, c in t.flows],
            "ports": [[list(peer), list(labels)] for peer, labels in t.ports],
            "gone": [[list(peer), since] for peer, since in t.gone],
            "unprotected": [list(peer) for peer in t.unprotected],
            "conversations": [[cid, last] for cid, last in t.conversations],
            "hits": [[_ref(ref), h.count, h.first, h.last] for ref, h in t.hits],
            "gone_rules": [[_ref(ref), since] for ref, since in t.gone_rules],
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(data: bytes) -> Checkpoint:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CheckpointError("not a JSON object")
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"format {doc.get('format')!r}, this netwatch reads {FORMAT}")
    try:
        t = doc["telemetry"]
        state = AccumulatorState(
            flows=_rows(t, "flows", _flow),
            ports=_rows(t, "ports", lambda r: (_peer(r[0]), tuple(str(p) for p in r[1]))),
            gone=_rows(t, "gone", lambda r: (_peer(r[0]), float(r[1]))),
            unprotected=_rows(t, "unprotected", _peer),
            conversations=_rows(t, "conversations", lambda r: (_int(r[0]), float(r[1]))),
            hits=_rows(
                t, "hits", lambda r: (_rule(r[0]), RuleHit(_int(r[1]), float(r[2]), float(r[3])))
            ),
            gone_rules=_rows(t, "gone_rules", lambda r: (_rule(r[0]), float(r[1]))),
        )
        position = _int(doc["position"])
        if position < 0:
            raise CheckpointError("position: negative")
        return Checkpoint(
            node=str(doc["node"]),
            position=position,
            written_at=float(doc["written_at"]),
            telemetry=state,
        )
    except KeyError as exc:
        raise CheckpointError(f"missing key {exc}") from None
    except (TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"malformed value ({exc})") from None


def _rows(t: dict[str, Any], name: str, parse: Callable[[Any], T]) -> tuple[T, ...]:
    rows = t[name]
    if not isinstance(rows, list):
        raise CheckpointError(f"telemetry.{name}: not a list")
    out: list[T] = []
    for i, row in enumerate(rows):
        try:
            out.append(parse(row))
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise CheckpointError(f"telemetry.{name}[{i}]: malformed ({exc})") from None
    return tuple(out)


def _flow(row: list[Any]) -> tuple[FlowKey, FlowCounts]:
    labels = [str(v) for v in row[0]]
    if len(labels) != len(FlowKey._fields):
        raise ValueError(f"{len(labels)} labels, expected {len(FlowKey._fields)}")
    counts = FlowCounts(_int(row[1]), _int(row[2]), _int(row[3]), float(row[4]))
    return FlowKey(*labels), counts


def _peer(value: list[Any]) -> Peer:
    namespace, workload = value
    return (str(namespace), str(workload))


def _ref(ref: RuleRef) -> list[Any]:
    return [str(ref.policy), ref.direction.value, ref.rule]


def _rule(value: list[Any]) -> RuleRef:
    policy, direction, rule = value
    return RuleRef(PolicyKey(str(policy)), Direction(direction), _int(rule))


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    return value
