"""Declared ports settle what the port-number heuristic guessed wrong.

Capture orients most records for certain (a SYN, a listening socket: `Orientation.SYN`,
`SOCKET`); the rest — UDP between sockets already closed, pre-existing connections whose
ends are both off this node — fall back to port numbers (`heuristic`: the lower,
well-known port is the server). That guess fails when a client's ephemeral port is the
lower one (a wide `ip_local_port_range`, a UDP peer on a high port such as 40000).

The inventory knows better: a pod's declared `containerPorts` and a Service's ports are
where something listens. `reorient` swaps a heuristic record's ends when the client end
declares its port and the server end does not declare its own; nothing else is changed
(the orientation stays `heuristic`: it is still an inference, now an informed one).
"""

from __future__ import annotations

from netwatch.core.cluster import Cluster
from netwatch.core.flow import Connection, Orientation
from netwatch.core.identity import Identity, IdentityKind
from netwatch.core.model import Protocol

_Listening = frozenset[tuple[int, Protocol]]


class DeclaredPorts:
    """Which (port, protocol) each pod (by uid) and Service (by key) declares."""

    def __init__(self, cluster: Cluster) -> None:
        self._pods: dict[str, _Listening] = {
            p.uid: frozenset((c.port, c.protocol) for c in p.container_ports)
            for p in cluster.pods
            if p.container_ports
        }
        self._services: dict[str, _Listening] = {
            s.key: frozenset((sp.port, sp.protocol) for sp in s.ports)
            for s in cluster.services
            if s.ports
        }

    def serves(self, who: Identity, port: int, protocol: Protocol) -> bool:
        if who.kind is IdentityKind.POD:
            declared = self._pods.get(who.uid or "")
        elif who.kind is IdentityKind.SERVICE:
            declared = self._services.get(who.key)
        else:
            return False
        return declared is not None and (port, protocol) in declared


def should_swap(  # noqa: PLR0917 - the row loops call it with a row's fields
    declared: DeclaredPorts,
    client: Identity,
    client_port: int,
    server: Identity,
    server_port: int,
    protocol: Protocol,
) -> bool:
    """Whether a guessed orientation is backwards: only the client end declares its port."""
    return declared.serves(client, client_port, protocol) and not declared.serves(
        server, server_port, protocol
    )


def reorient(
    conn: Connection, *, client: Identity, server: Identity, declared: DeclaredPorts
) -> Connection:
    """`conn`, or its reversal when only the client end declares its port (module doc)."""
    if conn.orientation is not Orientation.HEURISTIC or conn.service_ip is not None:
        return conn
    if should_swap(declared, client, conn.client_port, server, conn.server_port, conn.protocol):
        return conn.reversed()
    return conn
